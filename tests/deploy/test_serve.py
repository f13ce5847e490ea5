"""The HTTP server: a real uvicorn on 127.0.0.1, real requests; right answers, 4xx JSON for bad input, no dying."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from exitlab.deploy.export import ExportError, check_threads
from exitlab.errors import ExitlabError

pytest.importorskip("fastapi")  # the CI installs the [serve] extra; this only guards bare installs
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
Image = pytest.importorskip("PIL.Image")

import exitlab.deploy.decode  # noqa: E402
import exitlab.deploy.serve  # noqa: E402
from exitlab.deploy.serve import Limits, check_port, create_app  # noqa: E402
from tests.deploy.serving import (  # noqa: E402
    CLASSES,
    JSON,
    LIMITS,
    PNG,
    SHAPE,
    check_predictions,
    expected_predictions,
    free_socket,
    normalised,
    npy_bytes,
    png_bytes,
    random_pixels,
)


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
    want = expected_predictions(exported, x)
    check_predictions(r.json(), want)
    assert {p["exit"] for p in want} == {0, 1}, "the threshold should split the batch between the exits"
    r2 = client.post("/predict", json={"inputs": x[0].tolist()})  # one sample without the batch dimension
    check_predictions(r2.json(), want[:1])


def test_npy_batch_float_and_pixels(client, exported):
    x = np.random.default_rng(1).standard_normal((8, *SHAPE)).astype(np.float32)
    r = client.post("/predict", content=npy_bytes(x), headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    check_predictions(r.json(), expected_predictions(exported, x))
    px = random_pixels(2, 4)
    r = client.post("/predict", files={"file": ("batch.npy", npy_bytes(px), "application/octet-stream")})
    assert r.status_code == 200, r.text
    check_predictions(r.json(), expected_predictions(exported, normalised(px)))


def test_png_upload_and_raw_jpeg(client, exported):
    px = random_pixels(3)
    r = client.post("/predict", files={"file": ("digit.png", png_bytes(px[0, 0]), "image/png")})
    assert r.status_code == 200, r.text
    check_predictions(r.json(), expected_predictions(exported, normalised(px)))
    jpeg = png_bytes(px[0, 0], "JPEG")
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("L"))[None, None]  # JPEG is lossy: decode it here too
    r = client.post("/predict", content=jpeg, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    check_predictions(r.json(), expected_predictions(exported, normalised(decoded)))
    assert pred["flops_fraction"] >= 1 and 0 < pred["confidence"] <= 1  # the all-exits graph runs every head


def test_slow_decode_does_not_stall_the_event_loop(url, monkeypatch):
    """While one upload's decode is blocked, /health answers: decoding runs off the event loop."""
    entered, release, real = threading.Event(), threading.Event(), exitlab.deploy.decode.decode_image

    def blocked(data, shape):
        entered.set()
        assert release.wait(60), "the test never released the decode"
        return real(data, shape)

    monkeypatch.setattr(exitlab.deploy.decode, "decode_image", blocked)
    result = {}
    upload = threading.Thread(target=lambda: result.update(r=httpx.post(
        f"{url}/predict", content=png_bytes(random_pixels(8)[0, 0]), headers=PNG, timeout=60)))
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
    sock = free_socket()
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
        px = random_pixels(7)
        r = httpx.post(f"http://127.0.0.1:{port}/predict", files={"file": ("x.png", png_bytes(px[0, 0]), "image/png")})
        check_predictions(r.json(), expected_predictions(exported, normalised(px)))
    finally:
        proc.terminate()
        proc.wait(10)
