"""The paper's BERT recipes (configs/paper/text, NOT RUN HERE at full size) run end to end on a tiny random
encoder and a few rows: 20-Newsgroups-style classification and STS-B-style pair regression."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from exitlab.data.textfiles import word_tokenizer  # noqa: E402
from exitlab.rundir import read_jsonl  # noqa: E402
from tests.data.test_text_files import WORDS, _rows  # noqa: E402
from tests.models.test_hf import tiny  # noqa: E402

RECIPES = Path(__file__).parent.parent / "configs" / "paper" / "text"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_every_recipe_says_not_run_here_and_starts_with_its_command():
    for p in RECIPES.glob("bert_*.py"):
        doc = p.read_text().split('"""')[1]
        assert "NOT RUN HERE" in doc and f"python configs/paper/text/{p.name}" in doc, p.name


@pytest.mark.parametrize("regime", ["mixed"])
def test_the_20_newsgroups_recipe_trains_a_regime(tmp_path, regime):
    mod = _module("bert_20newsgroups")
    args = mod.arguments(mod.__doc__, text="text", label="label", max_length=32).parse_args(
        ["--model", "unused", "--train", _jsonl(tmp_path / "tr.jsonl", _rows(60)), "--test",
         _jsonl(tmp_path / "te.jsonl", _rows(15, seed=1)), "--regime", regime, "--out", str(tmp_path / "run"),
         "--exits", "0,1,2", "--batch-size", "16"])
    tok = word_tokenizer([" ".join(WORDS)] * 4, vocab_size=60)
    out = mod.run(args, model=tiny("bert", num_labels=3), tokenizer=tok, budget=2)
    recs = read_jsonl(out / "metrics.jsonl")
    assert [r["phase"] for r in recs] == [1, 2] and len(recs[0]["val_acc"]) == 4


def test_the_stsb_recipe_trains_a_pair_regression(tmp_path):
    mod = _module("bert_stsb")
    g = torch.Generator().manual_seed(0)
    rows = [{"sentence1": r["text"], "sentence2": r["other"], "score": round(float(torch.rand(1, generator=g)) * 5, 2)}
            for r in _rows(48)]
    args = mod.arguments(mod.__doc__, text="sentence1", pair="sentence2", label="score", max_length=32).parse_args(
        ["--model", "unused", "--train", _jsonl(tmp_path / "tr.jsonl", rows), "--test",
         _jsonl(tmp_path / "te.jsonl", rows[:12]), "--regime", "joint", "--out", str(tmp_path / "run"),
         "--exits", "every:2", "--batch-size", "16"])
    tok = word_tokenizer([" ".join(WORDS)] * 4, vocab_size=60)
    out = mod.run(args, task="regression", model=tiny("bert", num_labels=1), tokenizer=tok, budget=1)
    (rec,) = read_jsonl(out / "metrics.jsonl")
    assert len(rec["val_acc"]) == 2 and all(v <= 0 for v in rec["val_acc"])  # negative MSE per exit
