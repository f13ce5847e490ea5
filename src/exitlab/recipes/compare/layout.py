"""Where a comparison's runs live and in which order its table rows come: ``<out>/seed<S>/<regime>[-<variant>]``."""

from __future__ import annotations

from pathlib import Path

from ...training.phases import regime_label
from .config import CompareConfig


def rows(cc: CompareConfig) -> list[tuple[str, str, str]]:
    """(row label, regime label, variant) for every table row, in config order."""
    out = []
    for variant in cc.variant_overrides():
        for r in cc.regimes:
            label = regime_label(r)
            out.append((f"{label} ({variant})" if variant else label, label, variant))
    return out


def run_dir(out: Path, seed: int, regime: str, variant: str) -> Path:
    return out / f"seed{seed}" / (f"{regime}-{variant}" if variant else regime)
