"""Process pools whose workers die with their parent.

``exitlab compare`` and ``exitlab demo`` train in worker processes. If only the parent is killed (the OOM killer
picks the biggest process; ``kill -9`` of the pid a user sees), orphaned workers would otherwise keep training, or
sit idle, for good. Every worker asks the kernel to SIGKILL it when its parent dies (``PR_SET_PDEATHSIG`` on Linux)
and also runs a watchdog thread that notices a changed parent pid, which covers other platforms.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1
WATCH_SECONDS = 0.5


def _die_with_parent(parent: int) -> None:
    """Pool initializer: arrange for this worker to be killed as soon as ``parent`` is gone."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # the watchdog below still works
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), daemon=True, name="exitlab-parent-watch").start()


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_SECONDS)
    os.kill(os.getpid(), signal.SIGKILL)


def worker_pool(workers: int) -> cf.ProcessPoolExecutor:
    """A spawn-context process pool of ``workers`` processes that cannot outlive this process."""
    return cf.ProcessPoolExecutor(max_workers=max(1, workers), mp_context=mp.get_context("spawn"),
                                  initializer=_die_with_parent, initargs=(os.getpid(),))
