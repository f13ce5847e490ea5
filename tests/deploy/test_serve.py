"""The HTTP server: a real uvicorn on 127.0.0.1, real requests; right answers, 4xx JSON for bad input, no dying."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib

import numpy as np
import pytest
import torch

from exitlab.deploy.export import ExportError, OnnxModel, check_threads, export_onnx
from exitlab.errors import ExitlabError
from exitlab.evaluation.inference import early_exit
from exitlab.evaluation.policies import make_policy
from exitlab.models import build_model

pytest.importorskip("fastapi")  # the CI installs the [serve] extra; this only guards bare installs
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
Image = pytest.importorskip("PIL.Image")

import exitlab.deploy.serve  # noqa: E402
from exitlab.deploy.serve import Limits, check_port, create_app  # noqa: E402

SHAPE = (1, 16, 16)
CLASSES = ["zero", "one", "two", "three", "four", "five", "six"]
NORM = {"mean": [0.5], "std": [0.25]}
LIMITS = Limits(max_body_bytes=128 << 10, max_batch=16, max_decodes=2)


def export_tiny(out) -> tuple:
    """A two-exit ResNet-8 as one all-exits graph (the staged layout is tested in test_export*.py), with a
    confidence threshold that sends about half of random inputs out early: (model, policy, out)."""
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=7, in_chans=1, img_size=16, exits=[1], backbone_kwargs={"width": 4})
    model.eval()
    with torch.no_grad():
        conf = model(torch.randn(256, *SHAPE))[0].softmax(-1).max(-1).values
    policy = make_policy("confidence", threshold=float(conf.median()))
    export_onnx(model, out, layout="all", classes=CLASSES, policy=policy.to_dict(), normalize=NORM)
    return model, policy, out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("export") / "onnx")


def _free_socket() -> socket.socket:
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so; with proto 0, Nagle's algorithm holds
    # each response body until the client's delayed ACK, ~40 ms per request
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def running_server(app):
    """A real uvicorn serving ``app`` in a thread on a pre-bound 127.0.0.1 socket; yields its base URL."""
    sock = _free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def url(exported):
    with running_server(create_app(exported[2], limits=LIMITS)) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=30) as c:
        yield c


def _png(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format=fmt)
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _pixels(seed: int, n: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8)


def _normalise(pixels: np.ndarray) -> np.ndarray:
    return ((pixels.astype(np.float32) / 255 - 0.5) / 0.25).astype(np.float32)


def _expected(exported, x: np.ndarray) -> list[dict]:
    """What the server must say: the PyTorch model's early exit decisions and class names; every sample costs the
    whole all-exits graph."""
    model, policy, out = exported
    man = OnnxModel(out).manifest
    res = early_exit(model, torch.from_numpy(x), policy)
    conf = res.logits.softmax(-1).max(-1).values
    return [{"class": CLASSES[int(p)], "class_index": int(p), "exit": int(e), "flops": man.graphs[0].flops,
             "confidence": float(c)} for p, e, c in zip(res.preds, res.exits, conf)]


def _check(got: dict, want: list[dict]) -> None:
    assert len(got["predictions"]) == len(want)
    for g, w in zip(got["predictions"], want):
        assert {k: g[k] for k in ("class", "class_index", "exit", "flops")} == \
            {k: w[k] for k in ("class", "class_index", "exit", "flops")}
        assert abs(g["confidence"] - w["confidence"]) < 1e-4


def test_health(client, exported):
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["num_exits"] == 2 and body["input_shape"] == list(SHAPE)
    assert body["layout"] == "all"
    assert body["classes"] == CLASSES and body["policy"] == exported[1].to_dict()


def test_json_batch_matches_pytorch_early_exit(client, exported):
    x = np.random.default_rng(0).standard_normal((12, *SHAPE)).astype(np.float32)
    r = client.post("/predict", json=x.tolist())
    assert r.status_code == 200, r.text
    want = _expected(exported, x)
    _check(r.json(), want)
    assert {p["exit"] for p in want} == {0, 1}, "the threshold should split the batch between the exits"
    r2 = client.post("/predict", json={"inputs": x[0].tolist()})  # one sample without the batch dimension
    _check(r2.json(), want[:1])


def test_npy_batch_float_and_pixels(client, exported):
    x = np.random.default_rng(1).standard_normal((8, *SHAPE)).astype(np.float32)
    r = client.post("/predict", content=_npy(x), headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    _check(r.json(), _expected(exported, x))
    px = _pixels(2, 4)
    r = client.post("/predict", files={"file": ("batch.npy", _npy(px), "application/octet-stream")})
    assert r.status_code == 200, r.text
    _check(r.json(), _expected(exported, _normalise(px)))


def test_png_upload_and_raw_jpeg(client, exported):
    px = _pixels(3)
    r = client.post("/predict", files={"file": ("digit.png", _png(px[0, 0]), "image/png")})
    assert r.status_code == 200, r.text
    _check(r.json(), _expected(exported, _normalise(px)))
    jpeg = _png(px[0, 0], "JPEG")
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"))[None, None]  # JPEG is lossy: decode it here too
    r = client.post("/predict", content=jpeg, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    _check(r.json(), _expected(exported, _normalise(decoded)))
    assert pred["flops_fraction"] >= 1 and 0 < pred["confidence"] <= 1  # the all-exits graph runs every head


def _chunks(data: bytes):
    for i in range(0, len(data), 8192):
        yield data[i:i + 8192]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int, depth: int = 8, color: int = 0, idat: bytes = b"") -> bytes:
    """A PNG declaring ``width`` x ``height`` with (by default) no pixel data: what a header check must refuse."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat or zlib.compress(b""))
            + _png_chunk(b"IEND", b""))


def npy_header(descr: str, shape: tuple, version: int = 1) -> bytes:
    """A ``.npy`` header alone (versions 1 and 2 by numpy's writer; 3 by patching 2's version byte)."""
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    (np.lib.format.write_array_header_1_0 if version == 1 else np.lib.format.write_array_header_2_0)(buf, header)
    data = buf.getvalue()
    return data[:6] + bytes([version]) + data[7:]


def _zip(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, data)
    return buf.getvalue()


def _npz(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=arr)
    return buf.getvalue()


PNG, JSON, OCTET = ({"content-type": t} for t in ("image/png", "application/json", "application/octet-stream"))
BIG = np.zeros((40, *SHAPE), np.float32)  # 40 KiB of floats: under the body limit, over the batch limit
HUGE = np.zeros((160, *SHAPE), np.float32)  # 160 KiB: over the body limit of 128 KiB
FOUR_K = _png(np.zeros((4096, 4096), np.uint8))  # ~16 KiB of PNG, 16 Mpixels once decoded
OVERFLOW = np.full((1, *SHAPE), -3e38, np.float32)  # finite float32 inputs; the logits overflow to NaN
BAD = {
    "wrong shape": (dict(json=np.zeros((2, 3, 16, 16)).tolist()), 422, "wrong shape"),
    "wrong image size": (dict(files={"file": ("a.png", _png(np.zeros((8, 8), np.uint8)), "image/png")}), 422,
                         "wrong shape"),
    "ragged json": (dict(json=[[[0.0] * 16] * 16, [[0.0] * 3]]), 422, "ragged|wrong shape"),
    "strings": (dict(json=[["a", "b"]]), 422, "wrong dtype"),
    "int64 npy": (dict(content=_npy(np.zeros((1, *SHAPE), np.int64)), headers=OCTET), 422, "wrong dtype"),
    "complex npy": (dict(content=_npy(np.zeros((1, *SHAPE), np.complex64)), headers=OCTET), 422, "wrong dtype"),
    "object npy": (dict(content=_npy(np.array([{"a": 1}], dtype=object)), headers=OCTET), 422,
                   "wrong dtype object.*never unpickled"),
    "nan": (dict(content=json.dumps(np.full((1, *SHAPE), np.nan).tolist()).encode(),  # JSON's NaN extension
                 headers=JSON), 422, "NaN"),
    "not an image": (dict(files={"file": ("notes.png", b"hello, this is text", "image/png")}), 415,
                     "not a PNG or JPEG"),
    "gif": (dict(content=(lambda b: (Image.new("L", (16, 16)).save(b, format="GIF"), b.getvalue())[1])(io.BytesIO()),
                 headers={"content-type": "image/gif"}), 415, "unsupported image format"),
    "truncated png": (dict(content=_png(_pixels(5)[0, 0])[:60], headers=PNG), 422, "corrupt or truncated"),
    "png header without pixels": (dict(content=png_header(16, 16), headers=PNG), 422, "corrupt or truncated PNG"),
    "png with garbage pixels": (dict(content=png_header(16, 16, idat=b"garbage" * 9), headers=PNG), 422,
                                "corrupt or truncated PNG"),
    "4096x4096 png": (dict(content=FOUR_K, headers=PNG), 422, "wrong shape: image is 4096x4096, the model takes 16x16"),
    "20000x20000 png": (dict(content=png_header(20000, 20000), headers=PNG), 413, "too large to decode"),
    "bad npy": (dict(content=b"\x93NUMPY garbage", headers=OCTET), 422, "not a valid .npy"),
    "npy declaring 2^40 floats": (dict(content=npy_header("<f4", (1 << 40,)) + b"\0" * 64, headers=OCTET), 422,
                                  r"declares 1099511627776 values of float32 \(4398046511104 bytes\), the body "
                                  r"holds 64 bytes"),
    "npy shorter than its header": (dict(content=_npy(np.zeros((1, *SHAPE), np.float32))[:-4], headers=OCTET), 422,
                                    "declares 256 values"),
    "npy version 3": (dict(content=npy_header("<f4", (1, *SHAPE), version=3), headers=OCTET), 422,
                      r"version \(3, 0\) is not supported"),
    ".npz body": (dict(content=_npz(np.zeros((1, *SHAPE), np.float32)), headers=OCTET), 422, "zip archive"),
    ".npz upload named .npy": (dict(files={"file": ("x.npy", _npz(np.zeros(3)), "application/octet-stream")}), 422,
                               "zip archive"),
    "zip body": (dict(content=_zip("a.txt", b"hello"), headers={"content-type": "application/zip"}), 415,
                 "unsupported content type application/zip"),
    "invalid json": (dict(content=b"[1, 2", headers=JSON), 400, "invalid JSON"),
    "100,000-deep json": (dict(content=b"[" * 100_000, headers=JSON), 400, r"invalid JSON \(nested too deeply\)"),
    "100-deep json array": (dict(content=b"[" * 100 + b"0" + b"]" * 100, headers=JSON), 422, "nested too deeply"),
    "5000-digit integer": (dict(content=b"[" + b"9" * 5000 + b"]", headers=JSON), 400, "invalid JSON.*digits"),
    "non-finite logits": (dict(content=_npy(OVERFLOW), headers=OCTET), 422,
                          r"non-finite logits \(NaN or infinity\) for samples \[0\]"),
    "no file field": (dict(files={"other": ("a.png", b"x", "image/png")}), 422, "named \"file\""),
    "multipart without boundary": (dict(content=b"abc", headers={"content-type": "multipart/form-data"}), 400,
                                   "boundary"),
    "content type": (dict(content=b"abc", headers={"content-type": "text/plain"}), 415, "unsupported content type"),
    "batch too large": (dict(content=_npy(BIG[:17]), headers=OCTET), 413, "over the limit of 16"),
    "body too large": (dict(content=_npy(HUGE), headers=OCTET), 413, "over the limit"),
    "chunked too large": (dict(content=_chunks(_npy(HUGE)), headers=OCTET), 413, "over the limit"),
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
    px = _pixels(11)  # [1, 1, 16, 16] uint8
    deep = px[0, 0].astype(np.uint16) * 257  # the same picture in 16 bits: v * 257 / 65535 == v / 255
    r8 = client.post("/predict", content=_png(px[0, 0]), headers=PNG)
    r16 = client.post("/predict", content=_png16(deep), headers=PNG)
    assert r8.status_code == r16.status_code == 200, r16.text
    assert r16.json() == r8.json()
    _check(r16.json(), _expected(exported, _normalise(px)))
    odd = np.random.default_rng(12).integers(0, 65536, (16, 16)).astype(np.uint16)  # not multiples of 257
    r = client.post("/predict", files={"file": ("deep.png", _png16(odd), "image/png")})
    want = ((odd.astype(np.float32) / 65535 - 0.5) / 0.25)[None, None]
    _check(r.json(), _expected(exported, want))


def _png16(pixels: np.ndarray) -> bytes:
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
    assert client.post("/predict", content=_png(_pixels(6)[0, 0]), headers=PNG).status_code == 200
    assert loads and set(loads) == {(16, 16)}  # load() runs (more than once: convert and asarray call it too)


def test_slow_decode_does_not_stall_the_event_loop(url, monkeypatch):
    """While one upload's decode is blocked, /health answers: decoding runs off the event loop."""
    entered, release, real = threading.Event(), threading.Event(), exitlab.deploy.serve.decode_image

    def blocked(data, shape):
        entered.set()
        assert release.wait(60), "the test never released the decode"
        return real(data, shape)

    monkeypatch.setattr(exitlab.deploy.serve, "decode_image", blocked)
    result = {}
    upload = threading.Thread(target=lambda: result.update(r=httpx.post(
        f"{url}/predict", content=_png(_pixels(8)[0, 0]), headers=PNG, timeout=60)))
    upload.start()
    try:
        assert entered.wait(60), "the upload never reached the decoder"
        health = httpx.get(f"{url}/health", timeout=30)  # would time out if the decode held the event loop
        assert health.status_code == 200 and not release.is_set() and upload.is_alive()
    finally:
        release.set()
        upload.join(60)
    assert result["r"].status_code == 200


def test_decodes_run_in_the_bounded_pool(url, monkeypatch):
    """Every decode runs in an exitlab-decode thread, never more than ``max_decodes`` at once; the rest wait."""
    lock, release, active, seen = threading.Lock(), threading.Event(), [0, 0], []  # active: [now, peak]
    real = exitlab.deploy.serve.decode_request

    def counted(*args):
        with lock:
            active[0] += 1
            active[1] = max(active)
            seen.append(threading.current_thread().name)
            if active[0] == LIMITS.max_decodes:
                release.set()  # the pool is full: let them all go
        release.wait(60)
        try:
            return real(*args)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(exitlab.deploy.serve, "decode_request", counted)
    body, codes = json.dumps(np.zeros((1, *SHAPE)).tolist()).encode(), []

    def post():
        codes.append(httpx.post(f"{url}/predict", content=body, headers=JSON, timeout=60).status_code)

    threads = [threading.Thread(target=post) for _ in range(2 * LIMITS.max_decodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert codes == [200] * len(threads) and len(seen) == len(threads)
    assert all(n.startswith("exitlab-decode") for n in seen)
    assert active == [0, LIMITS.max_decodes]  # the pool filled up, and never beyond its bound


@pytest.mark.parametrize("route", ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"])
def test_docs_routes_are_off(client, route):
    r = client.get(route)
    assert r.status_code == 404 and r.json() == {"error": "Not Found", "status": 404}


def test_get_predict_is_json_405(client):
    r = client.get("/predict")
    assert r.status_code == 405 and r.json()["status"] == 405


def test_unknown_route_is_json_404(client):
    r = client.get("/nope")
    assert r.status_code == 404 and "error" in r.json()


def test_broken_export_fails_at_startup(exported, tmp_path):
    d = tmp_path / "broken"
    shutil.copytree(exported[2], d)
    (d / "all_exits.onnx").write_bytes((d / "all_exits.onnx").read_bytes()[:100])
    with pytest.raises(ExportError, match="checksum"):
        create_app(d)
    raw = json.loads((d / "manifest.json").read_text())
    shutil.copy(exported[2] / "all_exits.onnx", d / "all_exits.onnx")
    raw["input_shape"] = [3, 16, 16]
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ExportError, match="does not match its graphs"):
        create_app(d)


def _escape(d, how: str) -> None:
    """Point the manifest's graph entry outside the export folder (the graph itself stays a valid copy)."""
    graph = d / "all_exits.onnx"
    outside = d.parent / "outside.onnx"
    shutil.copy(graph, outside)
    name = {"dotdot": "../outside.onnx", "absolute": str(outside), "subfolder": "sub/all_exits.onnx"}.get(how)
    if how == "symlink":
        graph.unlink()
        graph.symlink_to(outside)
        return
    if how == "subfolder":
        (d / "sub").mkdir()
        shutil.copy(graph, d / "sub" / "all_exits.onnx")
    raw = json.loads((d / "manifest.json").read_text())
    raw["graphs"][0]["file"] = name
    (d / "manifest.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("how, message", [
    ("dotdot", r"graph file '../outside.onnx' is not a plain file name"),
    ("absolute", r"graph file '/.*/outside.onnx' is not a plain file name"),
    ("subfolder", r"graph file 'sub/all_exits.onnx' is not a plain file name"),
    ("symlink", r"graph all_exits.onnx is a link to .*outside.onnx, outside the export folder"),
])
def test_manifest_files_outside_the_export_are_refused_at_startup(exported, tmp_path, how, message):
    d = tmp_path / "export"
    shutil.copytree(exported[2], d)
    _escape(d, how)
    with pytest.raises(ExportError, match=message):
        create_app(d)


@pytest.mark.parametrize("make, message", [
    (lambda: Limits(max_body_bytes=0), r"Limits.max_body_bytes \(set by --max-body-mb\) must be a whole number >= 1"),
    (lambda: Limits(max_batch=0), r"Limits.max_batch \(set by --max-batch\) must be a whole number >= 1, got 0"),
    (lambda: Limits(max_batch=2.5), r"max_batch .* got 2.5"),
    (lambda: Limits(max_decodes=0), r"Limits.max_decodes must be a whole number >= 1, got 0"),
    (lambda: Limits.from_cli(0, 16), r"--max-body-mb must be a positive number of MiB \(e.g. 8\), got 0"),
    (lambda: Limits.from_cli(float("nan"), 16), r"--max-body-mb .* got nan"),
    (lambda: Limits.from_cli(float("inf"), 16), r"--max-body-mb .* got inf"),
    (lambda: Limits.from_cli(1e-9, 16), r"--max-body-mb .* got 1e-09"),
    (lambda: Limits.from_cli(8, -1), r"--max-batch must be a whole number >= 1, got -1"),
    (lambda: check_port(0), r"--port must be a whole number in 1..65535, got 0"),
    (lambda: check_port(65536), r"--port .* got 65536"),
    (lambda: check_threads(0), r"--threads must be a whole number >= 1 \(onnxruntime threads per request\), got 0"),
])
def test_bad_numbers_are_one_line_errors(make, message):
    with pytest.raises(ExitlabError, match=message) as e:
        make()
    assert "\n" not in str(e.value)


def test_good_numbers_pass(exported):
    assert Limits.from_cli(0.5, 1) == Limits(max_body_bytes=1 << 19, max_batch=1)
    assert check_port(1) == 1 and check_port(65535) == 65535 and check_threads(3) == 3
    with pytest.raises(ExitlabError, match="--threads"):
        create_app(exported[2], threads=0)  # refused before the export is loaded


@pytest.mark.slow  # two fresh interpreters importing torch and onnxruntime: 10-30 s on 2 shared cores
def test_cli_serve_in_subprocess(exported, tmp_path):
    """`exitlab serve` as a user runs it: a broken export exits 2 with a message; a good one answers requests."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    bad = subprocess.run([sys.executable, "-m", "exitlab", "serve", str(tmp_path / "missing"), "--port", "1"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "error:" in bad.stderr and "does not exist" in bad.stderr
    sock = _free_socket()
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "exitlab", "serve", str(exported[2]), "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
                time.sleep(0.2)
        assert r.status_code == 200
        px = _pixels(7)
        r = httpx.post(f"http://127.0.0.1:{port}/predict", files={"file": ("x.png", _png(px[0, 0]), "image/png")})
        _check(r.json(), _expected(exported, _normalise(px)))
    finally:
        proc.terminate()
        proc.wait(10)
