"""Phases do what the paper defines, regimes run the right phase sequences, and resume is exact."""

import json

import pytest
import torch

from exitlab.errors import ExitlabError, TrainingError
from exitlab.recipes.train import train
from exitlab.runs import checkpoint as ckpt
from exitlab.runs.files import read_jsonl
from exitlab.training.engine import _Run
from exitlab.training.loop import PhaseState, set_modes, set_trainable, train_epoch
from exitlab.training.phases import plan_phases
from exitlab.training.planning import preflight
from tests.conftest import interrupt_after


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _run_one_phase(cfg, tmp_path, kind):
    run = _Run(cfg, tmp_path, preflight(cfg))
    (phase,) = [p for p in plan_phases(cfg) if p.kind == kind]
    from exitlab.training.loop import make_optimizer
    from exitlab.training.objective import phase_module

    params = set_trainable(run.model, phase)
    opt = make_optimizer(params, phase)
    set_modes(run.model, phase)
    before_bb, before_heads = _snapshot(run.model.backbone), _snapshot(run.model.heads)
    train_epoch(PhaseState(phase_module(run.model, phase), phase, run.data.train, opt, total_steps=100))
    return run.model, before_bb, before_heads


def _changed(before, after):
    return [k for k in before if not torch.equal(before[k], after[k])]


def test_phase3_leaves_every_backbone_tensor_bit_identical(tiny_cfg, tmp_path):
    model, bb, heads = _run_one_phase(tiny_cfg(regime="disjoint"), tmp_path, 3)
    assert _changed(bb, _snapshot(model.backbone)) == []  # weights and BN running stats, num_batches_tracked
    assert any("running_mean" in k for k in bb)
    assert len(_changed(heads, _snapshot(model.heads))) == len(heads)


def test_phase1_leaves_the_ics_untouched(tiny_cfg, tmp_path):
    model, bb, heads = _run_one_phase(tiny_cfg(regime="mixed"), tmp_path, 1)
    assert _changed(heads, _snapshot(model.heads)) == []
    changed = _changed(bb, _snapshot(model.backbone))
    assert any("running_mean" in k for k in changed) and any(k.endswith("weight") for k in changed)


def test_phase2_changes_backbone_and_ics(tiny_cfg, tmp_path):
    model, bb, heads = _run_one_phase(tiny_cfg(regime="joint"), tmp_path, 2)
    assert len(_changed(heads, _snapshot(model.heads))) == len(heads)
    assert any(k.endswith("weight") for k in _changed(bb, _snapshot(model.backbone)))


@pytest.mark.parametrize("regime,kinds", [("joint", [2]), ("disjoint", [1, 3]), ("mixed", [1, 2]),
                                          ([1, 2, 3], [1, 2, 3])])
def test_regimes_run_their_phase_sequence(tiny_cfg, tmp_path, regime, kinds):
    cfg = tiny_cfg(regime=str(regime).replace("'", ""))
    out = train(cfg, tmp_path / "run")
    seen = [r["phase"] for r in read_jsonl(out / "metrics.jsonl")]
    assert seen == kinds  # one epoch each
    ends = sorted(p.name for p in (out / "checkpoints").glob("*-end.safetensors"))
    assert ends == [f"{i:02d}-phase{k}-end.safetensors" for i, k in enumerate(kinds)]
    assert json.loads((out / "run.json").read_text())["status"] == "done"


def test_budget_split_is_matched(tiny_cfg):
    for regime, expect in (("joint", [4]), ("disjoint", [2, 2]), ("mixed", [2, 2])):
        assert [p.epochs for p in plan_phases(tiny_cfg(regime=regime, budget=4))] == expect
    assert [p.epochs for p in plan_phases(tiny_cfg(regime="mixed", budget=5, phase1_share=0.6))] == [3, 2]


def test_resume_reproduces_the_uninterrupted_run_exactly(tiny_cfg, tmp_path):
    cfg = tiny_cfg(regime="[1, 2, 3]", **{"phase1.epochs": 2, "phase2.epochs": 2, "phase3.epochs": 1})
    full = train(cfg, tmp_path / "full")
    # An interrupted run: same config, but stop it after phase 2's first epoch by deleting what came later.
    part = train(cfg, tmp_path / "part")
    interrupt_after(part, "01-phase2-e001.safetensors")
    with open(part / "metrics.jsonl", "a") as f:
        f.write('{"garbage": "a line written after the checkpoint"}\n')
    train(cfg, part, resume=True)
    a, _ = ckpt.load_tensors(full / "model.safetensors")
    b, _ = ckpt.load_tensors(part / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(read_jsonl(full / "metrics.jsonl")) == strip(read_jsonl(part / "metrics.jsonl"))


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tiny_cfg, tmp_path):
    cfg = tiny_cfg(regime="mixed", **{"phase2.lr": 1e30, "phase2.epochs": 2})
    with pytest.raises(TrainingError, match=r"non-finite loss at phase2 .* epoch 1 step \d+ \(exit \d"):
        train(cfg, tmp_path / "run")
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == ["00-phase1-end.safetensors"]
    ckpt.load_tensors(tmp_path / "run" / "checkpoints" / kept[0])  # still valid


def test_a_second_run_into_the_same_directory_is_refused(tiny_cfg, tmp_path):
    train(tiny_cfg(regime="joint"), tmp_path / "run")
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(ExitlabError, match="already holds a run; pass --resume"):
        train(tiny_cfg(regime="joint", **{"phase2.lr": 0.5}), tmp_path / "run")
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tiny_cfg, tmp_path, caplog):
    cfg = tiny_cfg(regime="joint", **{"phase2.epochs": 3}, keep_checkpoints=3)
    out = train(cfg, tmp_path / "run")
    ends = out / "checkpoints" / "00-phase2-end.safetensors"
    data = bytearray(ends.read_bytes())
    data[-5] ^= 0xFF  # flip one bit of the weights
    ends.write_bytes(bytes(data))
    (out / "run.json").write_text(json.dumps({"status": "running"}))
    with caplog.at_level("WARNING"):
        train(cfg, out, resume=True)
    assert "fails its checksum" in caplog.text and "falling back" in caplog.text


def test_gradient_logging_is_opt_in_and_does_not_change_training(tiny_cfg, tmp_path):
    plain = train(tiny_cfg(regime="mixed"), tmp_path / "plain")
    logged = train(tiny_cfg(regime="mixed", grad_log_every=3), tmp_path / "logged")
    assert not (plain / "gradients.jsonl").exists()
    records = read_jsonl(logged / "gradients.jsonl")
    assert [r["step"] for r in records] == [3, 6, 3, 6] and [r["phase"] for r in records] == [1, 1, 2, 2]
    assert records[0]["weights"][-1] == 1.0 and sum(records[0]["weights"][:-1]) == 0  # phase 1: final exit only
    a, _ = ckpt.load_tensors(plain / "model.safetensors")
    b, _ = ckpt.load_tensors(logged / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
