"""Analysis plots for a comparison: each requested analysis on the first seed's run of every regime."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ...analysis.analyze import Options, analyze
from .config import CompareConfig
from .layout import rows, run_dir


def run_analyses(cc: CompareConfig, out: Path, on_event: Callable[[str], None] = lambda s: None) -> list[Path]:
    """Write ``analysis/<kind>.json`` and ``.png`` for every analysis in ``cc.analyses``; returns the PNG paths."""
    seed = cc.seeds[0]
    dirs = [run_dir(out, seed, regime, variant) for _, regime, variant in rows(cc)]
    target = out / "analysis"
    pngs = []
    for kind in cc.analyses:
        runs = dirs[:3] if kind == "connectivity" else dirs  # connectivity relates 2 or 3 models
        if kind == "connectivity" and len(runs) < 2:
            continue
        on_event(f"analysis: {kind} on {len(runs)} runs (seed {seed})")
        opts = Options(samples=500, steps=11) if kind == "landscape" else Options()
        _, png = analyze(kind, runs, opts, out=target)
        pngs.append(png)
    return pngs
