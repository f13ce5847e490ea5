"""Fault injection for the reliability tests: ``EXITLAB_FAULT=<event>:<n>`` SIGKILLs this process at the n-th
occurrence of a named event. Events: ``step`` (after an optimizer step), ``epoch`` (after an epoch's metrics are
logged, before its checkpoint), ``phase`` (between phases), ``write`` (inside a checkpoint write, after the
temporary file is written and before it is renamed), ``job`` (in the parent of a training grid, after a job has
finished). Unset, this costs one environment lookup per event."""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def _parse() -> tuple[str, int] | None:
    spec = os.environ.get("EXITLAB_FAULT", "")
    event, _, n = spec.partition(":")
    return (event, int(n)) if event and n.isdigit() else None


def point(event: str) -> None:
    """Mark one occurrence of ``event``; die here if the environment asks for it."""
    target = _parse()  # read every time: a forked child may set it after import
    if target is None or target[0] != event:
        return
    _counts[event] = _counts.get(event, 0) + 1
    if _counts[event] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
