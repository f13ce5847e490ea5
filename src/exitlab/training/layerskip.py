"""LayerSkip-style training (Elhoushi et al., ACL 2024): layer dropout scheduled over depth and time, and an
early-exit loss whose exits are switched on by a curriculum.

Drop rate of block ``l`` (of ``L``) at step ``t`` (of the phase's ``T``): ``p_{l,t} = S(t) D(l) p_max`` with
``D`` from :func:`exitlab.models.layerdrop.depth_scale` and ``S`` from :func:`time_scale`. Loss weight of exit ``j`` at
step ``t``: ``w~_j = C(t, j) w_j / sum_i C(t, i) w_i`` with ``w`` the phase's per-exit weights and ``C`` the
curriculum's 0/1 mask (:func:`exit_mask`; the final exit is always on).

Options: a phase's ``layerskip`` section (:class:`exitlab.runs.phase_config.LayerSkipConfig`).
"""

from __future__ import annotations

import contextlib
import math

from torch import nn

from ..errors import ConfigError
from ..models.layerdrop import block_rates, layer_dropout
from ..runs.phase_config import LayerSkipConfig


def time_scale(kind: str, step: int, total: int) -> float:
    """S(t): ``constant`` 1; ``exp`` 2^(t/(T-1)) - 1 (LayerSkip's pre-training curriculum, 0 at the first step and
    1 at the last); ``linear`` t/(T-1)."""
    if kind == "constant" or total <= 1:
        return 1.0
    done = min(step, total - 1) / (total - 1)
    if kind == "exp":
        return math.exp(done * math.log(2)) - 1
    if kind == "linear":
        return done
    raise ConfigError(f"layerskip.time_scale: {kind!r}; choose constant, exp or linear")


def exit_mask(o: LayerSkipConfig, n_exits: int, step: int, total: int) -> list[bool]:
    """Which exits get a loss at 0-based ``step`` of ``total``: all (``none``); ``rotational``: IC ``j`` when
    ``(j - step) mod R == 0`` (every R-th exit, shifted by one each step); ``gradual``: IC ``j`` once
    ``step / total >= fraction * (E - j) / E`` (switched on from the last IC to the first; all by ``fraction``
    of the phase, as torchtune's curriculum). The final exit is always on."""
    kind, E = o.curriculum, n_exits
    if kind == "none":
        on = [True] * (E - 1)
    elif kind == "rotational":
        on = [(j - step) % o.rotation == 0 for j in range(E - 1)]
    elif kind == "gradual":
        on = [step / max(total, 1) >= o.fraction * (E - j) / E for j in range(E - 1)]
    else:
        raise ConfigError(f"layerskip.curriculum: {kind!r}; choose none, rotational or gradual")
    return on + [True]


def curriculum_weights(weights: tuple[float, ...], mask: list[bool]) -> list[float]:
    """The weights of the exits that are on, renormalised to sum to 1 (LayerSkip's normalised loss scale)."""
    kept = [w if m else 0.0 for w, m in zip(weights, mask)]
    total = sum(kept)
    return [w / total for w in kept] if total > 0 else kept


def dropout_for(net: nn.Module, o: LayerSkipConfig, step: int, total: int):
    """The layer-dropout context of one training step (a no-op without ``rate``). ``net`` is what the phase
    runs: the backbone (phase 1) or the multi-exit model, possibly wrapped in DDP."""
    if not o.rate:
        return contextlib.nullcontext()
    module = getattr(net, "module", net)
    backbone = getattr(module, "backbone", module)
    rates = block_rates(backbone, o.rate, o.depth_scale, time_scale(o.time_scale, step, total))
    return layer_dropout(backbone, rates, o.per)
