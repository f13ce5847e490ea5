"""``exitlab demo``: joint, disjoint and mixed on Fashion-MNIST under one matched budget, side by side."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..errors import ExitlabError
from ..models.costs import exit_costs
from ..runs.config import RunConfig
from ..runs.files import check_out_dir
from ..runs.rundir import RunDir
from ..runs.typed import from_dict
from ..training.loop import evaluate
from ..training.phases import plan_phases
from .grid import plan_grid, run_grid

# A ResNet-20 (widths 8/16/32, three residual blocks per stage) with SDN heads after blocks 0, 2, 4 and 6: 5 exits,
# the first at 12% of the backbone's FLOPs. The network of the Fashion-MNIST comparison in docs/results.md.
DEMO = {
    "model": {"backbone": "resnet20", "backbone_kwargs": {"width": 8}, "exits": [0, 2, 4, 6], "head": "sdn"},
    "data": {"name": "fashion_mnist", "batch_size": 128, "crop_padding": 2, "flip": True},
    "phase1": {"lr": 0.05}, "phase2": {"lr": 0.05}, "phase3": {"lr": 0.05},
    "channels_last": True, "device": "cpu", "threads": 1, "progress": False,
}
REGIMES = ["joint", "disjoint", "mixed"]


def demo_config(budget: int) -> RunConfig:
    return from_dict(RunConfig, {**DEMO, "budget": budget})


def run_demo(out: Path, budget: int = 3, workers: int = 2, resume: bool = False, seed: int = 0,
             echo=print) -> int:
    """Train the three regimes (phase 1 shared by disjoint and mixed), then print per-exit test accuracy."""
    cfg = demo_config(budget)
    check_out_dir(out)
    if out.exists() and any(out.iterdir()) and not resume:
        raise ExitlabError(f"{out} is not empty; pass --resume to reuse its runs, or choose another --out")
    jobs = plan_grid(cfg, REGIMES, [seed], out)
    echo(f"exitlab demo (a short demo, far from convergence: docs/results.md has the full comparison): ResNet-20 "
         f"with 5 exits on Fashion-MNIST; joint, disjoint and mixed with a matched budget of "
         f"{budget} epochs each; {workers} parallel 1-thread processes; runs in {out}")
    for j in jobs:
        phases = plan_phases(j.cfg)[1:] if j.after else plan_phases(j.cfg)
        plan = " + ".join(f"phase {p.kind} x {p.epochs} epochs" for p in phases)
        echo(f"  {j.name}: " + (f"{j.after} + " if j.after else "") + plan)
    t0 = time.perf_counter()
    run_grid(jobs, workers=workers, threads=1, on_event=lambda s: echo(f"  {s}"))
    table, fractions = test_accuracy_table(out, seed)
    seconds = time.perf_counter() - t0
    (out / "demo.json").write_text(json.dumps({"budget": budget, "seconds": seconds, "test_acc": table,
                                               "flops_fraction": fractions}, indent=2))
    echo(format_table(table, fractions, budget, seconds))
    return 0


def test_accuracy_table(out: Path, seed: int) -> tuple[dict[str, list[float]], list[float]]:
    """Per-exit test accuracy of each regime's final model (the test split is touched only here), and each exit's
    measured cost as a fraction of the bare backbone's FLOPs."""
    torch.set_num_threads(2)
    table, data, fractions = {}, None, []
    for regime in REGIMES:
        run = RunDir(out / f"seed{seed}" / regime, data=data)
        data = run.data()  # one split for all three: the runs share data settings and seed
        model = run.model()
        table[regime], _ = evaluate(model, run.loader("test"))
        fractions = [c.fraction for c in exit_costs(model).exits]
    return table, fractions


def format_table(table: dict[str, list[float]], fractions: list[float], budget: int, seconds: float) -> str:
    n = len(next(iter(table.values())))
    lines = ["", f"Test accuracy per exit (%), Fashion-MNIST test set (10,000 images), {budget} epochs per regime "
             "(a short demo: see docs/results.md for 12 epochs and 3 seeds):",
             f"{'exit':<8}{'FLOPs':>8}" + "".join(f"{r:>10}" for r in table)]
    for k in range(n):
        name = "final" if k == n - 1 else f"IC {k}"
        lines.append(f"{name:<8}{fractions[k] * 100:>7.0f}%" + "".join(f"{table[r][k] * 100:>10.2f}" for r in table))
    lines.append("FLOPs: measured cost of leaving at that exit (backbone so far plus every IC on the way), as a share "
                 "of the bare backbone's FLOPs.")
    lines.append(f"wall time: {seconds / 60:.1f} min ({seconds:.0f} s)")
    return "\n".join(lines)
