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


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run, format_report

    _set_threads(args.threads)
    thresholds = _floats(args.thresholds) if args.thresholds else None
    result = evaluate_run(args.run_dir, policy=args.policy, split=args.split, thresholds=thresholds,
                          n_thresholds=args.n_thresholds, target_accuracy=args.target_accuracy)
    print(format_report(result))
    print(f"wrote {Path(args.run_dir) / 'eval.json'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench_run, format_bench

    _set_threads(args.threads)
    result = bench_run(args.run_dir, policy=args.policy, threshold=args.threshold, budget=args.budget,
                       split=args.split, batch=args.batch, samples=args.samples, repeats=args.repeats,
                       warmup=args.warmup)
    print(format_bench(result))
    print(f"wrote {Path(args.run_dir) / 'bench.json'}")
    return 0


def _set_threads(n: int) -> None:
    if n < 0:
        raise ExitlabError(f"--threads must be >= 0, got {n}")
    if n:
        import torch

        torch.set_num_threads(n)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ExitlabError(f"--thresholds {text!r}: expected comma-separated numbers, e.g. 0.5,0.8,0.9") from None


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


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="per-exit costs and accuracy, policy curves and the budget table -> eval.json")
    p.add_argument("run_dir", help="a finished run directory (from exitlab train)")
    p.add_argument("--policy", default="confidence", help="exit policy for the budget table (confidence, entropy, "
                   "patience, ztw; default: confidence)")
    p.add_argument("--split", default="test", help="split to report on: train, val or test (default: test)")
    p.add_argument("--thresholds", help="comma-separated thresholds for --policy (default: an even grid)")
    p.add_argument("--n-thresholds", type=int, default=100, help="size of the default grid (default: 100)")
    p.add_argument("--target-accuracy", type=float, help="also pick the cheapest threshold reaching this val accuracy")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measured early-exit latency/throughput vs FLOPs-predicted and ideal speed-up")
    p.add_argument("run_dir", help="a finished run directory (from exitlab train)")
    p.add_argument("--policy", default="confidence", help="exit policy (default: confidence)")
    p.add_argument("--threshold", type=float, help="policy threshold (default: chosen on val for --budget)")
    p.add_argument("--budget", type=float, default=0.5, help="FLOPs budget for the default threshold (default: 0.5)")
    p.add_argument("--split", default="test", help="split whose inputs are timed (default: test)")
    p.add_argument("--batch", type=int, default=256, help="batch size of the batched measurement (default: 256)")
    p.add_argument("--samples", type=int, default=50, help="inputs timed one by one at batch 1 (default: 50)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of each batched variant (default: 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up repeats (default: 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")


COMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction], None], Callable[[argparse.Namespace], int]]] = {
    "train": (_add_train, cmd_train),
    "demo": (_add_demo, cmd_demo),
    "ls": (_add_ls, cmd_ls),
    "eval": (_add_eval, cmd_eval),
    "bench": (_add_bench, cmd_bench),
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
