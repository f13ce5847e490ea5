"""Threshold sweep speed: 1,000 thresholds over 10,000 samples x 8 exits from cached logits, on one core.

Times, separately and as medians over ``--repeats`` runs: the policy's scores over all exits (one pass over the
logits), the sweep itself (accuracy, mean cost and exit distribution at every threshold), and the budget table
plus AUC read off the Pareto frontier. Checks the sweep against a brute-force per-threshold computation.

    OMP_NUM_THREADS=1 python benchmarks/bench_sweep.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from exitlab.evaluation.policies import make_policy
from exitlab.evaluation.sweep import auc, budget_table, exit_indices, simulate


def _median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--thresholds", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--exits", type=int, default=8)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--policy", default="confidence")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    E, N, C = args.exits, args.samples, args.classes
    labels = torch.randint(0, C, (N,), generator=g)
    sharp = torch.linspace(0.5, 4, E)[:, None, None]  # later exits more confident, like a trained model
    logits = torch.randn(E, N, C, generator=g) * sharp + 2 * torch.nn.functional.one_hot(labels, C) * sharp / 4
    costs = torch.linspace(1, E, E, dtype=torch.float64)
    policy = make_policy(args.policy)
    t = policy.default_thresholds(E, C, args.thresholds)
    t_scores, (scores, preds) = _median_time(lambda: policy.scores(logits), args.repeats)
    t_sweep, sw = _median_time(lambda: simulate(scores, preds, labels, costs, t, policy.exit_when,
                                                backbone_flops=float(E)), args.repeats)
    t_table, _ = _median_time(lambda: (budget_table(sw.fraction, sw.accuracy), auc(sw.fraction, sw.accuracy)),
                              args.repeats)
    idx = exit_indices(scores, t, policy.exit_when)  # [T, N] brute force
    brute_acc = (preds.gather(0, idx) == labels).double().mean(1)
    ok = torch.equal(brute_acc, sw.accuracy) and torch.allclose(costs[idx].mean(1), sw.cost)
    print(f"{policy.name}: {len(t)} thresholds x {N} samples x {E} exits, {args.threads} thread(s), "
          f"median of {args.repeats}")
    print(f"  scores {t_scores * 1e3:.1f} ms | sweep {t_sweep * 1e3:.1f} ms | budget table + AUC "
          f"{t_table * 1e3:.1f} ms | total {(t_scores + t_sweep + t_table) * 1e3:.1f} ms")
    print(f"  equals brute force: {ok}")


if __name__ == "__main__":
    main()
