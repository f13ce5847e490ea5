"""Numerical rank of one large activation matrix, and the float64-Gram route against ``svdvals`` side by side.

The main figure: ``exitlab.analysis.rank.matrix_rank_stats`` (centring, float64 Gram of the smaller side, symmetric
eigensolve, numerical rank under both conventions, effective/stable rank, spectrum) on one ``--n x --d`` matrix,
median of ``--repeats`` runs. The matrix has a power-law spectrum over ``--r`` directions, so the rank is not trivially
full, and the two rank conventions (covariance eigenvalues > tau lambda_1, the default; singular values > tau s_1)
give different counts.

Times are wall clock and process CPU time (``time.process_time``): on this shared 2-core machine other jobs steal the
core, so with one thread CPU time is the better estimate of what an idle core would take; both are printed.

The comparison: for each shape in ``--shapes``, the Gram route and float32 ``svdvals`` on the same matrix, timed in
interleaved rounds (Gram, svd, Gram, svd, ...) so that machine noise hits both alike; medians and their ratio, and a
check that both give the same rank.

Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_rank.py --n 4096 --d 8192 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from exitlab.analysis.rank import matrix_rank_stats


def activation_like(n: int, d: int, r: int, seed: int = 0) -> torch.Tensor:
    """``[n, d]`` float32 with a power-law spectrum: the k-th direction scaled by ``(1 + k)^-1``, ``r`` directions."""
    g = torch.Generator().manual_seed(seed)
    scale = 1.0 / (1 + torch.arange(r, dtype=torch.float32))
    return (torch.randn(n, r, generator=g) * scale) @ torch.randn(r, d, generator=g) / d**0.5


def timed(a: torch.Tensor, method: str) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds, rank statistics) of one ``matrix_rank_stats`` call."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = matrix_rank_stats(a, method=method)
    return time.perf_counter() - w0, time.process_time() - c0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4096, help="rows (samples) of the main matrix")
    ap.add_argument("--d", type=int, default=8192, help="columns (features) of the main matrix")
    ap.add_argument("--r", type=int, default=512, help="inner rank before the ReLU")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shapes", default="1024x4096,2048x2048,2048x8192", help="Gram vs svdvals comparison shapes")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    print(f"load average before: {os.getloadavg()[0]:.1f} (2 cores shared)")
    a = activation_like(args.n, args.d, min(args.r, args.n, args.d))
    runs = [timed(a, "auto") for _ in range(args.repeats)]
    stats = runs[0][2]
    wall, cpu = [r[0] for r in runs], [r[1] for r in runs]
    print(f"main: {args.n} x {args.d}, threads {args.threads}, method {stats['method']}: median wall "
          f"{statistics.median(wall):.2f} s, CPU {statistics.median(cpu):.2f} s over {args.repeats} "
          f"(wall min {min(wall):.2f}, max {max(wall):.2f}); rank {stats['rank_covariance']} (covariance) / "
          f"{stats['rank_singular']} (singular), ceiling {stats['ceiling']}, effective {stats['effective_rank']:.1f}, "
          f"stable {stats['stable_rank']:.2f}")

    print("\n| shape | Gram float64: wall / CPU (s) | svdvals float32: wall / CPU (s) | svd / Gram (CPU) | "
          "singular-convention ranks |")
    print("|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        n, d = map(int, shape.split("x"))
        m = activation_like(n, d, min(args.r, n, d), seed=1)
        gram, svd = [], []
        for _ in range(args.repeats):  # interleaved
            gram.append(timed(m, "gram"))
            svd.append(timed(m, "svd"))
        med = lambda rs, i: statistics.median(r[i] for r in rs)  # noqa: E731
        rg, rs = gram[0][2]["rank_singular"], svd[0][2]["rank_singular"]  # the convention that needs 1e-3 s_1
        print(f"| {n} x {d} | {med(gram, 0):.2f} / {med(gram, 1):.2f} | {med(svd, 0):.2f} / {med(svd, 1):.2f} | "
              f"{med(svd, 1) / med(gram, 1):.1f}x | {rg} / {rs} |")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
