"""Batch 1: the onnxruntime router (staged export) against PyTorch eager, ResNet-56 with 8 exits, nobody leaving.

One process, 1 thread on both sides (torch threads and onnxruntime's intra-op threads), the variants interleaved
input by input; the confidence policy at threshold 1.0 is checked at every exit and nobody leaves. Timed per input:
the bare PyTorch backbone (the reference), PyTorch real early exit, the onnxruntime router (``OnnxModel.predict``:
nine stage graphs, the policy in numpy between them) and onnxruntime's all-exits pass. Ratios are paired per input,
medians over inputs. Also checks that both routers take the same exits.

    OMP_NUM_THREADS=1 python benchmarks/bench_onnx_batch1.py --head sdn --samples 300
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_early_exit import calibrated_model  # noqa: E402

from exitlab.deploy.export import OnnxModel, export_onnx  # noqa: E402
from exitlab.evaluation.inference import early_exit  # noqa: E402
from exitlab.evaluation.policies import make_policy  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--head", default="sdn")
    p.add_argument("--samples", type=int, default=300)
    p.add_argument("--clock", default="cpu", choices=["cpu", "wall"])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    tick = time.thread_time if args.clock == "cpu" else time.perf_counter
    model = calibrated_model(argparse.Namespace(seed=0, depth=56, classes=10, img=32, exits=8, head=args.head))
    policy = make_policy("confidence", threshold=1.0)
    out = Path(tempfile.mkdtemp()) / "export"
    export_onnx(model, out, input_shape=(3, 32, 32), policy=policy.to_dict())
    onnx = OnnxModel(out, threads=1)
    xs = torch.randn(args.samples, 3, 32, 32)
    runs = {"torch bare backbone": lambda x, a: model.backbone(x),
            "torch early exit": lambda x, a: early_exit(model, x, policy),
            "onnxruntime router": lambda x, a: onnx.predict(a),
            "onnxruntime all exits": lambda x, a: onnx.all_exits(a)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    same = 0
    with torch.no_grad():
        for i in range(min(10, len(xs))):
            for fn in runs.values():
                fn(xs[i:i + 1], xs[i:i + 1].numpy())
        for i in range(len(xs)):
            x, a = xs[i:i + 1], np.ascontiguousarray(xs[i:i + 1].numpy())
            for k, fn in runs.items():
                t0 = tick()
                fn(x, a)
                times[k].append(tick() - t0)
            same += int(early_exit(model, x, policy).exits.item() == int(onnx.predict(a).exit[0]))
    base = np.array(times["torch bare backbone"])
    print(f"resnet56, 8 {args.head} exits, batch 1, {args.samples} inputs, 1 thread, {args.clock} clock; "
          f"same exit in both routers: {same}/{len(xs)}")
    result = {}
    for k, t in times.items():
        ratio = float(np.median(np.array(t) / base))
        result[k] = {"median_ms": statistics.median(t) * 1e3, "vs_torch_bare": ratio}
        print(f"  {k:<24} {statistics.median(t) * 1e3:8.3f} ms   {ratio:.3f}x the PyTorch bare backbone")
    return result


if __name__ == "__main__":
    main()
