"""Run a grid of trainings (regimes x seeds x variants) as parallel processes, sharing phase 1 where possible.

Every run lives in a readable directory, ``<out>/seed<S>/<regime>[-<variant>]``; a shared phase 1 lives in
``<out>/seed<S>/phase1[-<variant>]``. Finished runs are never redone and unfinished ones resume.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError, ExitlabError
from ..runs import faults
from ..runs.config import RunConfig
from ..runs.files import read_jsonl, read_status
from ..runs.typed import apply_overrides, from_dict, to_dict
from ..training.phases import phase_kinds, regime_label
from ..training.planning import preflight
from ..training.resume import phase1_signature, run_signature
from .procs import worker_pool
from .train import train


@dataclass
class Job:
    """One training run of the grid."""

    name: str  # e.g. "seed0/mixed"
    cfg: RunConfig
    out: Path
    after: str | None = None  # the job whose phase-1 checkpoint this one starts from
    epochs: int = 0  # total epochs, for progress
    state: str = "waiting"
    seen: int = field(default=0, repr=False)

    @property
    def phase1_checkpoint(self) -> Path:
        return self.out / "checkpoints" / "00-phase1-end.safetensors"


def plan_grid(base: RunConfig, regimes: list, seeds: list[int], out: Path, variant: str = "",
              overrides: dict[str, list[str]] | None = None) -> list[Job]:
    """Jobs for every regime and seed. ``overrides``: per regime label, ``--set``-style changes of its config (e.g.
    a learning rate for joint's from-scratch phase 2 and another for mixed's fine-tuning phase 2). Regimes that
    start with phase 1 followed by more phases share one phase-1 job per seed when everything that decides their
    phase 1 agrees (its settings, and its epochs or FLOPs under a matched budget)."""
    if not seeds:
        raise ConfigError("seeds: the seed list is empty; give at least one seed, e.g. seeds: [0]")
    if not regimes:
        raise ConfigError("regimes: the regime list is empty; e.g. regimes: [joint, disjoint, mixed]")
    suffix = f"-{variant}" if variant else ""
    jobs: list[Job] = []
    for seed in seeds:
        shared: dict[str, Job] = {}
        for regime in regimes:
            cfg = dataclasses.replace(base, regime=regime, seed=seed)
            changes = (overrides or {}).get(regime_label(regime), [])
            cfg = from_dict(RunConfig, apply_overrides(to_dict(cfg), changes))  # re-validate the combination
            phases = preflight(cfg).phases  # every cell fails now, before any trains, if it can fail without data
            label = f"{regime_label(regime)}{suffix}"
            job = Job(f"seed{seed}/{label}", cfg, out / f"seed{seed}" / label, epochs=sum(p.epochs for p in phases))
            kinds = phase_kinds(regime)
            if kinds[0] == 1 and len(kinds) > 1:
                e1, f1, key = phases[0].epochs, phases[0].flops, phase1_signature(cfg, phases)
                if key not in shared:
                    p1cfg = from_dict(RunConfig, {**to_dict(cfg), "regime": [1], "budget": 0, "budget_flops": f1,
                                                  "phase1": {**to_dict(cfg)["phase1"], "epochs": e1 or 1}})
                    name = f"phase1{suffix}" if len(shared) == 0 else f"phase1-{len(shared)}{suffix}"
                    shared[key] = Job(f"seed{seed}/{name}", p1cfg, out / f"seed{seed}" / name, epochs=e1)
                    jobs.append(shared[key])
                job.after = shared[key].name
                job.epochs -= e1
            jobs.append(job)
    return jobs


def _work(cfg_dict: dict, out: str, phase1_from: str | None, threads: int) -> str:
    torch.set_num_threads(threads)
    cfg = from_dict(RunConfig, cfg_dict)
    train(cfg, Path(out), resume=True, phase1_from=phase1_from)
    return out


def run_grid(jobs: list[Job], workers: int = 2, threads: int = 1,
             on_event: Callable[[str], None] = lambda s: None) -> float:
    """Run ``jobs`` in up to ``workers`` processes of ``threads`` threads each, respecting phase-1 dependencies.

    Returns the wall time in seconds. A job that fails stops the grid with its error; finished jobs stay done.
    """
    t0 = time.perf_counter()
    by_name = {j.name: j for j in jobs}
    for j in jobs:
        if _finished(j):
            j.state = "done"
            on_event(f"{j.name}: already finished, reused")
    with worker_pool(workers) as pool:
        running: dict[cf.Future, Job] = {}
        while any(j.state != "done" for j in jobs):
            for j in jobs:
                dep = by_name.get(j.after) if j.after else None
                if j.state == "waiting" and (dep is None or dep.state == "done") and len(running) < workers:
                    src = str(dep.phase1_checkpoint) if dep else None
                    running[pool.submit(_work, to_dict(j.cfg), str(j.out), src, threads)] = j
                    j.state = "running"
                    on_event(f"{j.name}: started" + (f" from {dep.name}" if dep else ""))
            if not running:
                raise ExitlabError("grid is stuck: a job waits for a phase-1 run that is not in the grid")
            done, _ = cf.wait(running, timeout=5, return_when=cf.FIRST_COMPLETED)
            for job in running.values():
                _report_progress(job, t0, on_event)
            for fut in done:
                job = running.pop(fut)
                fut.result()  # re-raises the worker's error
                job.state = "done"
                on_event(f"{job.name}: done [{time.perf_counter() - t0:.0f}s]")
                faults.point("job")  # the reliability tests kill the parent alone here
    return time.perf_counter() - t0


def _finished(job: Job) -> bool:
    """Whether the job's run is done; a finished run with a different config is an error, never reused."""
    status = read_status(job.out)
    if status.get("status") != "done":
        return False
    if status.get("run_signature") != run_signature(job.cfg):
        raise ExitlabError(f"{job.out} holds a finished run with a different config; move it away or choose "
                           "another output directory")
    return True


def _report_progress(job: Job, t0: float, on_event: Callable[[str], None]) -> None:
    records = read_jsonl(job.out / "metrics.jsonl")
    for r in records[job.seen:]:
        if job.cfg.data.text.task == "regression":  # val_acc holds minus the MSE
            what, acc = "val MSE", " ".join(f"{-a:.4f}" for a in r["val_acc"])
        else:
            what, acc = "val acc", " ".join(f"{a * 100:.1f}" for a in r["val_acc"])
        on_event(f"{job.name}: phase {r['phase']} epoch {r['epoch']} done, {what} per exit {acc} "
                 f"[{time.perf_counter() - t0:.0f}s]")
    job.seen = len(records)
