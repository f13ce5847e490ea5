"""The training loop's two probe points: plain functions called after every optimizer step and after every epoch's
validation, with what they may look at. The analyses (``exitlab.analysis``) provide such functions; training never
imports them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..data import RunData
from ..models.core import MultiExitModel
from ..runs.rundir import RunDir
from .phases import Phase


@dataclass
class ProbeContext:
    """What a probe sees: the model mid-training, the phase, where in it the run is, the data and the run dir."""

    model: MultiExitModel
    phase: Phase
    phase_index: int
    epoch: int
    step: int
    data: RunData
    run: RunDir


@dataclass
class Probes:
    """Plain functions the training loop calls: ``on_step`` after every optimizer step, ``on_epoch`` after each
    epoch's validation. They run on rank 0 only and must not change the model (see ``exitlab.analysis``)."""

    on_step: list[Callable[[ProbeContext], None]] = field(default_factory=list)
    on_epoch: list[Callable[[ProbeContext], None]] = field(default_factory=list)
