"""How one phase trains: :class:`PhaseConfig`, with one typed section per training method.

A training method (LayerSkip, GPF, L2W) is one module under ``exitlab.training`` (or ``exitlab.models`` for GPF's heads)
and one section here: ``phase2.layerskip.*``, ``phase2.gpf.*``, ``phase2.l2w.*``. The sections live here, not next to
their modules, because the config schema sits below training in the package order; each module reads only its own
section. A section says when it is ``on``, and which phases ignore which of its keys (``IGNORED``, refused by the
planner), so the planner, the gradient analysis and the probes need no per-method code.

Self-distillation, gradient equilibrium, label smoothing and the per-exit weights stay flat: they are options of the one
phase objective (the gradient analysis models each of them exactly), not methods with a module and state of their own.

Before the sections, their keys were flat (``phase2.layer_drop``). ``PhaseConfig.MOVED`` maps each to its new key:
user input with an old key is refused naming the new one; a run directory's saved config is read through
:func:`upgrade_phase`, and run signatures hash :func:`flat_phase`, so older runs still load, resume and share phase 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

from ..errors import ConfigError
from .components import LOSS_WEIGHTS, OPTIMIZERS, SCHEDULES
from .typed import check_range


def _choose(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r}; choose {_either(choices)}")


def _either(names) -> str:
    names = list(names)
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


@dataclass
class LayerSkipConfig:
    """LayerSkip (Elhoushi et al., ACL 2024): layer dropout over depth and time, and an exit curriculum
    (:mod:`exitlab.training.layerskip`)."""

    rate: float = 0.0  # the largest layer-dropout rate p_max, in [0, 1); 0: no layer dropout (phases 1 and 2)
    depth_scale: str = "exp"  # its growth over depth: exp (LayerSkip), linear (stochastic depth) or uniform
    time_scale: str = "constant"  # its growth over the phase's steps: constant, exp (LayerSkip) or linear
    per: str = "sample"  # skip blocks per sample (stochastic depth) or per batch
    curriculum: str = "none"  # which exits get a loss at each step: none (all), rotational, gradual (phase 2)
    rotation: int = 2  # rotational: every R-th IC gets a loss, shifted by one exit at every step
    fraction: float = 0.5  # gradual: every IC is on from this fraction of the phase's steps, in (0, 1]

    IGNORED: ClassVar[dict[int, dict[str, str]]] = {
        1: {"curriculum": "it trains one exit, the final one"},
        3: {"rate": "its backbone is frozen (in eval mode), so no block is dropped",
            "curriculum": "the exit curriculum is implemented for phase 2 (joint training) only"}}

    def __post_init__(self) -> None:
        check_range("rate", self.rate, lo=0, hi=1, hi_open=True)
        _choose("depth_scale", self.depth_scale, ("exp", "linear", "uniform"))
        _choose("time_scale", self.time_scale, ("constant", "exp", "linear"))
        _choose("per", self.per, ("sample", "batch"))
        _choose("curriculum", self.curriculum, ("none", "rotational", "gradual"))
        check_range("rotation", self.rotation, lo=1)
        check_range("fraction", self.fraction, lo=0, hi=1, lo_open=True)

    @property
    def on(self) -> bool:
        return self.rate > 0 or self.curriculum != "none"


@dataclass
class GPFConfig:
    """GPF (Liao et al., NAACL 2021): the imitation loss of future states; needs ``model.head: gpf``
    (:mod:`exitlab.models.gpf`)."""

    imitation: float = 0.0  # weight of the imitation loss of future states; 0: off (phases 2 and 3)

    IGNORED: ClassVar[dict[int, dict[str, str]]] = {
        1: {"imitation": "it trains the backbone alone, without GPF's heads"}}

    def __post_init__(self) -> None:
        check_range("imitation", self.imitation, lo=0)

    @property
    def on(self) -> bool:
        return self.imitation > 0


@dataclass
class L2WConfig:
    """L2W (Han et al., ECCV 2022): per-sample, per-exit loss weights from a meta-learnt weight net
    (:mod:`exitlab.training.l2w`)."""

    epsilon: float = 0.0  # > 0 turns L2W on (phase 2): weights 1 + eps (u - mean u) from the weight net
    meta_lr: float = 1e-4  # Adam learning rate of the weight net
    meta_interval: int = 1  # a meta step every N training steps
    target: int = 20  # target exit shares q_j proportional to (index / 20)^j, index in 1..39
    hidden: int = 100  # hidden units of the weight net
    constraint: str = "mat"  # centre the weights over the whole matrix (mat), per exit (row) or per sample (col)
    meta_subsets: str = "disjoint"  # disjoint (the reference) or overlapping (the paper code base)

    IGNORED: ClassVar[dict[int, dict[str, str]]] = {
        1: {"epsilon": "L2W weights the losses of several exits; phase 1 trains one"},
        3: {"epsilon": "L2W is implemented for phase 2 (joint training) only"}}

    def __post_init__(self) -> None:
        check_range("epsilon", self.epsilon, lo=0)
        check_range("meta_lr", self.meta_lr, lo=0, lo_open=True)
        for name in ("meta_interval", "target", "hidden"):
            check_range(name, getattr(self, name), lo=1)
        check_range("target", self.target, hi=39)
        _choose("constraint", self.constraint, ("mat", "row", "col"))
        _choose("meta_subsets", self.meta_subsets, ("disjoint", "overlapping"))

    @property
    def on(self) -> bool:
        return self.epsilon > 0


@dataclass
class PhaseConfig:
    """How one phase trains. Every phase starts a fresh optimizer and schedule."""

    epochs: int = 2  # epochs of this phase (the maximum, when patience > 0); overridden by `budget`
    optimizer: str = "sgd"  # sgd or adamw
    lr: float = 0.05  # peak learning rate
    momentum: float = 0.9  # SGD momentum, in [0, 1)
    weight_decay: float = 5e-4  # weight decay
    decay_params: str = "all"  # all, or weights: no decay on norm layers, biases, position embeddings, CLS tokens
    schedule: str = "cosine"  # cosine (per step, to zero), constant, or plateau (constant, cut on plateaus)
    warmup_epochs: float = 0.0  # linear learning-rate warm-up from 0 over this many epochs, then the schedule
    grad_clip: float = 0.0  # > 0: clip the global gradient norm of the trained parameters to this value
    label_smoothing: float = 0.0  # label smoothing of every exit's cross-entropy, in [0, 1)
    patience: int = 0  # > 0: stop after this many epochs without a better validation score, restore the best
    stop_rule: str = "mean"  # mean: the mean accuracy of the trained exits stalls; every: every trained exit stalls
    plateau_patience: int = 2  # schedule plateau: epochs without a better score before the lr is cut
    plateau_factor: float = 0.1  # schedule plateau: the cut, in (0, 1)
    loss_weights: Union[str, list[float]] = "uniform"  # uniform, sdn, or one weight per trained exit  # noqa: UP007
    grad_equilibrium: bool = False  # gradient equilibrium of Li et al. 2019 (phase 2 only)
    distill: float = 0.0  # weight of self-distillation from the final exit into the ICs (phase 2 and 3)
    distill_temperature: float = 3.0  # softmax temperature for self-distillation
    layerskip: LayerSkipConfig = field(default_factory=LayerSkipConfig)  # layer dropout and exit curriculum
    gpf: GPFConfig = field(default_factory=GPFConfig)  # GPF's imitation loss
    l2w: L2WConfig = field(default_factory=L2WConfig)  # L2W's meta-learnt sample weights

    IGNORED: ClassVar[dict[int, dict[str, str]]] = {
        1: {"loss_weights": "it trains one exit, the final one",
            "grad_equilibrium": "it trains the backbone alone, without ICs",
            "distill": "it trains the backbone alone, with no ICs to distil into"},
        3: {"grad_equilibrium": "its backbone is frozen, and gradient equilibrium rescales the backbone's gradients"}}
    MOVED: ClassVar[dict[str, str]] = {
        "layer_drop": "layerskip.rate", "layer_drop_scale": "layerskip.depth_scale",
        "layer_drop_time": "layerskip.time_scale", "layer_drop_per": "layerskip.per",
        "exit_curriculum": "layerskip.curriculum", "curriculum_rotation": "layerskip.rotation",
        "curriculum_fraction": "layerskip.fraction", "gpf_imitation": "gpf.imitation", "l2w_epsilon": "l2w.epsilon",
        "l2w_meta_lr": "l2w.meta_lr", "l2w_meta_interval": "l2w.meta_interval", "l2w_target": "l2w.target",
        "l2w_hidden": "l2w.hidden", "l2w_constraint": "l2w.constraint", "l2w_meta_subsets": "l2w.meta_subsets"}

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer: unknown optimizer {self.optimizer!r}; choose {_either(OPTIMIZERS.names())}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule: unknown schedule {self.schedule!r}; choose {_either(SCHEDULES.names())}")
        if self.decay_params not in ("all", "weights"):
            raise ConfigError(f"decay_params: {self.decay_params!r}; choose all or weights (no decay on norm layers, "
                              "biases, position embeddings and CLS tokens)")
        check_range("epochs", self.epochs, lo=0)
        check_range("lr", self.lr, lo=0, lo_open=True)
        check_range("momentum", self.momentum, lo=0, hi=1, hi_open=True)
        for name in ("weight_decay", "warmup_epochs", "grad_clip", "patience", "distill"):
            check_range(name, getattr(self, name), lo=0)
        check_range("label_smoothing", self.label_smoothing, lo=0, hi=1, hi_open=True)
        check_range("plateau_patience", self.plateau_patience, lo=1)
        check_range("plateau_factor", self.plateau_factor, lo=0, hi=1, lo_open=True, hi_open=True)
        if self.stop_rule not in ("mean", "every"):
            raise ConfigError(f"stop_rule: {self.stop_rule!r}; choose mean (the trained exits' mean accuracy stalls) "
                              "or every (every trained exit stalls, as in the paper's code)")
        check_range("distill_temperature", self.distill_temperature, lo=0, lo_open=True)
        self._check_loss_weights()

    def _check_loss_weights(self) -> None:
        w = self.loss_weights
        if isinstance(w, str) and w not in LOSS_WEIGHTS:
            raise ConfigError(f"loss_weights: unknown weighting {w!r}; choose {', '.join(LOSS_WEIGHTS.names())}, "
                              "or a list of one weight per trained exit")
        if isinstance(w, list) and (not w or any(v < 0 for v in w) or sum(w) <= 0):
            raise ConfigError(f"loss_weights: {w} must be non-negative with a positive sum")

    def methods(self) -> dict[str, Any]:
        """The training-method sections, by name (``{"layerskip": LayerSkipConfig(...), ...}``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if dataclasses.is_dataclass(getattr(self, f.name))}

    def methods_on(self) -> list[str]:
        """The names of the sections whose method this phase uses."""
        return [name for name, section in self.methods().items() if section.on]

    def ignored_in(self, kind: int) -> list[tuple[str, str]]:
        """The keys set here (away from their defaults) that phase ``kind`` would ignore, with why: ``[(key, why)]``
        (keys dotted within the phase, ``layerskip.rate``)."""
        found = []
        for obj, prefix in [(self, "")] + [(s, f"{n}.") for n, s in self.methods().items()]:
            default = type(obj)()
            found += [(f"{prefix}{key}", why) for key, why in obj.IGNORED.get(kind, {}).items()
                      if getattr(obj, key) != getattr(default, key)]
        return found


def upgrade_phase(phase: dict) -> dict:
    """A phase's keys as a config saved before the method sections wrote them, moved into their sections."""
    out = {k: v for k, v in phase.items() if k not in PhaseConfig.MOVED}
    for old, new in PhaseConfig.MOVED.items():
        if old in phase:
            section, key = new.split(".")
            out[section] = {**out.get(section, {}), key: phase[old]}
    return out


def flat_phase(phase: dict) -> dict:
    """A phase's dict with the sections' keys flat, under their names from before the sections (the inverse of
    :func:`upgrade_phase`); a section's keys without such a name stay in it. What run signatures hash."""
    back = {new: old for old, new in PhaseConfig.MOVED.items()}
    out = dict(phase)
    for section in [k for k, v in phase.items() if isinstance(v, dict)]:
        rest = {}
        for key, value in phase[section].items():
            if f"{section}.{key}" in back:
                out[back[f"{section}.{key}"]] = value
            else:
                rest[key] = value
        if rest:
            out[section] = rest
        else:
            del out[section]
    return out
