"""Shared by the paper's BERT recipes: build the encoder with exits, read the data, train one regime.

NOT RUN HERE: these recipes need a local BERT-base checkpoint and the data files, and a GPU for a run in hours; on
this project's machines (2 CPU cores, no pretrained encoder of verified origin offline) they are tested only on a
tiny random encoder and a few rows (tests/test_text_recipes.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import exitlab
from exitlab.config import RunConfig, from_dict
from exitlab.data.textfiles import from_text_files

# Fine-tuning settings in the usual BERT range (the paper does not publish its NLP optimiser settings): AdamW,
# encoder lr 2e-5, heads-only phase 3 at 1e-3, warm-up, early stopping on validation as the paper runs each phase.
ENCODER_PHASE = {"optimizer": "adamw", "lr": 2e-5, "weight_decay": 0.01, "warmup_epochs": 0.1, "epochs": 10,
                 "patience": 2, "stop_rule": "every", "grad_clip": 1.0}
HEADS_PHASE = {**ENCODER_PHASE, "lr": 1e-3}


def arguments(doc: str, text: str, label: str, max_length: int, pair: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--model", required=True, help="local folder of a BERT checkpoint (with its tokenizer)")
    ap.add_argument("--train", required=True, help="training data: .csv, .tsv, .jsonl or a save_to_disk folder")
    ap.add_argument("--test", required=True, help="test data in the same format")
    ap.add_argument("--regime", default="mixed", choices=["joint", "disjoint", "mixed"])
    ap.add_argument("--out", required=True, help="run directory")
    ap.add_argument("--exits", default="every:1", help="encoder layers with an IC (default: every layer)")
    ap.add_argument("--text", default=text)
    ap.add_argument("--pair", default=pair)
    ap.add_argument("--label", default=label)
    ap.add_argument("--max-length", type=int, default=max_length)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    return ap


def run(args, *, task: str = "classification", num_labels: int | None = None, model=None, tokenizer=None,
        **options) -> Path:
    """Train one regime; ``model``/``tokenizer`` replace the ones loaded from ``args.model``, ``options`` go to
    ``exitlab.train`` (tests: a tiny encoder, ``budget=1``)."""
    src = from_text_files(args.train, args.test, tokenizer=tokenizer or args.model, text=args.text,
                          text_pair=args.pair, label=args.label, max_length=args.max_length, task=task,
                          length_buckets=8)
    labels = 1 if task == "regression" else (num_labels or len(src.classes))
    exits = [int(e) for e in args.exits.split(",")] if args.exits[0].isdigit() else args.exits
    net = exitlab.from_hf(model if model is not None else args.model, num_labels=labels, exits=exits, head="cls",
                          task=task)
    base = from_dict(RunConfig, {"data": {"batch_size": args.batch_size, "eval_batch_size": 128}, "seed": args.seed})
    return exitlab.train(net, args.out, data=src, regime=args.regime, config=base, phase1=ENCODER_PHASE,
                         phase2=ENCODER_PHASE, phase3=HEADS_PHASE, **options)
