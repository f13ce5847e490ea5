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
    from exitlab.config import load_config
    from exitlab.train import train

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
        assert set(e) >= {"exit", "block", "flops", "macs", "params", "fraction", "accuracy", "ece"}
        assert f"{e['accuracy']:.2%}" in out
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
