"""`exitlab export RUN_DIR --format onnx` on a real (tiny) training run: metadata carried over, same decisions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import exitlab
from exitlab.cli import main
from exitlab.deploy.export import OnnxModel, read_manifest
from exitlab.evaluation.inference import early_exit
from exitlab.evaluation.policies import make_policy
from exitlab.models.costs import exit_costs
from exitlab.runs.config import load_config
from exitlab.training.engine import prepare_data, train

pytest.importorskip("onnxruntime")  # the CI installs the [export] extra; this only guards bare installs


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One epoch of joint training of a 2-exit ResNet-8 on synthetic 3x16x16 data (a few seconds)."""
    cfg = load_config(None, ["data.name=synthetic", "data.synthetic={size: 16, n_train: 300}", "model.backbone=resnet8",
                             "model.exits=[1]", "regime=joint", "phase2.epochs=1", "device=cpu", "threads=1"])
    out = tmp_path_factory.mktemp("run")
    train(cfg, out)
    return out, prepare_data(cfg, torch.device("cpu"))


def _test_inputs(data) -> torch.Tensor:
    return torch.cat([x for x, _ in data.test])  # normalised exactly as in training


def test_export_cli_staged_matches_pytorch(run, tmp_path, capsys):
    run_dir, data = run
    model = exitlab.load(run_dir).eval()
    x = _test_inputs(data)
    with torch.no_grad():
        logits = torch.stack(model(x))  # [E, N, C]
    scores, _ = make_policy("entropy").scores(logits)
    s0 = scores[0].sort().values  # entropy exits below the threshold: about half leave at exit 0
    t = float(s0[len(s0) // 2: len(s0) // 2 + 2].mean())  # halfway between two scores: no float-noise ties
    out = tmp_path / "onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(out), "--policy", "entropy",
                 "--threshold", str(t)]) == 0
    assert "manifest.json" in capsys.readouterr().out
    man = read_manifest(out)
    assert man.layout == "staged" and man.num_exits == 2
    assert man.classes == data.classes
    assert np.allclose(man.normalize["mean"], data.train.mean.flatten().tolist())
    assert np.allclose(man.normalize["std"], data.train.std.flatten().tolist())
    assert man.policy == {"name": "entropy", "threshold": t}
    assert man.exit_flops == exit_costs(model).flops.long().tolist()
    res = OnnxModel(out).predict(x.numpy())  # the manifest's policy
    want = early_exit(model, x, make_policy("entropy", threshold=t))
    assert np.array_equal(res.exit, want.exits.numpy()) and np.array_equal(res.pred, want.preds.numpy())
    assert np.abs(res.logits - want.logits.numpy()).max() < 1e-4
    assert len(set(res.exit.tolist())) >= 2
    raw = json.loads((out / "manifest.json").read_text())  # readable without exitlab: plain JSON fields
    assert [g["file"] for g in raw["graphs"]] == ["stage_0.onnx", "stage_1.onnx"]
    assert all(isinstance(f, int) for f in raw["exit_flops"]) and raw["policy"]["name"] == "entropy"


@pytest.mark.slow  # another export; the all-exits layout is also covered by tests/deploy/test_serve.py
def test_policy_saved_with_the_model_is_exported(run, tmp_path):
    run_dir, _ = run
    model = exitlab.load(run_dir)
    folder = tmp_path / "pretrained"
    exitlab.save_pretrained(model, folder, classes=model.info["classes"], policy=make_policy("patience", threshold=2),
                          normalize={"mean": [0.1, 0.2, 0.3], "std": [0.5, 0.5, 0.5]})
    out = exitlab.deploy.export.export_run(folder, tmp_path / "o", layout="all")
    man = read_manifest(out)
    assert man.layout == "all" and len(man.graphs) == 1 and man.graphs[0].outputs == ["logits_0", "logits_1"]
    assert man.policy == {"name": "patience", "threshold": 2} and man.normalize["mean"] == [0.1, 0.2, 0.3]


@pytest.mark.parametrize("argv, message", [
    (["export", "{missing}"], "holds no model"),
    (["export", "{run}", "--policy", "confidence"], "needs --threshold"),
    (["export", "{run}", "--threshold", "0.5"], "--threshold needs --policy"),
    (["export", "{run}", "--policy", "confidence", "--threshold", "1.5"], "outside its range"),
    (["export", "{run}", "--opset", "13"], "error: --opset 13 is not supported: the exporter writes ONNX opsets 18.."),
])
def test_export_cli_errors(run, tmp_path, capsys, argv, message):
    argv = [a.format(missing=tmp_path / "nope", run=run[0]) for a in argv]
    assert main(argv + ["--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "manifest.json").exists()



@pytest.mark.parametrize("make, message", [
    (lambda out: out.write_text("not a folder"), "is a file, not a folder"),
    (lambda out: out.mkdir() or (out / "keep.txt").write_text("mine"), "holds files that are not an exitlab export"),
])
def test_export_cli_refuses_an_out_it_would_damage(run, tmp_path, capsys, make, message):
    out = tmp_path / "o"
    make(out)
    before = {p: p.read_bytes() for p in [out, *out.rglob("*")] if p.is_file()}
    assert main(["export", str(run[0]), "--out", str(out)]) == 2
    assert f"error: export folder {out} {message}" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in [out, *out.rglob("*")] if p.is_file()} == before
