"""A 21 x 21 filter-normalised loss landscape of a ResNet-20-size multi-exit model on 2,000 samples.

Each grid point is one batched, no-grad pass over all samples (in batches of ``--batch-size``, default 250) that
gives every exit's loss and accuracy; there is no per-sample Python. ``--max-points K`` times only the first ``K``
points of the grid (row by row) and projects the full grid from the median per-point time: a full 21 x 21 grid
costs most of an hour of one core, which this shared 2-core machine cannot spare for every run.

Also measured, interleaved in one run so machine noise hits them alike: batches of 250 vs one batch of all 2,000
(which falls out of cache), NCHW vs channels_last, the batched pass vs a per-sample loop (on ``--loop-samples``
samples, scaled to the full set), and the ``params="heads"`` plane, where the backbone's features are computed once
and only the heads rerun.

Times are wall clock and process CPU time; with one thread on a shared machine CPU time is the better estimate of an
idle core. Inputs are seeded random CIFAR-shaped images (``--size 32 --chans 3``; the cost does not depend on the
values).

Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_landscape.py --max-points 21
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from exitlab.analysis.common import exit_metrics
from exitlab.analysis.landscape import grid_coords, surface_points
from exitlab.models import build_model


def clocks(fn) -> tuple[float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def per_sample_loop(model, x, y) -> None:
    with torch.no_grad():
        for i in range(len(y)):
            exit_metrics(model, [(x[i:i + 1], y[i:i + 1])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", default="resnet20")
    ap.add_argument("--exits", default="2,5", help="IC block indices")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--chans", type=int, default=3)
    ap.add_argument("--steps", type=int, default=21)
    ap.add_argument("--max-points", type=int, default=0, help="time only the first K grid points (0: all)")
    ap.add_argument("--loop-samples", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3, help="repeats of the side-by-side comparisons")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average before: {os.getloadavg()[0]:.1f} (2 cores shared)")

    torch.manual_seed(0)
    model = build_model(args.backbone, num_classes=10, in_chans=args.chans, img_size=args.size,
                        exits=[int(e) for e in args.exits.split(",")]).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.samples, args.chans, args.size, args.size, generator=g)
    y = torch.randint(0, 10, (args.samples,), generator=g)
    bs = args.batch_size
    split = lambda b: [(x[i:i + b], y[i:i + b]) for i in range(0, args.samples, b)]  # noqa: E731
    nchw = split(bs)
    cl = [(xb.contiguous(memory_format=torch.channels_last), yb) for xb, yb in nchw]
    whole = [(x.contiguous(memory_format=torch.channels_last), y)]
    params = sum(p.numel() for p in model.parameters())
    print(f"model {args.backbone} exits {args.exits}: {params / 1e6:.3f} M parameters; {args.samples} samples "
          f"{args.chans}x{args.size}x{args.size}, batch {bs}, threads {args.threads}")

    def point(batches, which="all", n=1):
        return surface_points(model, batches, [[0.5, 0.5]] * n, params=which, seed=0, weights=None, bn="fixed",
                              bn_batches=None)

    # side by side: one point each way, interleaved
    ref = f"channels_last, batches of {bs}"
    rows = {ref: [], f"channels_last, one batch of {args.samples}": [], f"NCHW, batches of {bs}": [],
            "heads-only plane (cached backbone)": []}
    for _ in range(args.repeats):
        model.to(memory_format=torch.channels_last)
        rows[ref].append(clocks(lambda: point(cl)))
        rows[f"channels_last, one batch of {args.samples}"].append(clocks(lambda: point(whole)))
        w, c = clocks(lambda: point(cl, "heads", 10))  # the cache is built once per plane: amortise over 10 points
        rows["heads-only plane (cached backbone)"].append((w / 10, c / 10))
        model.to(memory_format=torch.contiguous_format)
        rows[f"NCHW, batches of {bs}"].append(clocks(lambda: point(nchw)))
    model.to(memory_format=torch.channels_last)
    k = args.loop_samples
    loop = [clocks(lambda: per_sample_loop(model, x[:k], y[:k])) for _ in range(args.repeats)]
    rows[f"per-sample loop (x{args.samples / k:.0f} from {k})"] = [(w * args.samples / k, c * args.samples / k)
                                                                   for w, c in loop]
    print(f"\n| one grid point, all samples | wall (s) | CPU (s) | CPU vs {ref} |")
    print("|---|---|---|---|")
    base = statistics.median(c for _, c in rows[ref])
    for name, vals in rows.items():
        mw, mc = statistics.median(v[0] for v in vals), statistics.median(v[1] for v in vals)
        print(f"| {name} | {mw:.2f} | {mc:.2f} | {mc / base:.2f}x |")

    # the grid itself (channels_last, all parameters, BN fixed)
    coords = grid_coords(args.steps, 1.0)
    grid = [[a, b] for b in coords for a in coords]
    todo = grid[: args.max_points] if args.max_points else grid
    losses, _, meta = surface_points(model, cl, todo, params="all", seed=0, weights=None, bn="fixed", bn_batches=None)
    total = len(grid)
    print(f"\ngrid {args.steps} x {args.steps} = {total} points; timed {len(todo)}: {meta['seconds_per_point']:.2f} s "
          f"wall, {meta['cpu_seconds_per_point']:.2f} s CPU per point -> "
          f"{'measured' if len(todo) == total else 'projected'} full grid {meta['seconds_per_point'] * total / 60:.1f}"
          f" min wall, {meta['cpu_seconds_per_point'] * total / 60:.1f} min CPU")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
