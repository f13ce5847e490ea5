"""How often does a risk-controlled threshold keep the test accuracy drop within the bound on a real run?

Pools a finished run's cached validation and test logits, re-splits them ``--splits`` times at random into a
calibration part (``--calibration`` samples) and a test part (the rest), chooses each policy's threshold on the
calibration part with ``evaluation.risk.risk_threshold``, and reports on the test part: the share of splits whose
accuracy drop against the final exit is at most ``--risk``, the median and largest drop, and the median share of the
final exit's FLOPs saved. Reads the run directory's logits cache (computed once if missing).

    python benchmarks/risk_coverage.py RUN_DIR --risk 0.01 --confidence 0.9
"""

from __future__ import annotations

import argparse

import torch

from exitlab.evaluation.policies import make_policy
from exitlab.evaluation.risk import risk_threshold
from exitlab.evaluation.sweep import exit_indices
from exitlab.models.costs import exit_costs
from exitlab.runs.rundir import RunDir


def coverage(run: RunDir, name: str, alpha: float, confidence: float, splits: int, calibration: int,
             kind: str = "gap") -> dict:
    """Re-split the pooled val + test logits ``splits`` times; the drop and savings of ``name`` on each test part."""
    (v, vl), (t, tl) = run.logits("val"), run.logits("test")
    z, y = torch.cat([v, t], 1), torch.cat([vl, tl])  # [E, N, C], [N]
    costs = exit_costs(run.model()).flops
    pol = make_policy(name)
    s, p = pol.scores(z)
    E, N, C = z.shape
    cand = pol.default_thresholds(E, C) if pol.integer else None
    g = torch.Generator().manual_seed(0)
    drops, saved = [], []
    for _ in range(splits):
        perm = torch.randperm(N, generator=g)
        cal, te = perm[:calibration], perm[calibration:]
        ch = risk_threshold(s[:, cal], p[:, cal], y[cal], costs, alpha, 1 - confidence, exit_when=pol.exit_when,
                            kind=kind, thresholds=cand)
        if ch.threshold is None:
            ex = torch.full((len(te),), E - 1)
        else:
            ex = exit_indices(s[:, te], torch.tensor([ch.threshold], dtype=torch.float64), pol.exit_when)[0]
        hit = (p[ex, te] == y[te]).double().mean().item()
        drops.append((p[-1, te] == y[te]).double().mean().item() - hit)
        saved.append(1 - costs[ex].mean().item() / costs[-1].item())
    d, sv = torch.tensor(drops), torch.tensor(saved)
    return {"within": int((d <= alpha).sum()), "splits": splits, "median_drop": d.median().item(),
            "max_drop": d.max().item(), "median_saved": sv.median().item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--risk", type=float, default=0.01)
    ap.add_argument("--confidence", type=float, default=0.9)
    ap.add_argument("--splits", type=int, default=200)
    ap.add_argument("--calibration", type=int, default=6000)
    ap.add_argument("--policies", default="confidence,entropy,patience")
    args = ap.parse_args()
    torch.set_num_threads(1)
    run = RunDir(args.run_dir)
    for name in args.policies.split(","):
        r = coverage(run, name, args.risk, args.confidence, args.splits, args.calibration)
        print(f"{name:<11} drop <= {args.risk:g} in {r['within']}/{r['splits']} splits; drop median "
              f"{r['median_drop']:+.4f}, max {r['max_drop']:+.4f}; FLOPs saved vs the final exit, median "
              f"{r['median_saved']:.1%}")


if __name__ == "__main__":
    main()
