"""The named parts of a training recipe: regimes, optimizers, learning-rate schedules and per-exit loss weightings.

Plain registries (duplicates raise). Config validation checks names against them, the planner and the training
loop build from them, and ``exitlab ls`` lists them, so a name is valid in exactly one place.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..registry import Registry

# ---------------------------------------------------------------- regimes: phase lists
REGIMES: Registry[tuple[int, ...]] = Registry("regime")
REGIMES.register("joint", (2,))  # SDN-style: everything together from scratch
REGIMES.register("disjoint", (1, 3))  # backbone first, then ICs on the frozen backbone
REGIMES.register("mixed", (1, 2))  # the paper's proposal: backbone first, then everything together
REGIMES.register("layerskip", (2,))  # joint training with LayerSkip's layer dropout and exit curriculum (preset below)

# A regime's preset: phase options it sets where the config leaves them at their defaults.
REGIME_PRESETS: dict[str, dict[int, dict]] = {
    "layerskip": {2: {"layerskip": {"rate": 0.2, "depth_scale": "exp", "curriculum": "rotational"}}},
}


# ---------------------------------------------------------------- optimizers: (param groups, options) -> optimizer
OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def sgd(groups: list[dict], lr: float, momentum: float) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (plain SGD when momentum is 0); weight decay is set per parameter group."""
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)


@OPTIMIZERS.register("adamw")
def adamw(groups: list[dict], lr: float, momentum: float) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay, per parameter group); ``momentum`` is not used."""
    return torch.optim.AdamW(groups, lr=lr)


# ---------------------------------------------------------------- schedules: share of the peak lr after warm-up
SCHEDULES: Registry[Callable[[float], float]] = Registry("schedule")


@SCHEDULES.register("cosine")
def cosine(done: float) -> float:
    """Cosine from 1 to 0 over the phase's steps (``done`` in [0, 1])."""
    return 0.5 * (1 + math.cos(math.pi * min(max(done, 0.0), 1.0)))


@SCHEDULES.register("plateau")
def plateau(done: float) -> float:
    """The peak learning rate, cut by the trainer whenever validation stalls (``plateau_patience``)."""
    return 1.0


@SCHEDULES.register("constant")
def constant(done: float) -> float:
    """The peak learning rate throughout."""
    return 1.0


# ---------------------------------------------------------------- loss weightings: n trained exits -> weights
LOSS_WEIGHTS: Registry[Callable[[int], torch.Tensor]] = Registry("loss weighting")


@LOSS_WEIGHTS.register("uniform")
def uniform_weights(n: int) -> torch.Tensor:
    """Plain mean over the trained exits (the paper code's default)."""
    return torch.full((n,), 1.0 / n)


@LOSS_WEIGHTS.register("sdn")
def sdn_weights(n: int) -> torch.Tensor:
    """Weights that grow linearly with depth, as in SDN's final weighting (deeper exits matter more)."""
    w = torch.arange(1, n + 1, dtype=torch.float32)
    return w / w.sum()
