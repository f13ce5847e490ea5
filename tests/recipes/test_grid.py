"""A regime grid shares one phase-1 run between disjoint and mixed, and reuses finished runs."""

import json

import torch

from exitlab.recipes.grid import plan_grid, run_grid
from exitlab.runs import checkpoint as ckpt
from exitlab.runs.files import read_jsonl


def test_disjoint_and_mixed_share_one_phase1(tiny_cfg, tmp_path):
    cfg = tiny_cfg(budget=2)
    jobs = plan_grid(cfg, ["joint", "disjoint", "mixed"], [0], tmp_path)
    assert [(j.name, j.after) for j in jobs] == [
        ("seed0/joint", None), ("seed0/phase1", None), ("seed0/disjoint", "seed0/phase1"),
        ("seed0/mixed", "seed0/phase1")]
    events = []
    run_grid(jobs, workers=2, on_event=events.append)
    seed = tmp_path / "seed0"
    # phase 1 was trained exactly once, in the shared run
    assert [r["phase"] for r in read_jsonl(seed / "phase1" / "metrics.jsonl")] == [1]
    assert [r["phase"] for r in read_jsonl(seed / "disjoint" / "metrics.jsonl")] == [3]
    assert [r["phase"] for r in read_jsonl(seed / "mixed" / "metrics.jsonl")] == [2]
    assert [r["phase"] for r in read_jsonl(seed / "joint" / "metrics.jsonl")] == [2, 2]
    shared = str((seed / "phase1" / "checkpoints" / "00-phase1-end.safetensors").resolve())
    for regime in ("disjoint", "mixed"):
        assert json.loads((seed / regime / "run.json").read_text())["phase1_from"] == shared
    # disjoint's backbone is exactly the shared phase-1 backbone (phase 3 freezes it)
    p1, _ = ckpt.load_tensors(shared)
    dis, _ = ckpt.load_tensors(seed / "disjoint" / "model.safetensors")
    bb = [k for k in dis if k.startswith("backbone.")]
    assert bb and all(torch.equal(dis[k], p1["model." + k]) for k in bb)
    # a second call reuses everything and trains nothing
    before = {p: p.stat().st_mtime_ns for p in seed.rglob("model.safetensors")}
    events.clear()
    run_grid(plan_grid(cfg, ["joint", "disjoint", "mixed"], [0], tmp_path), workers=2, on_event=events.append)
    assert sum("already finished" in e for e in events) == 4
    assert {p: p.stat().st_mtime_ns for p in seed.rglob("model.safetensors")} == before


def test_a_finished_run_with_another_config_is_never_reused(tiny_cfg, tmp_path):
    import pytest

    from exitlab.errors import ExitlabError

    jobs = plan_grid(tiny_cfg(budget=2), ["joint"], [0], tmp_path)
    (tmp_path / "seed0" / "joint").mkdir(parents=True)
    (tmp_path / "seed0" / "joint" / "run.json").write_text(json.dumps({"status": "done", "run_signature": "other"}))
    with pytest.raises(ExitlabError, match="holds a finished run with a different config"):
        run_grid(jobs, workers=1)
