"""Flag parsing shared by the subcommands: one ``error:`` line for a bad command line, range-checked numbers."""

from __future__ import annotations

import argparse

import torch

from ..errors import ConfigError, ExitlabError
from ..runs.typed import check_range


class UsageError(ExitlabError):
    """A command line that argparse refuses; printed as one ``error:`` line like every other bad input."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the usage block and exit; say it in one line instead
        message = message.replace("\r", "\\r").replace("\n", "\\n")  # one line, whatever the user typed
        raise UsageError(f"{message} (see {self.prog} --help)")


def number(kind: type = int, lo: float | None = None, hi: float | None = None, lo_open: bool = False):
    """An argparse ``type`` that parses a number and checks its range, naming the option in the error."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        try:
            check_range("value", value, lo=lo, hi=hi, lo_open=lo_open)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("value ")) from None
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


POSITIVE, COUNT = number(int, lo=1), number(int, lo=0)


FINITE = number(float)


def set_threads(n: int) -> None:
    if n < 0:
        raise ExitlabError(f"--threads must be >= 0, got {n}")
    if n:
        torch.set_num_threads(n)


def floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ExitlabError(f"--thresholds {text!r}: expected comma-separated numbers, e.g. 0.5,0.8,0.9") from None
