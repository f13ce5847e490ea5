"""Phases as data, regimes as short lists of phases, and per-exit loss weights.

Phase 1 trains the backbone alone (final exit only), phase 2 trains backbone and ICs together on a weighted sum of
per-exit losses, and phase 3 trains the ICs alone on a frozen backbone (no gradient, BatchNorm statistics fixed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import PhaseConfig, RunConfig
from .errors import ConfigError
from .registry import Registry

REGIMES: Registry[tuple[int, ...]] = Registry("regime")
REGIMES.register("joint", (2,))  # SDN-style: everything together from scratch
REGIMES.register("disjoint", (1, 3))  # backbone first, then ICs on the frozen backbone
REGIMES.register("mixed", (1, 2))  # the paper's proposal: backbone first, then everything together

TRAINS = {1: "backbone", 2: "all", 3: "heads"}


@dataclass(frozen=True)
class Phase:
    """One phase of a regime: which parameters train, for how many epochs, with which options."""

    kind: int  # 1, 2 or 3
    epochs: int
    options: PhaseConfig

    @property
    def trains(self) -> str:
        return TRAINS[self.kind]

    @property
    def name(self) -> str:
        return f"phase{self.kind}"


def phase_kinds(regime: str | list[int]) -> tuple[int, ...]:
    return tuple(regime) if isinstance(regime, list) else REGIMES.get(regime)


def split_budget(kinds: tuple[int, ...], budget: int, phase1_share: float) -> list[int]:
    """Epochs per phase under a total ``budget``: phase 1 (when first and not alone) takes ``phase1_share`` of it,
    the remaining phases share the rest evenly (earlier phases get the remainder)."""
    if len(kinds) == 1:
        return [budget]
    first = round(budget * phase1_share) if kinds[0] == 1 else None
    if first is not None:
        rest = _even(budget - first, len(kinds) - 1)
        return [first, *rest]
    return _even(budget, len(kinds))


def _even(total: int, n: int) -> list[int]:
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def plan_phases(cfg: RunConfig) -> list[Phase]:
    """The phases a run trains, with their epochs (from ``budget`` when set, else each phase's own ``epochs``)."""
    kinds = phase_kinds(cfg.regime)
    options = [getattr(cfg, f"phase{k}") for k in kinds]
    epochs = split_budget(kinds, cfg.budget, cfg.phase1_share) if cfg.budget else [o.epochs for o in options]
    if cfg.budget and min(epochs) < 1:
        raise ConfigError(f"budget: {cfg.budget} epochs cannot be split over phases {list(kinds)} "
                          f"(got {epochs}); raise budget or adjust phase1_share")
    return [Phase(k, e, o) for k, e, o in zip(kinds, epochs, options)]


# ---------------------------------------------------------------- loss weights: each returns weights summing to 1


def uniform_weights(n: int) -> torch.Tensor:
    """Plain mean over the trained exits (the paper code's default)."""
    return torch.full((n,), 1.0 / n)


def sdn_weights(n: int) -> torch.Tensor:
    """Weights that grow linearly with depth, as in SDN's final weighting (deeper exits matter more)."""
    w = torch.arange(1, n + 1, dtype=torch.float32)
    return w / w.sum()


def explicit_weights(values: list[float], n: int, key: str = "loss_weights") -> torch.Tensor:
    """A user list, normalised to sum to 1."""
    if len(values) != n:
        raise ConfigError(f"{key}: {len(values)} weights given but this phase trains {n} exits")
    w = torch.tensor(values, dtype=torch.float32)
    return w / w.sum()


def loss_weights(spec: str | list[float], n: int, key: str = "loss_weights") -> torch.Tensor:
    if isinstance(spec, list):
        return explicit_weights(spec, n, key)
    return {"uniform": uniform_weights, "sdn": sdn_weights}[spec](n)
