"""The ``exitlab`` command line: a map from subcommand to a plain function. Only this module prints."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from .errors import ExitlabError


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .train import train

    cfg = load_config(args.config, args.set)
    out = Path(args.out or Path("runs") / Path(args.config).stem)
    train(cfg, out, resume=args.resume, phase1_from=args.phase1_from)
    print(f"done: {out}  (model: {out / 'model.safetensors'}; metrics: {out / 'metrics.jsonl'})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out), budget=args.budget, workers=args.workers, resume=args.resume)


def cmd_ls(args: argparse.Namespace) -> int:
    from .models import BACKBONES, HEADS
    from .phases import REGIMES

    tables = {"backbones": BACKBONES.names(), "heads": HEADS.names(),
              "regimes": [f"{n} = phases {list(REGIMES.get(n))}" for n in REGIMES.names()]}
    for kind in [args.kind] if args.kind else tables:
        print(f"{kind}:")
        for name in tables[kind]:
            print(f"  {name}")
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a multi-exit model from a YAML config")
    p.add_argument("config", help="YAML config, e.g. configs/fashion_mnist.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--out", help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out")
    p.add_argument("--phase1-from", help="start from this phase-1 checkpoint instead of training phase 1")


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train joint, disjoint and mixed on Fashion-MNIST and compare per-exit accuracy")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--budget", type=int, default=3, help="epochs per regime, matched across regimes (default: 3)")
    p.add_argument("--workers", type=int, default=2, help="parallel 1-thread training processes (default: 2)")
    p.add_argument("--resume", action="store_true", help="reuse finished runs in --out and resume unfinished ones")


def _add_ls(sub) -> None:
    p = sub.add_parser("ls", help="list registered backbones, heads and regimes")
    p.add_argument("kind", nargs="?", choices=["backbones", "heads", "regimes"])


COMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction], None], Callable[[argparse.Namespace], int]]] = {
    "train": (_add_train, cmd_train),
    "demo": (_add_demo, cmd_demo),
    "ls": (_add_ls, cmd_ls),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exitlab", description="Multi-exit neural networks: train, measure, compare.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    try:
        return COMMANDS[args.command][1](args)
    except ExitlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
