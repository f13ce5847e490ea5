"""Training compute is measured, recorded per phase, and can be matched across regimes."""

import json

import pytest
import torch

from exitlab.recipes.grid import plan_grid, run_grid
from exitlab.recipes.train import train
from exitlab.runs.files import read_jsonl
from exitlab.training.engine import _Run
from exitlab.training.loop import step_flops
from exitlab.training.phases import Phase
from exitlab.training.planning import preflight


def _status(run):
    return json.loads((run / "run.json").read_text())


def test_recorded_training_flops_are_the_measured_step_flops_times_the_steps(tiny_cfg, tmp_path):
    cfg = tiny_cfg(regime="[1, 2, 3]", **{"phase1.epochs": 1, "phase2.epochs": 1, "phase3.epochs": 2})
    out = train(cfg, tmp_path / "run")
    compute = _status(out)["compute"]
    probe = _Run(cfg, tmp_path / "probe", preflight(cfg))
    b = cfg.data.batch_size
    x, y = torch.zeros(b, *probe.data.shape), torch.zeros(b, dtype=torch.long)
    per_step = {k: step_flops(probe.model, Phase(k, 1, getattr(cfg, f"phase{k}")), x, y) for k in (1, 2, 3)}
    steps_per_epoch = len(probe.data.train)
    for rec, k, epochs in zip(compute["phases"], (1, 2, 3), (1, 1, 2)):
        assert rec["phase"] == k and rec["steps"] == steps_per_epoch * epochs
        assert rec["samples"] == rec["steps"] * b  # full batches (drop_last)
        assert rec["train_flops"] == pytest.approx(per_step[k] * rec["steps"], rel=1e-9)
    assert per_step[3] < per_step[2] < 1.5 * per_step[1]  # heads only is cheaper than everything
    assert per_step[3] < 0.6 * per_step[2]
    assert compute["train_flops"] == pytest.approx(sum(r["train_flops"] for r in compute["phases"]))
    assert all(r["seconds"] > 0 for r in compute["phases"])
    epochs = [r for r in read_jsonl(out / "metrics.jsonl")]
    assert all(r["train_flops"] > 0 and r["samples"] > 0 for r in epochs)


def test_measuring_a_step_leaves_the_model_untouched(tiny_cfg, tmp_path):
    cfg = tiny_cfg(regime="joint")
    run = _Run(cfg, tmp_path / "probe", preflight(cfg))
    run.model.train()
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    flags = [p.requires_grad for p in run.model.parameters()]
    x = torch.randn(8, *run.data.shape)
    rng = torch.get_rng_state()
    step_flops(run.model, run.phases[0], x, torch.zeros(8, dtype=torch.long))
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    assert [p.requires_grad for p in run.model.parameters()] == flags
    assert all(p.grad is None for p in run.model.parameters()) and torch.equal(torch.get_rng_state(), rng)


def test_a_compute_matched_comparison_gives_every_regime_the_same_training_flops(tiny_cfg, tmp_path):
    base = tiny_cfg(**{"budget_flops": 3e10})
    jobs = plan_grid(base, ["joint", "disjoint", "mixed"], [0], tmp_path)
    run_grid(jobs, workers=1)
    totals, step = {}, {}
    for regime in ("joint", "disjoint", "mixed"):
        c = _status(tmp_path / "seed0" / regime)["compute"]
        assert c["budget"] == {"matched": "flops", "value": 3e10}
        totals[regime] = c["train_flops"]
        step[regime] = max(p["flops_per_sample"] for p in c["phases"]) * base.data.batch_size
    for regime, total in totals.items():
        assert 3e10 - step[regime] < total <= 3e10 + 1, (regime, total)  # within one step of the budget
    assert _status(tmp_path / "seed0" / "mixed")["compute"]["phases"][0]["shared_from"].endswith("phase1")
    # under an epoch budget, by contrast, disjoint's cheap phase 3 trains on less compute
    epochs = plan_grid(tiny_cfg(budget=2), ["joint", "disjoint"], [0], tmp_path / "epochs")
    run_grid(epochs, workers=1)
    joint, disjoint = (_status(tmp_path / "epochs" / "seed0" / r)["compute"]["train_flops"] for r in ("joint",
                                                                                                      "disjoint"))
    assert disjoint < 0.9 * joint
