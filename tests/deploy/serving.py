"""What the server tests share: a tiny exported model, a real uvicorn in a thread, and request bodies."""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import threading
import time
import zipfile
import zlib

import numpy as np
import pytest
import torch

from exitlab.deploy.export import OnnxModel, export_onnx
from exitlab.evaluation.inference import early_exit
from exitlab.evaluation.policies import make_policy
from exitlab.models import build_model

pytest.importorskip("fastapi")  # the CI installs the [serve] extra; this only guards bare installs
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
Image = pytest.importorskip("PIL.Image")

from exitlab.deploy.serve import Limits  # noqa: E402

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


def free_socket() -> socket.socket:
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say so; with proto 0, Nagle's algorithm holds
    # each response body until the client's delayed ACK, ~40 ms per request
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def running_server(app):
    """A real uvicorn serving ``app`` in a thread on a pre-bound 127.0.0.1 socket; yields its base URL."""
    sock = free_socket()
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


def png_bytes(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format=fmt)
    return buf.getvalue()


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def random_pixels(seed: int, n: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE), dtype=np.uint8)


def normalised(pixels: np.ndarray) -> np.ndarray:
    return ((pixels.astype(np.float32) / 255 - 0.5) / 0.25).astype(np.float32)


def expected_predictions(exported, x: np.ndarray) -> list[dict]:
    """What the server must say: the PyTorch model's early exit decisions and class names; every sample costs the
    whole all-exits graph."""
    model, policy, out = exported
    man = OnnxModel(out).manifest
    res = early_exit(model, torch.from_numpy(x), policy)
    conf = res.logits.softmax(-1).max(-1).values
    return [{"class": CLASSES[int(p)], "class_index": int(p), "exit": int(e), "flops": man.graphs[0].flops,
             "confidence": float(c)} for p, e, c in zip(res.preds, res.exits, conf)]


def check_predictions(got: dict, want: list[dict]) -> None:
    assert len(got["predictions"]) == len(want)
    for g, w in zip(got["predictions"], want):
        assert {k: g[k] for k in ("class", "class_index", "exit", "flops")} == \
            {k: w[k] for k in ("class", "class_index", "exit", "flops")}
        assert abs(g["confidence"] - w["confidence"]) < 1e-4


def in_chunks(data: bytes):
    for i in range(0, len(data), 8192):
        yield data[i:i + 8192]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(width: int, height: int, depth: int = 8, color: int = 0, idat: bytes = b"") -> bytes:
    """A PNG declaring ``width`` x ``height`` with (by default) no pixel data: what a header check must refuse."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat or zlib.compress(b""))
            + png_chunk(b"IEND", b""))


def npy_header(descr: str, shape: tuple, version: int = 1) -> bytes:
    """A ``.npy`` header alone (versions 1 and 2 by numpy's writer; 3 by patching 2's version byte)."""
    buf = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    (np.lib.format.write_array_header_1_0 if version == 1 else np.lib.format.write_array_header_2_0)(buf, header)
    data = buf.getvalue()
    return data[:6] + bytes([version]) + data[7:]


def zip_bytes(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, data)
    return buf.getvalue()


def npz_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x=arr)
    return buf.getvalue()


PNG, JSON, OCTET = ({"content-type": t} for t in ("image/png", "application/json", "application/octet-stream"))
