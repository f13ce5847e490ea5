"""Export folders are replaced whole: a new export is written next to its target and renamed into place.

An interrupted or failed export leaves the previous export as it was. Between the two renames of a replacement the
previous export sits in ``.NAME.old-*`` next to the target; a crash in that instant leaves it there, whole.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ...errors import ExitlabError
from .manifest import MANIFEST_NAME


def is_export(d: Path) -> bool:
    """A folder as an export leaves it: ``manifest.json`` and ``.onnx`` graphs, plain files, nothing else."""
    entries = list(d.iterdir())
    return any(p.name == MANIFEST_NAME for p in entries) and all(
        p.is_file() and not p.is_symlink() and (p.name == MANIFEST_NAME or p.suffix == ".onnx") for p in entries)


def check_target(out: Path) -> None:
    """Refuse a target that exporting would damage: a file, a link, or a folder of other things than an export."""
    if out.is_symlink():
        raise ExitlabError(f"export folder {out} is a symbolic link; pass the folder it points to, or a new path")
    if out.exists() and not out.is_dir():
        raise ExitlabError(f"export folder {out} is a file, not a folder; pass a new or empty folder (--out)")
    if out.is_dir() and any(out.iterdir()) and not is_export(out):
        raise ExitlabError(f"export folder {out} holds files that are not an exitlab export; exporting replaces the "
                           "whole folder, so pass a new or empty folder (--out)")


def _sibling(out: Path, tag: str) -> Path:
    return out.parent / f".{out.name}.{tag}-{secrets.token_hex(4)}"


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A new empty folder next to ``out`` to write the export into; removed if the export fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(out, "partial")
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already once published


def publish(tmp: Path, out: Path) -> None:
    """Move the finished export ``tmp`` to ``out``: the previous export aside, the new one in, the old one deleted."""
    check_target(out)  # again: the folder may have changed while the graphs were exported
    if not out.exists():
        os.rename(tmp, out)
        return
    old = _sibling(out, "old")
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
