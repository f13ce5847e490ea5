"""File primitives every owner of files uses: atomic writes, JSON and JSON-lines that name damage, the run lock,
and output-path checks. A leaf module: it knows no run layout (that is :mod:`exitlab.rundir`)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path

from ..errors import CheckpointError, ExitlabError
from . import faults

log = logging.getLogger("exitlab")


def atomic_write(path: Path, write) -> None:
    """Write via ``write(tmp_path)``, fsync, then rename over ``path``: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        faults.point("write")
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"could not write {path}: {e.strerror or e}; free space or pick a writable --out") from e


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
    """The records of a JSON-lines file. A line that does not parse (cut off by a kill, or damaged) is skipped:
    one bad line never hides the good ones around it."""
    if not path.exists():
        return []
    return [r for r in (_parse_line(line) for line in path.read_bytes().splitlines()) if r is not None]


def _parse_line(line: bytes) -> dict | None:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def repair_jsonl(path: Path, keep) -> None:
    """Rewrite ``path`` with the records for which ``keep(record)`` holds (resume rewinds the log to the checkpoint
    it restarts from). Lines that do not parse are not lost: they are appended to ``<path>.bad``, with a warning."""
    if not path.exists():
        return
    lines = path.read_bytes().splitlines()
    bad = [line for line in lines if line.strip() and _parse_line(line) is None]
    if bad:
        log.warning("%s: %d damaged line(s) moved to %s", path, len(bad), path.name + ".bad")
        with open(path.with_name(path.name + ".bad"), "ab") as f:
            f.write(b"".join(line + b"\n" for line in bad))
    good = [r for r in (_parse_line(line) for line in lines) if r is not None and keep(r)]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in good))
    os.replace(tmp, path)


def read_json(path: Path, what: str, fix: str) -> dict:
    """A JSON object from ``path``, or an ExitlabError naming the file, what it should be, and ``fix``."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ExitlabError(f"{path} not found; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise ExitlabError(f"{path} is not a valid {what} ({type(e).__name__}: {str(e)[:80]}); {fix}") from None
    if not isinstance(data, dict):
        raise ExitlabError(f"{path} is not a valid {what} (a JSON {type(data).__name__}, not an object); {fix}")
    return data


def read_status(directory: Path) -> dict:
    """A run's ``run.json`` (``{}`` when there is none), or an ExitlabError when it is damaged."""
    path = directory / "run.json"
    if not path.is_file():
        return {}
    try:
        status = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise ExitlabError(f"{path} is damaged ({type(e).__name__}); move it away and resume from the run's "
                           "checkpoints, or choose another --out") from None
    if not isinstance(status, dict):
        raise ExitlabError(f"{path} is not an exitlab run status (not a JSON object); move it away, or choose "
                           "another --out")
    return status


def check_out_dir(directory: Path) -> None:
    """An output path must be a directory or not exist yet."""
    if directory.exists() and not directory.is_dir():
        raise ExitlabError(f"{directory} is a file, not a directory; choose a directory for --out")


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
