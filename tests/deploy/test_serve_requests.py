"""``exitlab serve`` refuses every bad request body with a 4xx JSON answer naming the problem, and goes on serving;
images are checked before their pixels are decoded and 16-bit images are rescaled."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch

from exitlab.deploy.export import OnnxModel

pytest.importorskip("fastapi")  # the CI installs the [serve] extra; this only guards bare installs
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
Image = pytest.importorskip("PIL.Image")

from tests.deploy.serving import (  # noqa: E402
    JSON,
    OCTET,
    PNG,
    SHAPE,
    check_predictions,
    expected_predictions,
    in_chunks,
    normalised,
    npy_bytes,
    npy_header,
    npz_bytes,
    png_bytes,
    png_header,
    random_pixels,
    zip_bytes,
)

BIG = np.zeros((40, *SHAPE), np.float32)  # 40 KiB of floats: under the body limit, over the batch limit
HUGE = np.zeros((160, *SHAPE), np.float32)  # 160 KiB: over the body limit of 128 KiB
FOUR_K = png_bytes(np.zeros((4096, 4096), np.uint8))  # ~16 KiB of PNG, 16 Mpixels once decoded
OVERFLOW = np.full((1, *SHAPE), -3e38, np.float32)  # finite float32 inputs; the logits overflow to NaN
BAD = {
    "wrong shape": (dict(json=np.zeros((2, 3, 16, 16)).tolist()), 422, "wrong shape"),
    "wrong image size": (dict(files={"file": ("a.png", png_bytes(np.zeros((8, 8), np.uint8)), "image/png")}), 422,
                         "wrong shape"),
    "ragged json": (dict(json=[[[0.0] * 16] * 16, [[0.0] * 3]]), 422, "ragged|wrong shape"),
    "strings": (dict(json=[["a", "b"]]), 422, "wrong dtype"),
    "int64 npy": (dict(content=npy_bytes(np.zeros((1, *SHAPE), np.int64)), headers=OCTET), 422, "wrong dtype"),
    "complex npy": (dict(content=npy_bytes(np.zeros((1, *SHAPE), np.complex64)), headers=OCTET), 422, "wrong dtype"),
    "object npy": (dict(content=npy_bytes(np.array([{"a": 1}], dtype=object)), headers=OCTET), 422,
                   "wrong dtype object.*never unpickled"),
    "nan": (dict(content=json.dumps(np.full((1, *SHAPE), np.nan).tolist()).encode(),  # JSON's NaN extension
                 headers=JSON), 422, "NaN"),
    "not an image": (dict(files={"file": ("notes.png", b"hello, this is text", "image/png")}), 415,
                     "not a PNG or JPEG"),
    "gif": (dict(content=(lambda b: (Image.new("L", (16, 16)).save(b, format="GIF"), b.getvalue())[1])(io.BytesIO()),
                 headers={"content-type": "image/gif"}), 415, "unsupported image format"),
    "truncated png": (dict(content=png_bytes(random_pixels(5)[0, 0])[:60], headers=PNG), 422, "corrupt or truncated"),
    "png header without pixels": (dict(content=png_header(16, 16), headers=PNG), 422, "corrupt or truncated PNG"),
    "png with garbage pixels": (dict(content=png_header(16, 16, idat=b"garbage" * 9), headers=PNG), 422,
                                "corrupt or truncated PNG"),
    "4096x4096 png": (dict(content=FOUR_K, headers=PNG), 422, "wrong shape: image is 4096x4096, the model takes 16x16"),
    "20000x20000 png": (dict(content=png_header(20000, 20000), headers=PNG), 413, "too large to decode"),
    "bad npy": (dict(content=b"\x93NUMPY garbage", headers=OCTET), 422, "not a valid .npy"),
    "npy declaring 2^40 floats": (dict(content=npy_header("<f4", (1 << 40,)) + b"\0" * 64, headers=OCTET), 422,
                                  r"declares 1099511627776 values of float32 \(4398046511104 bytes\), the body "
                                  r"holds 64 bytes"),
    "npy shorter than its header": (dict(content=npy_bytes(np.zeros((1, *SHAPE), np.float32))[:-4], headers=OCTET), 422,
                                    "declares 256 values"),
    "npy version 3": (dict(content=npy_header("<f4", (1, *SHAPE), version=3), headers=OCTET), 422,
                      r"version \(3, 0\) is not supported"),
    ".npz body": (dict(content=npz_bytes(np.zeros((1, *SHAPE), np.float32)), headers=OCTET), 422, "zip archive"),
    ".npz upload named .npy": (dict(files={"file": ("x.npy", npz_bytes(np.zeros(3)), "application/octet-stream")}), 422,
                               "zip archive"),
    "zip body": (dict(content=zip_bytes("a.txt", b"hello"), headers={"content-type": "application/zip"}), 415,
                 "unsupported content type application/zip"),
    "invalid json": (dict(content=b"[1, 2", headers=JSON), 400, "invalid JSON"),
    "100,000-deep json": (dict(content=b"[" * 100_000, headers=JSON), 400, r"invalid JSON \(nested too deeply\)"),
    "100-deep json array": (dict(content=b"[" * 100 + b"0" + b"]" * 100, headers=JSON), 422, "nested too deeply"),
    "5000-digit integer": (dict(content=b"[" + b"9" * 5000 + b"]", headers=JSON), 400, "invalid JSON.*digits"),
    "non-finite logits": (dict(content=npy_bytes(OVERFLOW), headers=OCTET), 422,
                          r"non-finite logits \(NaN or infinity\) for samples \[0\]"),
    "no file field": (dict(files={"other": ("a.png", b"x", "image/png")}), 422, "named \"file\""),
    "multipart without boundary": (dict(content=b"abc", headers={"content-type": "multipart/form-data"}), 400,
                                   "boundary"),
    "content type": (dict(content=b"abc", headers={"content-type": "text/plain"}), 415, "unsupported content type"),
    "batch too large": (dict(content=npy_bytes(BIG[:17]), headers=OCTET), 413, "over the limit of 16"),
    "body too large": (dict(content=npy_bytes(HUGE), headers=OCTET), 413, "over the limit"),
    "chunked too large": (dict(content=in_chunks(npy_bytes(HUGE)), headers=OCTET), 413, "over the limit"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_4xx_json_and_server_keeps_serving(client, case):
    kwargs, status, message = BAD[case]
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status and re.search(message, body["error"]), body
    assert client.get("/health").status_code == 200
    ok = client.post("/predict", json=np.zeros((1, *SHAPE)).tolist())
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1


def test_overflow_case_really_overflows(exported):
    """The "non-finite logits" case is finite float32 input whose logits are NaN at every exit, in PyTorch too."""
    assert np.isfinite(OVERFLOW).all()
    assert all(not np.isfinite(z).any() for z in OnnxModel(exported[2]).all_exits(OVERFLOW))
    with torch.no_grad():
        assert all(not torch.isfinite(z).any() for z in exported[0](torch.from_numpy(OVERFLOW)))


def test_16_bit_png_is_rescaled_not_clipped(client, exported):
    """A 16-bit grey PNG of the same picture predicts as its 8-bit version; other 16-bit values scale by 65535."""
    px = random_pixels(11)  # [1, 1, 16, 16] uint8
    deep = px[0, 0].astype(np.uint16) * 257  # the same picture in 16 bits: v * 257 / 65535 == v / 255
    r8 = client.post("/predict", content=png_bytes(px[0, 0]), headers=PNG)
    r16 = client.post("/predict", content=png16_bytes(deep), headers=PNG)
    assert r8.status_code == r16.status_code == 200, r16.text
    assert r16.json() == r8.json()
    check_predictions(r16.json(), expected_predictions(exported, normalised(px)))
    odd = np.random.default_rng(12).integers(0, 65536, (16, 16)).astype(np.uint16)  # not multiples of 257
    r = client.post("/predict", files={"file": ("deep.png", png16_bytes(odd), "image/png")})
    want = ((odd.astype(np.float32) / 65535 - 0.5) / 0.25)[None, None]
    check_predictions(r.json(), expected_predictions(exported, want))


def png16_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(pixels)
    assert img.mode == "I;16"
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_image_size_is_checked_before_decoding(client, monkeypatch):
    """A 4096x4096 PNG is refused from its header: PIL never decodes its pixels."""
    from PIL import ImageFile

    loads, load = [], ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda img: loads.append(img.size) or load(img))
    assert client.post("/predict", content=FOUR_K, headers=PNG).status_code == 422
    assert loads == []
    assert client.post("/predict", content=png_bytes(random_pixels(6)[0, 0]), headers=PNG).status_code == 200
    assert loads and set(loads) == {(16, 16)}  # load() runs (more than once: convert and asarray call it too)
