"""Bounded load test of `exitlab serve` on localhost: throughput and latency percentiles for a fixed request count.

Starts the server as a subprocess on 127.0.0.1 (a free port), sends ``--requests`` POST /predict requests from
``--concurrency`` client threads, and repeats ``--runs`` times; prints medians over the runs as a Markdown table.
The same inputs are also timed through the runtime in-process (no HTTP), in the same run, for the HTTP overhead.

    python benchmarks/bench_serve.py                      # tiny ResNet-8 export made here, 1x28x28 PNG uploads
    python benchmarks/bench_serve.py --export runs/x/onnx --payload npy --batch 16

Only 127.0.0.1 is ever contacted. Needs the [serve] extra.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def make_export(out: Path) -> Path:
    """A ResNet-8 (width 16) with exits after blocks 0 and 1 on 1x28x28 inputs, confidence threshold at the median."""
    import torch

    from exitlab.deploy.export import export_onnx
    from exitlab.evaluation.policies import make_policy
    from exitlab.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, in_chans=1, img_size=28, exits=[0, 1]).eval()
    with torch.no_grad():
        conf = model(torch.randn(256, 1, 28, 28))[0].softmax(-1).max(-1).values
    policy = make_policy("confidence", threshold=float(conf.median()))
    export_onnx(model, out, classes=[str(k) for k in range(10)], policy=policy.to_dict(),
                normalize={"mean": [0.5], "std": [0.25]})
    return out


def payloads(shape: tuple[int, ...], kind: str, batch: int, n: int) -> list[tuple[dict, np.ndarray]]:
    """``n`` distinct request bodies (httpx kwargs) and the float inputs the server will see for each."""
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        px = rng.integers(0, 256, (batch, *shape), dtype=np.uint8)
        if kind == "png":
            buf = io.BytesIO()
            Image.fromarray(px[0, 0]).save(buf, format="PNG")
            out.append(({"files": {"file": ("x.png", buf.getvalue(), "image/png")}}, px[:1]))
        elif kind == "npy":
            buf = io.BytesIO()
            np.save(buf, px)
            out.append(({"content": buf.getvalue(), "headers": {"content-type": "application/octet-stream"}}, px))
        else:
            x = ((px / 255.0 - 0.5) / 0.25).astype(np.float32)
            out.append(({"json": x.tolist()}, px))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(export: Path, port: int) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "exitlab", "serve", str(export), "--host", "127.0.0.1", "--port",
                             str(port), "--threads", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not come up within 120 s")


def load_run(url: str, bodies: list, requests: int, concurrency: int) -> tuple[float, list[float], int]:
    """Send ``requests`` requests from ``concurrency`` threads; returns (wall seconds, latencies in ms, errors)."""
    import httpx

    def worker(ids: range) -> tuple[list[float], int]:
        lat, errors = [], 0
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in ids:
                t0 = time.perf_counter()
                r = client.post("/predict", **bodies[i % len(bodies)][0])
                lat.append((time.perf_counter() - t0) * 1e3)
                errors += r.status_code != 200
        return lat, errors

    chunks = [range(k, requests, concurrency) for k in range(concurrency)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(worker, chunks))
    wall = time.perf_counter() - t0
    return wall, [x for lat, _ in results for x in lat], sum(e for _, e in results)


def direct_ms(export: Path, bodies: list, repeats: int) -> float:
    """Median latency of the same inputs through the runtime in-process, 1 thread, no HTTP."""
    from exitlab.deploy.decode import normalise
    from exitlab.deploy.export import OnnxModel

    model = OnnxModel(export, threads=1)
    xs = [normalise(px, model) for _, px in bodies]
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        model.predict(xs[i % len(xs)])
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--export", type=Path, help="export directory (default: a tiny ResNet-8 exported here)")
    p.add_argument("--requests", type=int, default=300, help="requests per run (default: 300)")
    p.add_argument("--concurrency", type=int, default=4, help="client threads (default: 4)")
    p.add_argument("--payload", choices=["png", "npy", "json"], default="png", help="request body kind")
    p.add_argument("--batch", type=int, default=1, help="samples per request for npy/json (default: 1)")
    p.add_argument("--runs", type=int, default=3, help="repeats; medians are reported (default: 3)")
    p.add_argument("--warmup", type=int, default=20, help="unmeasured requests first (default: 20)")
    args = p.parse_args()
    if args.requests < 1 or args.requests > 100_000 or args.concurrency < 1 or args.concurrency > 64:
        raise SystemExit("--requests must be in 1..100000 and --concurrency in 1..64")
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        export = args.export or make_export(Path(tmp) / "export")
        from exitlab.deploy.export import read_manifest

        shape = tuple(read_manifest(export).input_shape)
        bodies = payloads(shape, args.payload, 1 if args.payload == "png" else args.batch, 32)
        port = free_port()
        proc = start_server(export, port)
        url = f"http://127.0.0.1:{port}"
        try:
            load_run(url, bodies, args.warmup, 1)
            rows = []
            for _ in range(args.runs):
                wall, lat, errors = load_run(url, bodies, args.requests, args.concurrency)
                q = np.percentile(lat, [50, 90, 99])
                rows.append((args.requests / wall, *q, errors))
                direct = direct_ms(export, bodies, 200)
                rows[-1] = (*rows[-1], direct)
        finally:
            proc.terminate()
            proc.wait(10)
    med = [statistics.median(r[i] for r in rows) for i in range(6)]
    samples = 1 if args.payload == "png" else args.batch
    print(f"load average: {os.getloadavg()[0]:.1f}; {args.runs} runs of {args.requests} requests, "
          f"{args.concurrency} client threads, {args.payload} x {samples} sample(s)")
    print("| payload | samples/req | concurrency | req/s | p50 ms | p90 ms | p99 ms | errors | in-process ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.payload} | {samples} | {args.concurrency} | {med[0]:.0f} | {med[1]:.2f} | {med[2]:.2f} | "
          f"{med[3]:.2f} | {int(med[4])} | {med[5]:.2f} |")


if __name__ == "__main__":
    main()
