"""The ``exitlab`` command line: a map from subcommand to a plain function. Only this package prints."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from ..errors import ExitlabError
from .deploy import add_export, add_serve, cmd_export, cmd_serve
from .flags import Parser
from .listing import add_ls, cmd_ls
from .measure import add_analyze, add_bench, add_eval, cmd_analyze, cmd_bench, cmd_eval
from .runs import add_compare, add_demo, add_report, add_train, cmd_compare, cmd_demo, cmd_report, cmd_train

COMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction], None], Callable[[argparse.Namespace], int]]] = {
    "train": (add_train, cmd_train),
    "demo": (add_demo, cmd_demo),
    "ls": (add_ls, cmd_ls),
    "compare": (add_compare, cmd_compare),
    "report": (add_report, cmd_report),
    "eval": (add_eval, cmd_eval),
    "bench": (add_bench, cmd_bench),
    "analyze": (add_analyze, cmd_analyze),
    "export": (add_export, cmd_export),
    "serve": (add_serve, cmd_serve),
}


# What Ctrl-C means for each command: every message is true for its command.
INTERRUPTED = {
    "train": "interrupted; rerun the same command with --resume to continue from the last checkpoint",
    "demo": "interrupted; rerun with --resume to reuse the finished runs and continue the others",
    "compare": "interrupted; rerun the same command to resume (finished runs are reused, unfinished ones continue)",
    "serve": "stopped",
}


INTERRUPTED_DEFAULT = "interrupted before finishing; files from earlier runs are untouched (results are written last)"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="exitlab", description="Multi-exit neural networks: train, measure, compare.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ExitlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
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
        print(INTERRUPTED.get(args.command, INTERRUPTED_DEFAULT), file=sys.stderr)
        return 130

