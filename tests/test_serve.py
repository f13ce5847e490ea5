"""The HTTP server: a real uvicorn on 127.0.0.1, real requests; right answers, 4xx JSON for bad input, no dying."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from exitlab.export import ExportError, OnnxModel, export_onnx
from exitlab.inference import early_exit
from exitlab.models import build_model
from exitlab.policies import make_policy

pytest.importorskip("fastapi")  # the CI installs the [serve] extra; this only guards bare installs
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
Image = pytest.importorskip("PIL.Image")

from exitlab.serve import Limits, create_app  # noqa: E402

SHAPE = (1, 16, 16)
CLASSES = ["zero", "one", "two", "three", "four", "five", "six"]
NORM = {"mean": [0.5], "std": [0.25]}
LIMITS = Limits(max_body_bytes=64 << 10, max_batch=16)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A two-exit ResNet-8 as one all-exits graph (the staged layout is tested in test_export*.py), with a
    confidence threshold that sends about half of random inputs out early."""
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=7, in_chans=1, img_size=16, exits=[1], backbone_kwargs={"width": 4})
    model.eval()
    with torch.no_grad():
        conf = model(torch.randn(256, *SHAPE))[0].softmax(-1).max(-1).values
    policy = make_policy("confidence", threshold=float(conf.median()))
    out = tmp_path_factory.mktemp("export")
    export_onnx(model, out, layout="all", classes=CLASSES, policy=policy.to_dict(), normalize=NORM)
    return model, policy, out


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def url(exported):
    sock = _free_socket()
    server = uvicorn.Server(uvicorn.Config(create_app(exported[2], limits=LIMITS), log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)
    sock.close()


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


BIG = np.zeros((40, *SHAPE), np.float32)  # 40 KiB of floats: under the body limit, over the batch limit
BAD = {
    "wrong shape": (dict(json=np.zeros((2, 3, 16, 16)).tolist()), 422, "wrong shape"),
    "wrong image size": (dict(files={"file": ("a.png", _png(np.zeros((8, 8), np.uint8)), "image/png")}), 422,
                         "wrong shape"),
    "ragged json": (dict(json=[[[0.0] * 16] * 16, [[0.0] * 3]]), 422, "ragged|wrong shape"),
    "strings": (dict(json=[["a", "b"]]), 422, "wrong dtype"),
    "int64 npy": (dict(content=_npy(np.zeros((1, *SHAPE), np.int64)),
                       headers={"content-type": "application/octet-stream"}), 422, "wrong dtype"),
    "complex npy": (dict(content=_npy(np.zeros((1, *SHAPE), np.complex64)),
                         headers={"content-type": "application/octet-stream"}), 422, "wrong dtype"),
    "object npy": (dict(content=_npy(np.array([{"a": 1}], dtype=object)),
                        headers={"content-type": "application/octet-stream"}), 422, "wrong dtype"),
    "nan": (dict(content=json.dumps(np.full((1, *SHAPE), np.nan).tolist()).encode(),  # JSON's NaN extension
                 headers={"content-type": "application/json"}), 422, "NaN"),
    "not an image": (dict(files={"file": ("notes.png", b"hello, this is text", "image/png")}), 415,
                     "not a PNG or JPEG"),
    "gif": (dict(content=(lambda b: (Image.new("L", (16, 16)).save(b, format="GIF"), b.getvalue())[1])(io.BytesIO()),
                 headers={"content-type": "image/gif"}), 415, "unsupported image format"),
    "truncated png": (dict(content=_png(_pixels(5)[0, 0])[:60], headers={"content-type": "image/png"}), 422,
                      "corrupt or truncated"),
    "bad npy": (dict(content=b"\x93NUMPY garbage", headers={"content-type": "application/octet-stream"}), 422,
                "not a valid .npy"),
    "invalid json": (dict(content=b"[1, 2", headers={"content-type": "application/json"}), 400, "invalid JSON"),
    "no file field": (dict(files={"other": ("a.png", b"x", "image/png")}), 422, "named \"file\""),
    "content type": (dict(content=b"abc", headers={"content-type": "text/plain"}), 415, "unsupported content type"),
    "batch too large": (dict(content=_npy(BIG[:17]), headers={"content-type": "application/octet-stream"}), 413,
                        "over the limit of 16"),
    "body too large": (dict(content=_npy(np.zeros((80, *SHAPE), np.float32)),
                            headers={"content-type": "application/octet-stream"}), 413, "over the limit"),
    "chunked too large": (dict(content=_chunks(_npy(np.zeros((80, *SHAPE), np.float32))),
                               headers={"content-type": "application/octet-stream"}), 413, "over the limit"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_4xx_json_and_server_keeps_serving(client, case):
    kwargs, status, message = BAD[case]
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status and __import__("re").search(message, body["error"]), body
    assert client.get("/health").status_code == 200
    ok = client.post("/predict", json=np.zeros((1, *SHAPE)).tolist())
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1


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
