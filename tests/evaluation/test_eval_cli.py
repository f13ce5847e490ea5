"""`exitlab eval` and `exitlab bench` from the command line: output files, printed tables, bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from exitlab.cli import main
from tests.conftest import tiny_overrides


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from exitlab.runs.config import load_config
    from exitlab.training.engine import train

    out = tmp_path_factory.mktemp("cli") / "run"
    train(load_config(None, tiny_overrides(regime="joint")), out)
    return out


def test_eval_writes_eval_json_and_prints_the_budget_table(run_dir, capsys):
    assert main(["eval", str(run_dir), "--policy", "patience", "--split", "val"]) == 0
    out = capsys.readouterr().out
    res = json.loads((run_dir / "eval.json").read_text())
    assert res["policy"] == "patience" and res["split"] == "val"
    assert res["budget_table"] == res["policies"]["patience"]["budget_table"]
    assert "25%" in out and "100%" in out and "AUC" in out and f"{res['auc']:.4f}" in out
    for e in res["exits"]:
        assert set(e) >= {"exit", "block", "flops", "macs", "params", "fraction", "accuracy", "ece", "auroc", "aurc"}
        assert f"{e['accuracy']:.2%}" in out
        auroc = "n/a" if e["auroc"] is None else f"{e['auroc']:.3f}"
        assert f"{e['ece']:>6.3f} {auroc:>6} {e['aurc']:>6.3f}" in out  # beside ECE in the exit table
    assert "ECE" in out and "AUROC" in out and "AURC" in out
    failure = res["policies"]["patience"]["failure"]  # every policy's own score, per exit
    assert len(failure) == len(res["exits"]) and "failure prediction by each policy's score on val" in out
    assert "  patience    " + "  ".join(
        f"{'n/a' if f['auroc'] is None else format(f['auroc'], '.3f')}/{f['aurc']:.3f}" for f in failure) in out
    assert res["costs"]["convention"].startswith("FLOPs = 2 x MACs")


def test_eval_with_explicit_thresholds(run_dir):
    assert main(["eval", str(run_dir), "--thresholds", "0.2,0.5,0.9"]) == 0
    assert json.loads((run_dir / "eval.json").read_text())["policies"]["confidence"]["thresholds"] == [0.2, 0.5, 0.9]


@pytest.mark.parametrize("argv,message", [
    (["--policy", "nope"], "unknown policy 'nope'"),
    (["--thresholds", "0.5,1.5"], "outside its range"),
    (["--policy", "entropy", "--thresholds", "-1"], "outside its range"),
    (["--thresholds", "a,b"], "comma-separated numbers"),
    (["--split", "dev"], "unknown split"),
])
def test_eval_bad_input_exits_non_zero_with_a_clear_message(run_dir, capsys, argv, message):
    assert main(["eval", str(run_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_eval_of_a_directory_without_a_model_or_with_an_empty_split(run_dir, tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "holds no trained model" in capsys.readouterr().err
    empty = tmp_path / "empty"
    shutil.copytree(run_dir, empty)
    cfg = yaml.safe_load((empty / "config.yaml").read_text())
    cfg["data"]["synthetic"]["n_test"] = 0
    (empty / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["eval", str(empty)]) == 2
    assert "test split is empty" in capsys.readouterr().err


def test_bench_smoke_prints_three_speedups_and_writes_bench_json(run_dir, capsys):
    argv = ["bench", str(run_dir), "--batch", "32", "--samples", "3", "--repeats", "2", "--warmup", "0",
            "--threshold", "0.3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "FLOPs-predicted" in out and "segment-time ideal" in out and "measured" in out
    res = json.loads((run_dir / "bench.json").read_text())
    b = res["batched"]
    assert b["batch"] == 32 and sum(b["exit_shares"]) == pytest.approx(1.0)
    assert b["logits_max_abs_diff"] < 1e-4  # early-exit logits equal the all-exits run's
    assert b["reach"][0] == 1.0 and all(x >= y for x, y in zip(b["reach"], b["reach"][1:]))
    assert res["batch1"]["bare_backbone"]["n"] == 3


def test_bench_bad_input(run_dir, capsys):
    assert main(["bench", str(run_dir), "--policy", "confidence", "--threshold", "2"]) == 2
    assert "outside its range" in capsys.readouterr().err
    assert main(["bench", str(run_dir), "--batch", "0"]) == 2
    assert "argument --batch: must be >= 1, got 0" in capsys.readouterr().err


def test_eval_risk_control_extras_and_ood(run_dir, capsys):
    """--risk chooses every policy's threshold on val; the reported test numbers are recomputed here from the
    cached test logits at that threshold."""
    import torch

    from exitlab.evaluation.policies import make_policy
    from exitlab.evaluation.sweep import exit_indices
    from exitlab.runs.rundir import RunDir

    argv = ["eval", str(run_dir), "--risk", "0.05", "--confidence", "0.9", "--ood", "noise"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    res = json.loads((run_dir / "eval.json").read_text())
    assert "risk control (gap risk <= 0.05 with confidence 0.9" in out and "OOD detection (noise" in out
    logits, labels = RunDir(run_dir).logits("test")
    flops = torch.tensor([e["flops"] for e in res["exits"]], dtype=torch.float64)
    for name in ("confidence", "entropy", "patience"):
        r = res["risk_control"][name]
        assert r["alpha"] == 0.05 and r["calibration_samples"] == len(RunDir(run_dir).logits("val")[1])
        if not r["certified"]:
            assert f"{name:<11} no threshold meets the bound on val: the final exit for everyone" in out
            continue
        scores, preds = make_policy(name).scores(logits)
        ex = exit_indices(scores, torch.tensor([r["threshold"]], dtype=torch.float64),
                          make_policy(name).exit_when)[0]
        acc = (preds[ex, torch.arange(len(labels))] == labels).double().mean().item()
        assert r["test"]["accuracy"] == pytest.approx(acc)
        assert r["test"]["drop"] == pytest.approx(res["final_accuracy"] - acc)
        assert r["test"]["saved"] == pytest.approx(1 - flops[ex].mean().item() / flops[-1].item())
        assert r["val"]["risk"] <= 0.05
    ex = res["extras"]
    assert len(ex["overthinking"]["per_exit"]) == len(res["exits"]) - 1 and ex["top5"] is None  # 7 classes
    assert sum(c["samples"] for c in ex["per_class"]["classes"]) == res["samples"]
    assert [e["exit"] for e in res["ood"]["per_exit"]] == list(range(len(res["exits"])))
    assert all(0 <= e["auroc_msp"] <= 1 for e in res["ood"]["per_exit"])
    assert f"best max-softmax AUROC {max(res['ood']['curve']['auroc_msp']):.4f}" in out


def test_eval_ood_from_another_data_set_and_its_errors(run_dir, capsys):
    other = ["--ood", "data.synthetic={size: 16, n_train: 70, n_test: 35, seed: 9}"]
    assert main(["eval", str(run_dir), *other]) == 0
    res = json.loads((run_dir / "eval.json").read_text())
    assert res["ood"]["ood_samples"] == 35 and res["ood"]["id_samples"] == res["samples"]
    assert main(["eval", str(run_dir), "--ood", "data.synthetic={size: 8}"]) == 2
    assert "its images are (3, 8, 8) but the model takes (3, 16, 16)" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--risk", "1.5"], "risk level must be in (0, 1)"),
    (["--risk", "0.01", "--confidence", "1"], "confidence must be in (0, 1)"),
    (["--risk", "0.01", "--risk-kind", "drop"], "only --risk-bound hoeffding is valid"),
    (["--class-budget", "0"], "--class-budget must be > 0"),
    (["--ood", "mnist"], "expected 'noise' or data.KEY=VALUE"),
    (["--ood", "data.nope=1"], "data.nope: unknown key"),
])
def test_eval_extras_bad_input(run_dir, capsys, argv, message):
    assert main(["eval", str(run_dir), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
