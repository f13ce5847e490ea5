"""Phases as data, regimes as short lists of phases, and per-exit loss weights.

Phase 1 trains the backbone alone (final exit only), phase 2 trains backbone and ICs together on a weighted sum of
per-exit losses, and phase 3 trains the ICs alone on a frozen backbone (no gradient, BatchNorm statistics fixed).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..runs.components import LOSS_WEIGHTS, REGIME_PRESETS, REGIMES
from ..runs.config import RunConfig
from ..runs.phase_config import PhaseConfig

log = logging.getLogger("exitlab")

TRAINS = {1: "backbone", 2: "all", 3: "heads"}


@dataclass(frozen=True)
class Phase:
    """One phase of a regime: which parameters train, for how many epochs, with which options.

    ``weights`` holds one loss weight per exit of the model, final exit last (0 for exits the phase does not
    train; the trained ones sum to 1). :func:`plan_phases` resolves them once the number of exits is known, and
    every consumer (the training loop, the gradient analysis) reads them from here.
    """

    kind: int  # 1, 2 or 3
    epochs: int
    options: PhaseConfig
    weights: tuple[float, ...] = ()
    flops: float = 0.0  # under budget_flops: this phase's share of the training FLOPs (else 0)
    steps: int = 0  # > 0: stop after this many optimizer steps (resolved from ``flops``), else run ``epochs``

    @property
    def trains(self) -> str:
        return TRAINS[self.kind]

    @property
    def name(self) -> str:
        return f"phase{self.kind}"


def phase_kinds(regime: str | list[int]) -> tuple[int, ...]:
    return tuple(regime) if isinstance(regime, list) else REGIMES.get(regime)


def regime_label(regime: str | list[int]) -> str:
    """A regime's name in paths and tables: its registered name, or "phases123" for a phase list."""
    return regime if isinstance(regime, str) else "phases" + "".join(map(str, regime))


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


def plan_phases(cfg: RunConfig, num_exits: int | None = None) -> list[Phase]:
    """The phases a run trains, with their epochs (from ``budget`` when set, else each phase's own ``epochs``).

    With ``num_exits`` (the model's exits, final included) each phase also gets its per-exit loss weights, and
    a phase that would have no IC to train is refused. Settings that a phase would ignore are refused either way.
    """
    kinds = phase_kinds(cfg.regime)
    options = [regime_options(cfg.regime, k, getattr(cfg, f"phase{k}")) for k in kinds]
    if cfg.budget_flops:
        return _plan_flops(cfg, kinds, options, num_exits)
    epochs = split_budget(kinds, cfg.budget, cfg.phase1_share) if cfg.budget else [o.epochs for o in options]
    if cfg.budget and min(epochs) < 1:
        raise ConfigError(f"budget: {cfg.budget} epochs cannot be split over phases {list(kinds)} "
                          f"(got {epochs}); raise budget or adjust phase1_share")
    for k, e in zip(kinds, epochs):
        if e < 1:
            raise ConfigError(f"phase{k}.epochs is 0, so phase {k} of regime {_label(cfg.regime)} would train "
                              f"nothing; set phase{k}.epochs >= 1, or set budget")
    for k, o, e in zip(kinds, options, epochs):
        check_used(k, o)
        check_head(k, o, _head(cfg))
        check_probes(k, o, cfg.grad_log_every)
        if o.patience and o.schedule == "cosine":
            log.warning("phase%d: patience %d with a cosine schedule over the maximum %d epochs: a phase stopped "
                        "early has not annealed; schedule: plateau (or constant) suits early stopping",
                        k, o.patience, e)
        if o.warmup_epochs > e:
            raise ConfigError(f"phase{k}.warmup_epochs is {o.warmup_epochs:g}, longer than the phase ({e} epochs); "
                              "shorten the warm-up")
    weights = [exit_weights(k, o, num_exits, cfg.regime) if num_exits else () for k, o in zip(kinds, options)]
    return [Phase(k, e, o, w) for k, e, o, w in zip(kinds, epochs, options, weights)]


def _plan_flops(cfg: RunConfig, kinds: tuple[int, ...], options: list[PhaseConfig], num_exits: int | None
               ) -> list[Phase]:
    """Phases under a training-FLOPs budget: shares as :func:`split_budget` gives epochs, in FLOPs. Their steps are
    resolved by :func:`resolve_steps` once the per-sample cost of each phase has been measured."""
    F = cfg.budget_flops
    if len(kinds) == 1:
        shares = [F]
    elif kinds[0] == 1:
        shares = [F * cfg.phase1_share] + [F * (1 - cfg.phase1_share) / (len(kinds) - 1)] * (len(kinds) - 1)
    else:
        shares = [F / len(kinds)] * len(kinds)
    for k, o in zip(kinds, options):
        check_used(k, o)
        check_head(k, o, _head(cfg))
        check_probes(k, o, cfg.grad_log_every)
    weights = [exit_weights(k, o, num_exits, cfg.regime) if num_exits else () for k, o in zip(kinds, options)]
    return [Phase(k, 0, o, w, flops=f) for k, o, w, f in zip(kinds, options, weights, shares)]


def resolve_steps(phases: list[Phase], step_flops: dict[int, float], batches_per_epoch: int) -> list[Phase]:
    """Steps and epochs of FLOPs-budgeted phases from the measured FLOPs of one training step of each phase kind.
    What a phase's whole steps leave of its share carries over to the next, so the run's total is within one step
    of the budget."""
    out, carry = [], 0.0
    for p in phases:
        if not p.flops:
            out.append(p)
            continue
        budget = p.flops + carry
        steps = int(budget // step_flops[p.kind])
        carry = budget - steps * step_flops[p.kind]
        if steps < 1:
            raise ConfigError(f"budget_flops: phase {p.kind} gets {budget:.3g} FLOPs, less than one of its training "
                              f"steps ({step_flops[p.kind]:.3g}); raise budget_flops")
        epochs = -(-steps // batches_per_epoch)
        if p.options.warmup_epochs > epochs:
            raise ConfigError(f"phase{p.kind}.warmup_epochs is {p.options.warmup_epochs:g}, longer than the phase "
                              f"({epochs} epochs under budget_flops); shorten the warm-up")
        out.append(dataclasses.replace(p, steps=steps, epochs=epochs))
    return out


def regime_options(regime: str | list[int], kind: int, o: PhaseConfig) -> PhaseConfig:
    """Phase ``kind``'s options under ``regime``: its preset (``layerskip``) fills the keys left at their defaults."""
    preset = REGIME_PRESETS.get(regime, {}).get(kind, {}) if isinstance(regime, str) else {}
    return _fill(o, preset, PhaseConfig())


def _fill(obj, preset: dict, default):
    """``obj`` with ``preset``'s values where ``obj`` holds ``default``'s; a dict fills a section key by key."""
    changes = {}
    for k, v in preset.items():
        if isinstance(v, dict):
            changes[k] = _fill(getattr(obj, k), v, getattr(default, k))
        elif getattr(obj, k) == getattr(default, k):
            changes[k] = v
    return dataclasses.replace(obj, **changes) if changes else obj


def _label(regime: str | list[int]) -> str:
    return repr(regime) if isinstance(regime, str) else str(list(regime))


def _head(cfg) -> str:
    """The head kind ``cfg.model`` gets: its own, or with none named the backbone's (msdnet's, text for Hugging Face
    encoders, sdn for the rest)."""
    m = cfg.model
    return m.head or ("msdnet" if m.backbone == "msdnet" else "text" if m.backbone.startswith("hf:") else "sdn")


def check_head(kind: int, o: PhaseConfig, head: str) -> None:
    """GPF's imitation loss needs GPF's heads; shared heads have no weights of their own for phase 3 to train."""
    if kind == 3 and head == "shared":
        raise ConfigError("model.head=shared: the ICs are the backbone's final classifier, which phase 3 keeps frozen, "
                          "so phase 3 would train nothing; use regime joint, mixed or layerskip, or another head")
    if o.gpf.on and head != "gpf":
        raise ConfigError(f"phase{kind}.gpf.imitation is set, but model.head is {head!r}; set model.head=gpf (GPF's "
                          "past-future heads), or drop gpf.imitation")


def check_probes(kind: int, o: PhaseConfig, grad_log_every: int) -> None:
    """The gradient-contribution logger models the weighted per-exit losses, not the training methods' terms."""
    methods = o.methods_on()
    if grad_log_every and methods:
        raise ConfigError(f"grad_log_every is set, but phase{kind}.{methods[0]} changes the objective in a way the "
                          "gradient-contribution logger does not model yet; drop one of them")


def check_used(kind: int, o: PhaseConfig) -> None:
    """Refuse settings that phase ``kind`` would silently ignore (each config section lists them: ``IGNORED``)."""
    for key, why in o.ignored_in(kind):
        raise ConfigError(f"phase{kind}.{key} is set, but phase {kind} ignores it: {why}; remove it")


def exit_weights(kind: int, o: PhaseConfig, num_exits: int, regime="") -> tuple[float, ...]:
    """Per-exit loss weights of a phase over all ``num_exits`` exits (0 where the phase does not train)."""
    if kind == 1:
        return (0.0,) * (num_exits - 1) + (1.0,)
    if num_exits < 2:
        what = "the ICs with the backbone" if kind == 2 else "the ICs on the frozen backbone"
        raise ConfigError(f"phase {kind} of regime {_label(regime)} trains {what}, but model.exits places no IC; "
                          "place at least one (e.g. model.exits=[0]) or train the backbone alone with regime=[1]")
    trained = num_exits if kind == 2 else num_exits - 1
    w = loss_weights(o.loss_weights, trained, f"phase{kind}.loss_weights").tolist()
    return tuple(w) + (() if kind == 2 else (0.0,))


# ---------------------------------------------------------------- loss weights: each returns weights summing to 1
# (the named weightings are in exitlab.registries: uniform_weights, sdn_weights)


def explicit_weights(values: list[float], n: int, key: str = "loss_weights") -> torch.Tensor:
    """A user list, normalised to sum to 1."""
    if len(values) != n:
        raise ConfigError(f"{key}: {len(values)} weights given but this phase trains {n} exits; give {n}")
    w = torch.tensor(values, dtype=torch.float32)
    return w / w.sum()


def loss_weights(spec: str | list[float], n: int, key: str = "loss_weights") -> torch.Tensor:
    if isinstance(spec, list):
        return explicit_weights(spec, n, key)
    return LOSS_WEIGHTS.get(spec)(n)
