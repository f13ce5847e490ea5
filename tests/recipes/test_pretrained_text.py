"""MiniLM (pretrained, installed with scripts/install-weights text) under the three regimes and the untouched-backbone
disjoint, a few steps each on a tiny subset of the Debian-descriptions task; each run reloads from its directory
and evaluates, and its table names the regime and the data's fingerprint."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch

pytest.importorskip("transformers")

import exitlab  # noqa: E402
from exitlab.cli import main  # noqa: E402
from exitlab.errors import ConfigError  # noqa: E402
from exitlab.evaluation.evaluate import evaluate_run, format_report  # noqa: E402
from exitlab.models import pretrained  # noqa: E402
from exitlab.runs.checkpoint import load  # noqa: E402
from exitlab.runs.config import load_config  # noqa: E402
from exitlab.runs.files import read_status  # noqa: E402

MINILM = pretrained.installed_folder(pretrained.MINILM)
SECTIONS = ("games", "python", "sound")
pytestmark = pytest.mark.skipif(MINILM is None, reason="MiniLM weights not installed (scripts/install-weights text)")

BASE = ["model.backbone=hf:minilm", "model.pretrained=true", "model.exits=[1, 3]", "model.head_kwargs={pool: mean}",
        "data.name=debian_sections", "data.text.tokenizer=hf:minilm", "data.text.max_length=16",
        "data.debian={min_per_section: 10, max_per_section: 24, test_fraction: 0.25}", "data.batch_size=12",
        "data.eval_batch_size=64", "data.val_fraction=0.2", "device=cpu", "progress=false", "threads=1"]
OPT = "{optimizer: adamw, lr: 0.0005, weight_decay: 0.0}"


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """A few sections of this machine's package index, as a Packages file (the whole index takes seconds)."""
    if shutil.which("apt-cache") is None:
        pytest.skip("no apt-cache: no Debian package index here")
    text = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=False).stdout
    keep = [s for s in text.split("\n\n") if any(f"\nSection: {sec}\n" in s + "\n" for sec in SECTIONS)]
    if len(keep) < 90:
        pytest.skip("the local package index is not filled (apt-get update)")
    path = tmp_path_factory.mktemp("index") / "Packages"
    path.write_text("\n\n".join(keep[::7]))
    return path.parent


def _train(index, out, regime: str, *sets: str):
    cfg = load_config(None, [*BASE, f"data.root={index}", f"regime={regime}", f"phase1={OPT}", f"phase2={OPT}",
                             "phase3={optimizer: adamw, lr: 0.005, weight_decay: 0.0}", "phase1.epochs=1",
                             "phase2.epochs=1", "phase3.epochs=1", *sets])
    return exitlab.train(cfg, out)


def _encoder(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.backbone.base.state_dict().items()}


@pytest.mark.parametrize("regime, sets, title", [
    ("joint", (), "joint (from pretrained)"),
    ("disjoint", (), "disjoint (fine-tuned backbone)"),
    ("mixed", (), "mixed (fine-tuned, then all)"),
    ("disjoint", ("phase1.epochs=0",), "disjoint (frozen pretrained)"),
])
def test_each_regime_trains_reloads_and_evaluates_on_minilm(index, tmp_path, regime, sets, title):
    out = _train(index, tmp_path / "run", regime, *sets)
    status = read_status(out)
    assert status["status"] == "done" and status["regime_title"] == title
    assert len(status["data_fingerprint"]) == 64
    model = load(out)  # rebuilt from the directory (config and safetensors, no pickle)
    fresh = exitlab.from_hf(str(MINILM), num_labels=3, exits=[1, 3], head="mean")
    untouched = all(torch.equal(v, _encoder(fresh)[k]) for k, v in _encoder(model).items())
    assert untouched == (title == "disjoint (frozen pretrained)")  # only that one leaves the encoder as it was
    new_head = model.backbone.model.classifier.weight  # trained in every regime, by phase 3 in the untouched one
    assert new_head.shape == (3, 384) and not torch.allclose(new_head, fresh.backbone.model.classifier.weight)
    assert [p["kind"] for p in status["phases"]] == {"joint": [2], "disjoint": [1, 3], "mixed": [1, 2]}[regime][
        1 if "phase1.epochs=0" in sets else 0:]
    result = evaluate_run(out)
    assert len(result["exits"]) == 3 and 0.0 <= result["final_accuracy"] <= 1.0
    report = format_report(result)
    assert f"regime {title}" in report and f"data sha256 {status['data_fingerprint']}" in report


def test_a_tokenizer_larger_than_the_embedding_table_is_one_error(index, tmp_path):
    tf = pytest.importorskip("transformers")
    tok = tf.AutoTokenizer.from_pretrained(str(MINILM))
    tok.add_tokens(["zzqxa", "zzqxb"])
    tok.save_pretrained(str(tmp_path / "tok"))
    with pytest.raises(ConfigError) as e:
        _train(index, tmp_path / "run", "joint", f"data.text.tokenizer={tmp_path / 'tok'}")
    assert str(e.value) == ("the tokenizer has 30524 tokens but the encoder's embedding table only 30522; use the "
                            "model's own tokenizer (data.text.tokenizer)")


def test_the_demo_flag_goes_with_text(capsys):
    assert main(["demo", "--pretrained"]) == 2
    assert capsys.readouterr().err.strip() == "error: --pretrained goes with --text (exitlab demo --text --pretrained)"
