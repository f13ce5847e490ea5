"""Regression on a text encoder (STS-B style): one output per exit, the mean squared error of every exit as the
loss, PABEE's regression exit rule as a policy (real early exit makes the simulation's decisions), and clear
errors when a task meets the other task's policy or labels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

import exitlab  # noqa: E402
from exitlab.data import from_token_tensors  # noqa: E402
from exitlab.data.text import strata  # noqa: E402
from exitlab.errors import ConfigError  # noqa: E402
from exitlab.evaluation.inference import early_exit  # noqa: E402
from exitlab.evaluation.policies import make_policy  # noqa: E402
from exitlab.evaluation.sweep import exit_indices  # noqa: E402
from exitlab.models.hf import pack  # noqa: E402
from exitlab.runs.config import RunConfig  # noqa: E402
from exitlab.runs.files import read_jsonl  # noqa: E402
from exitlab.runs.typed import from_dict  # noqa: E402
from exitlab.training.objective import exit_losses  # noqa: E402
from tests.models.test_hf import batch, tiny  # noqa: E402


def _regressor():
    return exitlab.from_hf(tiny("bert", num_labels=1), exits=[0, 1, 2], task="regression", head="mean")


def test_a_regression_model_has_one_output_per_exit_and_its_final_exit_is_the_hf_forward():
    hf = tiny("bert", num_labels=1)
    model = exitlab.from_hf(hf, exits=[0, 1, 2], task="regression").eval()
    ids, mask = batch()
    with torch.no_grad():
        outs = model(pack(ids, mask))
        assert all(o.shape == (5, 1) for o in outs)
        assert torch.allclose(outs[-1], hf(input_ids=ids, attention_mask=mask).logits, atol=1e-5)
    assert model.spec.task == "regression"


def test_the_loss_of_every_exit_is_its_mean_squared_error():
    outs = [torch.randn(6, 1) for _ in range(3)]
    y = torch.randn(6)
    want = torch.stack([F.mse_loss(o[:, 0], y) for o in outs])
    assert torch.allclose(exit_losses(outs, y), want)
    with pytest.raises(ConfigError, match="regression targets, but the model has 7 outputs"):
        exit_losses([torch.randn(6, 7)], y)


def test_a_regression_run_trains_every_exit_and_reports_negative_mse(tmp_path):
    ids, mask = batch(64, width=12, seed=1)
    y = mask.sum(1).float() / 12  # the target: the text's length, which every layer can see
    tids, tmask = batch(16, width=12, seed=2)
    src = from_token_tensors(ids, y, tids, tmask.sum(1).float() / 12, train_mask=mask, test_mask=tmask,
                             task="regression")
    assert src.classes == ["value"] and src.train_y.dtype == torch.float32
    base = from_dict(RunConfig, {"data": {"batch_size": 16, "eval_batch_size": 32}, "progress": False})
    opt = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.0}
    out = exitlab.train(_regressor(), tmp_path / "r", data=src, regime="joint", config=base, budget=3, phase2=opt)
    recs = read_jsonl(out / "metrics.jsonl")
    assert len(recs) == 3 and all(len(r["val_acc"]) == 4 and max(r["val_acc"]) <= 0 for r in recs)
    assert sum(recs[-1]["train_exit_losses"]) < sum(recs[0]["train_exit_losses"])  # the MSE went down
    bins = strata(src.train_y)
    assert bins.dtype == torch.long and len(bins.unique()) == 5  # the split is stratified on quantile bins


@pytest.mark.parametrize("tolerance", [0.05, 0.3])
def test_regression_patience_real_early_exit_makes_the_simulated_decisions(tolerance):
    model = _regressor().eval()
    with torch.no_grad():  # spread the heads' outputs so that runs of close predictions vary across samples
        for h in model.heads:
            h.fc.weight.mul_(20)
    x = pack(*batch(16, width=14, seed=4))
    pol = make_policy("regression_patience", tolerance=tolerance)
    with torch.no_grad():
        logits = torch.stack(model(x))  # [E, N, 1]
    scores, preds = pol.scores(logits)
    assert preds.dtype == torch.float32 and torch.equal(preds, logits[..., 0])
    spread = set()
    for t in (1, 2, 3, 4):
        want = exit_indices(scores, torch.tensor([float(t)]), pol.exit_when)[0]
        spread.update(want.tolist())
        for size in (1, 4, 16):
            parts = [early_exit(model, x[i:i + size], pol, t) for i in range(0, 16, size)]
            assert torch.equal(torch.cat([r.exits for r in parts]), want), (tolerance, t, size)
            got = torch.cat([r.preds for r in parts])
            assert got.dtype == torch.float32 and torch.allclose(got, preds[want, torch.arange(16)], atol=1e-5)
    assert len(spread) > 1


def test_a_policy_of_the_other_task_is_refused():
    x = pack(*batch(3))
    with pytest.raises(ConfigError, match="'regression_patience' is a regression policy but this is a 7-class"):
        early_exit(exitlab.from_hf(tiny("bert"), exits=[0]), x, make_policy("regression_patience"), 2)
    with pytest.raises(ConfigError, match="'confidence' is a classification policy but this is a regression"):
        early_exit(_regressor(), x, make_policy("confidence"), 0.5)
    with pytest.raises(ConfigError, match="tolerance must be a number > 0"):
        make_policy("regression_patience", tolerance=0)
    with pytest.raises(ConfigError, match="regression model has one output"):
        exitlab.from_hf(tiny("bert"), task="regression", num_labels=3)


@pytest.mark.parametrize("option", ["distill", "label_smoothing"])
def test_distillation_and_label_smoothing_are_refused_on_regression(tmp_path, option):
    ids, mask = batch(32, width=8, seed=1)
    src = from_token_tensors(ids, mask.sum(1).float(), ids[:8], mask[:8].sum(1).float(), train_mask=mask,
                             test_mask=mask[:8], task="regression")
    with pytest.raises(ConfigError, match=f"phase2.{option}: a regression model has one output"):
        exitlab.train(_regressor(), tmp_path / "r", data=src, regime="joint", budget=1, phase2={option: 0.1})
    assert not (tmp_path / "r").exists()


def _regression_config(root) -> dict:
    """A regression text config on files under ``root``: the target is each text's length / 4, which every layer
    can see."""
    import csv

    from tests.data.test_text_files import _rows

    for name, n, seed in (("train.csv", 96, 0), ("test.csv", 24, 1)):
        with open(root / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "score"])
            for r in _rows(n, seed=seed):
                w.writerow([r["text"], len(r["text"].split()) / 4])
    return {"model": {"backbone": "hf:bert", "exits": [0, 1], "head": "text", "head_kwargs": {"pool": "mean"},
                      "backbone_kwargs": {"hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 2,
                                          "intermediate_size": 32, "max_position_embeddings": 32}},
            "data": {"name": "text", "root": str(root), "batch_size": 16, "eval_batch_size": 32,
                     "text": {"train": "train.csv", "test": "test.csv", "label": "score", "task": "regression",
                              "vocab_size": 60, "max_length": 24}},
            "regime": "joint", "budget": 2, "phase1": {"optimizer": "adamw", "lr": 3e-3},
            "phase2": {"optimizer": "adamw", "lr": 3e-3}, "phase3": {"optimizer": "adamw", "lr": 3e-3},
            "progress": False}


def test_exitlab_eval_on_a_regression_run_reports_mse_and_matches_real_early_exit(tmp_path, capsys):
    from exitlab.cli import main
    from exitlab.evaluation.evaluate import evaluate_run
    from exitlab.evaluation.sweep import simulate
    from exitlab.models.costs import length_costs
    from exitlab.runs.rundir import RunDir

    out = exitlab.train(from_dict(RunConfig, _regression_config(tmp_path)), tmp_path / "run")
    result = evaluate_run(out)
    assert result["task"] == "regression" and result["policy"] == "regression_patience"
    assert set(result["policies"]) == {"regression_patience"} and result["auc"] is None
    run = RunDir(out)
    logits, labels = run.logits("test")
    mse = ((logits[..., 0].double() - labels.double()) ** 2).mean(1)
    assert [e["accuracy"] for e in result["exits"]] == pytest.approx((-mse).tolist(), rel=1e-12)
    # the simulated score at a threshold is minus the MSE of what real early exit predicts there
    pol = make_policy("regression_patience", tolerance=0.1)
    scores, preds = pol.scores(logits)
    model, x = run.model(), run.data().test.x
    costs = length_costs(model, run.lengths("test"))
    for t in (1, 2, 3):
        sw = simulate(scores, preds, labels, costs, torch.tensor([float(t)]), pol.exit_when)
        with torch.no_grad():
            res = early_exit(model, x, pol, t, costs=costs)
        got = -((res.preds.double() - labels.double()) ** 2).mean()
        assert float(sw.accuracy[0]) == pytest.approx(float(got), rel=1e-9, abs=1e-12)
        assert float(sw.cost[0]) == pytest.approx(float(res.flops.double().mean()), rel=1e-9)
    assert main(["eval", str(out), "--policy", "confidence"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: policy 'confidence' is a classification policy but {out} is a regression run; use "
                   "regression_patience"]
    assert main(["eval", str(out)]) == 0
    assert "MSE" in capsys.readouterr().out


def test_compare_and_the_analyses_on_regression_runs(tmp_path, capsys):
    import json

    import yaml

    from exitlab.cli import main
    from exitlab.evaluation.evaluate import evaluate_run

    base = _regression_config(tmp_path)
    base.pop("regime")
    (tmp_path / "cmp.yaml").write_text(yaml.safe_dump({"base": base, "seeds": [0], "workers": 1, "threads": 1}))
    assert main(["compare", str(tmp_path / "cmp.yaml"), "--out", str(tmp_path / "cmp")]) == 0
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert summary["task"] == "regression" and summary["policy"] == "regression_patience"
    table = (tmp_path / "cmp" / "tables" / "exits.md").read_text()
    joint = evaluate_run(tmp_path / "cmp" / "seed0" / "joint", write=False)
    row = next(line for line in table.splitlines() if line.startswith("| joint"))
    assert f"{-joint['exits'][-1]['accuracy']:.4f} ± 0.0000" in row  # the final exit's MSE, not a percentage
    assert "MSE@25%" in (tmp_path / "cmp" / "tables" / "paper.md").read_text()
    assert main(["report", str(tmp_path / "cmp")]) == 0
    assert "test MSE (regression)" in (tmp_path / "cmp" / "report.html").read_text()
    run = str(tmp_path / "cmp" / "seed0" / "mixed")
    for kind in ("rank", "gradients", "landscape"):
        assert main(["analyze", kind, run, "--samples", "20", "--out", str(tmp_path / kind)]) == 0, kind
    capsys.readouterr()
    assert main(["analyze", "mi", run, "--samples", "20", "--out", str(tmp_path / "mi")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: analyze mi estimates I(Z;Y) over classes; a regression run has none (its target is a number); use "
        "rank, gradients, landscape or connectivity")
