"""The run-directory lock is held by the OS: mutually exclusive under many simultaneous starts, gone with its
process; and the workers of a training grid die with their parent."""

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from exitlab.errors import ExitlabError
from exitlab.runs.files import RunLock
from tests.recipes.compare.test_compare import TINY

HOLD = """
import sys, time
from pathlib import Path
from exitlab.runs.files import RunLock
from tests.recipes.compare.test_compare import TINY
with RunLock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def _contend(directory: str, rounds: int, start, results) -> None:
    """Try to take the lock ``rounds`` times; inside it, claim a marker file that only one holder may create."""
    marker = Path(directory) / "inside"
    got = overlaps = 0
    start.wait()
    for _ in range(rounds):
        try:
            with RunLock(Path(directory)):
                got += 1
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    overlaps += 1  # someone else holds the lock at the same time
                    continue
                os.close(fd)
                os.sched_yield()
                marker.unlink()
        except ExitlabError:
            pass
    results.put((got, overlaps))


def test_lock_is_mutually_exclusive_under_many_simultaneous_starts(tmp_path):
    ctx = mp.get_context("fork")
    procs, rounds = 8, 250  # 2,000 starts in all, released at one instant by the barrier
    start, results = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_contend, args=(str(tmp_path), rounds, start, results)) for _ in range(procs)]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(30)
    assert sum(o for _, o in outcomes) == 0, "two processes held the lock at once"
    assert sum(g for g, _ in outcomes) > 0  # the lock was taken, so the check above had something to see


def test_a_held_lock_names_its_holder_and_dies_with_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ExitlabError, match=f"in use by process {holder.pid}; wait for it to finish"):
            with RunLock(tmp_path):
                pass
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs, the kernel drops the lock
        holder.wait()
    with RunLock(tmp_path):  # no stale lock to take over
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
    assert (tmp_path / ".lock").read_text() == ""  # released, and the file stays (deleting it would race)


def _group(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            alive.append(int(stat.parent.name))
    return alive


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to list a process group")
def test_killing_the_compare_parent_alone_leaves_no_workers_and_resume_reuses_finished_runs(tmp_path):
    from exitlab.recipes.compare import load_compare_config, run_compare

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "out"
    # The parent SIGKILLs itself right after the first job finishes: a deterministic trigger, no timing.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EXITLAB_FAULT": "job:1"}
    proc = subprocess.Popen([sys.executable, "-m", "exitlab", "compare", str(cfg), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    try:
        assert proc.wait(600) == -signal.SIGKILL
        deadline = time.monotonic() + 60  # workers get SIGKILL from the kernel at once; this only bounds a hang
        while _group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _group(proc.pid) == [], "worker processes outlived the compare parent"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    finished = [d for d in (out / "seed0").iterdir()
                if (d / "run.json").exists() and json.loads((d / "run.json").read_text())["status"] == "done"]
    assert len(finished) == 1, finished
    stamp = (finished[0] / "model.safetensors").stat().st_mtime_ns
    events = []
    run_compare(load_compare_config(cfg), out, on_event=events.append)
    assert f"seed0/{finished[0].name}: already finished, reused" in events
    assert (finished[0] / "model.safetensors").stat().st_mtime_ns == stamp
    assert (out / "summary.json").exists()
