"""The paper's BERT configs (configs/paper/text, NOT RUN HERE at full size) train end to end on a tiny random
encoder and a few rows, with only the model, the tokenizer and the sizes overridden: 20-Newsgroups-style
classification through a comparison's base config, and STS-B-style sentence-pair regression."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

import exitlab  # noqa: E402
from exitlab.recipes.compare import load_compare_config  # noqa: E402
from exitlab.runs.config import load_config  # noqa: E402
from exitlab.runs.files import read_jsonl  # noqa: E402
from tests.data.test_text_files import _rows  # noqa: E402

TEXT = Path(__file__).parents[2] / "configs" / "paper" / "text"
TINY = ["model.backbone=hf:bert", "model.pretrained=false", "data.text.tokenizer=wordpiece", "data.text.vocab_size=60",
        "data.text.max_length=24", "data.batch_size=16", "data.eval_batch_size=32", "amp=none", "device=cpu",
        "progress=false", "model.backbone_kwargs={hidden_size: 16, num_hidden_layers: 3, num_attention_heads: 2, "
        "intermediate_size: 32, max_position_embeddings: 32}"]


def _phases(epochs: int) -> list[str]:
    return [f"phase{k}.{opt}" for k in (1, 2, 3) for opt in (f"epochs={epochs}", "patience=0")]


def test_every_text_config_says_not_run_here_and_starts_with_its_command():
    for p in TEXT.glob("*.yaml"):
        lines = p.read_text().splitlines()
        assert lines[0].startswith("# exitlab ") and f"configs/paper/text/{p.name}" in lines[0], p.name
        assert "NOT RUN HERE" in "\n".join(lines[:4]), p.name


def test_the_20_newsgroups_config_trains_a_regime(tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(60)))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(15, seed=1)))
    cmp = load_compare_config(TEXT / "bert_20newsgroups_compare.yaml",
                              [f"base.{o}" for o in TINY + _phases(1)] + [f"base.data.root={tmp_path}"])
    assert cmp.base.model.exits == "every:1" and cmp.base.data.text.max_length == 24
    out = exitlab.train(dataclasses.replace(cmp.base, regime="mixed"), tmp_path / "run")
    recs = read_jsonl(out / "metrics.jsonl")
    assert [r["phase"] for r in recs] == [1, 2] and len(recs[0]["val_acc"]) == 3  # ICs after layers 0 and 1


def test_the_stsb_config_trains_a_pair_regression(tmp_path):
    g = torch.Generator().manual_seed(0)
    for name, n in (("train.tsv", 48), ("dev.tsv", 12)):
        with open(tmp_path / name, "w", newline="") as f:
            w = csv.writer(f, delimiter="\t")
            w.writerow(["sentence1", "sentence2", "score"])
            for r in _rows(n, seed=n):
                w.writerow([r["text"], r["other"], round(float(torch.rand(1, generator=g)) * 5, 2)])
    cfg = load_config(TEXT / "bert_stsb.yaml", TINY + _phases(1) + [f"data.root={tmp_path}", "regime=joint"])
    assert cfg.data.text.task == "regression" and cfg.data.text.pair == "sentence2"
    out = exitlab.train(cfg, tmp_path / "run")
    (rec,) = read_jsonl(out / "metrics.jsonl")
    assert len(rec["val_acc"]) == 3 and all(v <= 0 for v in rec["val_acc"])  # negative MSE per exit
    assert exitlab.load(out).spec.task == "regression"
