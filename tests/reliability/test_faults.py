"""Fault injection: SIGKILL training at random points, resume, and get the uninterrupted run's weights and metrics
bit for bit (CPU). Kill points: inside phases 1, 2 and 3 (after an optimizer step or an epoch), at a phase boundary,
and in the middle of a checkpoint write (after the temporary file, before the rename); plus wall-clock kills."""

import multiprocessing as mp
import os
import random
import signal

import pytest
import torch

from exitlab.runs import checkpoint as ckpt
from exitlab.runs.config import load_config
from exitlab.runs.files import read_jsonl
from exitlab.training.engine import train
from tests.conftest import tiny_overrides

STEPS_PER_EPOCH = 7  # 504 training samples, batch 64, drop_last
EPOCHS = 2  # per phase; regime [1, 2, 3]


def _cfg():
    return load_config(None, tiny_overrides(regime="[1, 2, 3]", **{f"phase{k}.epochs": EPOCHS for k in (1, 2, 3)},
                                            keep_checkpoints=2))


def _child(out: str, fault: str | None, delay: float | None) -> None:
    if fault:
        os.environ["EXITLAB_FAULT"] = fault
    if delay is not None:
        import threading

        threading.Timer(delay, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
    train(_cfg(), out)


def _killed_run(out, fault=None, delay=None) -> int:
    p = mp.get_context("fork").Process(target=_child, args=(str(out), fault, delay))
    p.start()
    p.join(120)
    return p.exitcode


def _state(run):
    tensors, _ = ckpt.load_tensors(run / "model.safetensors")
    metrics = [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(run / "metrics.jsonl")]
    return tensors, metrics


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    train(_cfg(), out)
    return _state(out)


def _kill_and_resume(tmp_path, reference, fault=None, delay=None) -> tuple[str, bool]:
    out = tmp_path / (fault or f"t{delay:.2f}").replace(":", "-")
    code = _killed_run(out, fault, delay)
    killed = code == -signal.SIGKILL
    if (out / "run.json").exists() or (out / "checkpoints").exists():
        train(_cfg(), out, resume=True)
    else:  # killed before anything was written: a plain restart is the resume
        train(_cfg(), out, resume=True)
    tensors, metrics = _state(out)
    ref_tensors, ref_metrics = reference
    equal = tensors.keys() == ref_tensors.keys() and all(torch.equal(tensors[k], ref_tensors[k]) for k in tensors)
    return ("killed" if killed else f"exit {code}"), equal and metrics == ref_metrics


def _points(rng: random.Random, n: int) -> list[str]:
    total_steps = 3 * EPOCHS * STEPS_PER_EPOCH
    must = [f"step:{rng.randint(1, STEPS_PER_EPOCH * EPOCHS - 1)}",  # inside phase 1
            "phase:1",  # at the phase 1 -> 2 boundary
            f"step:{STEPS_PER_EPOCH * EPOCHS + rng.randint(1, STEPS_PER_EPOCH * EPOCHS - 1)}",  # inside phase 2
            f"step:{2 * STEPS_PER_EPOCH * EPOCHS + rng.randint(1, STEPS_PER_EPOCH * EPOCHS - 1)}",  # inside phase 3
            f"write:{rng.randint(1, 6)}"]  # during a checkpoint write
    pool = ([f"step:{i}" for i in range(1, total_steps + 1)] + [f"epoch:{i}" for i in range(1, 3 * EPOCHS + 1)]
            + ["phase:1", "phase:2"] + [f"write:{i}" for i in range(1, 3 * EPOCHS + 2)])
    rest = rng.sample([p for p in pool if p not in must], n - len(must))
    return must + rest


def test_fast_subset(tmp_path, reference):
    """One kill in each kind of place, in the default run."""
    rng = random.Random(0)
    for fault in _points(rng, 5):
        how, equal = _kill_and_resume(tmp_path, reference, fault=fault)
        assert how == "killed", f"{fault}: the fault did not fire ({how})"
        assert equal, f"{fault}: resumed run differs from the uninterrupted one"


@pytest.mark.slow
def test_twenty_random_kill_points(tmp_path, reference, capsys):
    rng = random.Random(2026)
    points = [(f, None) for f in _points(rng, 20)] + [(None, rng.uniform(1.0, 6.0)) for _ in range(4)]
    report = []
    for fault, delay in points:
        how, equal = _kill_and_resume(tmp_path, reference, fault=fault, delay=delay)
        report.append(f"{fault or f'after {delay:.2f} s'}: {how}, resume equal: {'yes' if equal else 'no'}")
    with capsys.disabled():
        print("\nfault injection report\n" + "\n".join(report))
    assert all(line.endswith("yes") for line in report), report
    assert sum("killed" in line for line in report) >= 20
