"""Run directories, checkpoints and exports written before the package move (commit fc4cd45~1) still load with
this code: to the logits recorded when they were made, the same evaluation, an exact resume, and the same ONNX
routing. The fixture and how it was made: tests/runs/fixtures/pre_move/ (make.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import exitlab
from exitlab.deploy.export import OnnxModel
from exitlab.errors import ExitlabError
from exitlab.evaluation.policies import make_policy
from exitlab.models import BuiltinSpec, HFSpec, ModuleSpec, spec_from_json
from exitlab.runs.rundir import RunDir
from tests.conftest import interrupt_after

FIXTURE = Path(__file__).parent / "fixtures" / "pre_move"
EXPECTED = load_file(str(FIXTURE / "expected.safetensors"))
IMAGE_RUNS = ("builtin", "factory")


def _copy(name: str, tmp_path: Path) -> Path:
    """A writable copy: loading and evaluating may write caches, and the fixture stays as it was made."""
    return Path(shutil.copytree(FIXTURE / name, tmp_path / name))


def _recorded(name: str) -> list[torch.Tensor]:
    return [EXPECTED[f"{name}.exit{j}"] for j in range(3)]


def _logits(model, x) -> list[torch.Tensor]:
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("name", IMAGE_RUNS)
def test_an_old_run_directory_loads_to_the_logits_recorded_when_it_was_made(name, tmp_path):
    run = _copy(name, tmp_path)
    x = EXPECTED["image_input"]
    for model in (exitlab.load(run), RunDir(run).model()):
        got = _logits(model, x)
        assert len(got) == 3 and all(torch.equal(a, b) for a, b in zip(got, _recorded(name)))
    assert RunDir(run).status()["status"] == "done" and RunDir(run).config().model.exits


def test_an_old_text_run_loads_to_the_logits_recorded_when_it_was_made(tmp_path):
    pytest.importorskip("transformers")
    model = exitlab.load(_copy("text", tmp_path))
    assert isinstance(model.spec, HFSpec) and model.spec.exits == (0, 1)
    got = _logits(model, {"input_ids": EXPECTED["text_input_ids"], "attention_mask": EXPECTED["text_attention_mask"]})
    assert all(torch.equal(a, b) for a, b in zip(got, _recorded("text")))


@pytest.mark.parametrize("name, kind", [("builtin", BuiltinSpec), ("factory", ModuleSpec), ("text", HFSpec)])
def test_old_model_descriptions_read_as_typed_specs_and_are_written_back_unchanged(name, kind):
    """The new code writes the same model.json spec as the old code: old versions can read new files."""
    raw = json.loads((FIXTURE / name / "model.json").read_text())["spec"]
    spec = spec_from_json(raw)
    assert type(spec) is kind
    assert spec.to_json() == {**raw, **({"source": raw.get("factory")} if kind is ModuleSpec else {})}
    assert spec_from_json(spec.to_json()) == spec


def test_an_old_run_evaluates_as_it_did_then(tmp_path):
    """Cached logits were dropped from the fixture: they are recomputed from the model and the rebuilt data."""
    run = _copy("builtin", tmp_path)
    old = json.loads((FIXTURE / "builtin" / "eval.json").read_text())
    new = exitlab.evaluate_run(run, n_thresholds=5, write=False)
    # every number the old eval wrote is the same now (newer evaluations add fields, e.g. AUROC/AURC per exit)
    assert [{k: e[k] for k in o} for e, o in zip(new["exits"], old["exits"])] == old["exits"]
    assert len(new["exits"]) == len(old["exits"]) and new["final_accuracy"] == old["final_accuracy"]
    assert new["budget_table"] == old["budget_table"] and new["auc"] == old["auc"]
    assert new["model_sha256"] == old["model_sha256"]


def test_an_old_finished_run_is_refused_without_resume_and_left_alone_with_it(tmp_path):
    run = _copy("builtin", tmp_path)
    cfg = RunDir(run).config()
    with pytest.raises(ExitlabError, match="already holds a run; pass --resume"):
        exitlab.train(cfg, run)
    before = (run / "model.safetensors").read_bytes()
    exitlab.train(cfg, run, resume=True)
    assert (run / "model.safetensors").read_bytes() == before


def test_an_old_interrupted_run_resumes_from_its_checkpoint_to_the_same_model(tmp_path):
    """Interrupted inside phase 1 (after its first epoch), resumed by this code: the weights end where the old
    code's uninterrupted run ended."""
    run = _copy("builtin", tmp_path)
    interrupt_after(run, "00-phase1-e001.safetensors")
    exitlab.train(RunDir(run).config(), run, resume=True)
    got = _logits(exitlab.load(run), EXPECTED["image_input"])
    assert all(torch.equal(a, b) for a, b in zip(got, _recorded("builtin")))


def test_an_old_onnx_export_routes_in_onnxruntime_to_the_recorded_logits(tmp_path):
    pytest.importorskip("onnxruntime")
    t = 0.2  # the recorded logits of this barely trained model straddle it: some samples leave early, some not
    onnx = OnnxModel(_copy("builtin_onnx", tmp_path), policy=make_policy("confidence", threshold=t))
    x = EXPECTED["image_input"].numpy()
    recorded = _recorded("builtin")
    got = onnx.all_exits(x)
    assert len(got) == 3 and all(torch.allclose(torch.from_numpy(a), b, atol=1e-4) for a, b in zip(got, recorded))
    confident = torch.stack([z.softmax(-1).max(-1).values >= t for z in recorded[:-1]] + [torch.ones(4, dtype=bool)])
    want = confident.int().argmax(0)  # the first exit whose confidence reaches t
    assert onnx.predict(x).exit.tolist() == want.tolist()
