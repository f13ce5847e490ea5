"""Training compute, as measured: what a run records in ``run.json`` under ``compute``."""

from __future__ import annotations

from pathlib import Path

from ..runs.config import RunConfig
from ..runs.rundir import RunDir
from .phases import Phase


def shared_phase1(status: dict) -> dict | None:
    """The compute record of a phase 1 trained by another run and shared with this one."""
    if not status.get("phase1_from"):
        return None
    source = Path(status["phase1_from"]).parent.parent  # <run>/checkpoints/00-phase1-end.safetensors
    phases = RunDir(source).status().get("compute", {}).get("phases", [])
    return {**phases[0], "shared_from": str(source)} if phases else None


def compute_summary(records: list[dict], phases: list[Phase], flops_per_sample: dict[int, float], cfg: RunConfig,
                    shared: dict | None = None) -> dict:
    """Measured training compute per phase and in all: steps, samples, FLOPs (per sample x samples: forward and
    backward, frozen parts at their forward cost, the optimizer update and validation passes not counted), seconds."""
    out = []
    for pi, p in enumerate(phases):
        mine = [r for r in records if r.get("phase_index") == pi]
        samples = sum(r.get("samples", 0) for r in mine)
        out.append({"phase": p.kind, "epochs": len(mine), "steps": mine[-1]["step"] if mine else 0, "samples": samples,
                    "flops_per_sample": flops_per_sample.get(p.kind), "train_flops": sum(r.get("train_flops", 0)
                                                                                        for r in mine),
                    "seconds": sum(r.get("seconds", 0) for r in mine)})
    if shared is not None:
        out[0] = shared  # phase 1 ran in the run it is shared from: its compute counts here too
    matched = "flops" if cfg.budget_flops else "epochs" if cfg.budget else "none"
    return {"phases": out, "train_flops": sum(p["train_flops"] for p in out), "seconds": sum(p["seconds"] for p in out),
            "budget": {"matched": matched, "value": cfg.budget_flops or cfg.budget or None}}
