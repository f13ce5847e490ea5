"""Run directories: environment record, lock file, metrics log, and checkpoint discovery."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from .errors import CheckpointError, ExitlabError

log = logging.getLogger("exitlab")


def code_identity() -> dict:
    """The git commit of the exitlab source tree and whether it has uncommitted changes (when it is a checkout)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(dirty) if commit else None}


def environment() -> dict:
    import numpy

    from . import __version__

    return {
        "exitlab": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "numpy": numpy.__version__, "platform": platform.platform(), "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(), "code": code_identity(),
    }


def signature(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


class RunLock:
    """An exclusive OS lock (``flock``) on ``<directory>/.lock``, held through an open file descriptor.

    The kernel arbitrates, so two processes can never both hold it, and the lock dies with its process (a crash or
    SIGKILL included): there are no stale locks to take over. The file itself is never deleted, because a process
    that unlinked it could let a newcomer lock a fresh file while a third still holds the old one. It records the
    holder's pid for the error message only.
    """

    def __init__(self, directory: Path):
        self.path = directory / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            who = f"process {holder}" if holder.isdigit() else "another process"
            raise ExitlabError(f"{self.path.parent} is in use by {who}; wait for it to finish or choose another "
                               "--out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def append_jsonl(path: Path, record: dict) -> None:
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise ExitlabError(f"could not write {path}: {e.strerror or e}; free space or pick a writable --out "
                           "(the last checkpoint is kept; rerun with --resume)") from None


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut off by a kill: everything after it is untrustworthy
    return out


def truncate_jsonl(path: Path, n: int) -> None:
    """Keep the first ``n`` records (resume rewinds the log to the checkpoint it restarts from)."""
    keep = read_jsonl(path)[:n]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
    os.replace(tmp, path)


def checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files, oldest first (names sort by phase index, then epoch, with phase ends last)."""
    d = directory / "checkpoints"
    return sorted(d.glob("*.safetensors")) if d.is_dir() else []


def remove_partial_writes(directory: Path) -> list[Path]:
    """Delete temporary files left by writes that a crash interrupted (``.<name>.tmp-<pid>``)."""
    gone = []
    for d in (directory, directory / "checkpoints"):
        for p in d.glob(".*.tmp-*") if d.is_dir() else []:
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def newest_valid(directory: Path, loader) -> tuple[Path, object] | None:
    """Load the newest checkpoint that verifies, falling back past corrupt ones (and saying so)."""
    for path in reversed(checkpoints(directory)):
        try:
            return path, loader(path)
        except CheckpointError as e:
            log.warning("%s; falling back to the previous checkpoint", e)
    return None


def check_writable(directory: Path) -> None:
    """Fail before training if the output directory cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as e:
        raise ExitlabError(f"output directory {directory} is not writable ({e.strerror or e}); choose another --out "
                           "or free space") from None
