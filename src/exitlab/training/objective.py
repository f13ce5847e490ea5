"""The training objective, written once: each exit's terms, and the phase loss as their weighted sum.

:func:`exit_terms` runs a phase's forward on a batch and returns its :class:`ExitTerms`: every exit's loss
(cross-entropy with the phase's label smoothing, or the squared error of a regression), weighted by the phase's
per-exit weights (after the exit curriculum; L2W: sample-weighted), self-distillation's KL from the detached final
exit to each IC, and GPF's per-IC imitation loss. :meth:`ExitTerms.loss` is what the optimiser minimises
(:func:`phase_loss`); :meth:`ExitTerms.per_exit` splits the same objective into one additive term per exit, which
the gradient analysis (:mod:`exitlab.analysis.gradients`) differentiates one by one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.core import MultiExitModel
from ..models.gpf import gpf_imitation_terms, imitation_total
from .l2w import per_sample_losses
from .layerskip import curriculum_weights, dropout_for, exit_mask
from .phases import Phase, exit_weights


def exit_losses(outs: list[torch.Tensor], y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of every exit at once: ``[E]``. Float targets are a regression (one output per exit, as for
    STS-B): the mean squared error of every exit instead."""
    logits = torch.stack(outs).float()  # [E, B, C]; a causal LM's [E, B, T, V] with next-token targets y [B, T]
    if logits.ndim == 4:
        E, B, T, V = logits.shape
        ce = F.cross_entropy(logits.reshape(E * B * T, V), y.repeat(E, 1).reshape(-1), reduction="none",
                             label_smoothing=label_smoothing)
        return ce.view(E, B * T).mean(1)
    E, B, C = logits.shape
    if y.is_floating_point():
        if C != 1:
            raise ConfigError(f"float labels are regression targets, but the model has {C} outputs per exit; build "
                              "it with one output (exitlab.from_hf(..., task='regression')) or give integer labels")
        return (logits[..., 0] - y.float()[None]).pow(2).mean(1)
    ce = F.cross_entropy(logits.reshape(E * B, C), y.repeat(E), reduction="none", label_smoothing=label_smoothing)
    return ce.view(E, B).mean(1)


def distill_loss(outs: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """KL from the (detached) final exit to each IC, scaled by T^2 (Hinton et al.); ``[E-1]``."""
    t = temperature
    target = F.softmax(outs[-1].detach().float() / t, dim=-1)
    ics = torch.stack(outs[:-1]).float() / t  # [E-1, B, C]
    kl = (target * (target.clamp_min(1e-12).log() - F.log_softmax(ics, -1))).sum(-1).mean(-1)
    return kl * t * t


def phase_module(model: MultiExitModel, phase: Phase) -> nn.Module:
    """The module a phase calls: the backbone alone in phase 1, the whole model in phases 2 and 3."""
    return model.backbone if phase.kind == 1 else model


@dataclass
class ExitTerms:
    """One batch's objective, exit by exit. ``loss()`` = ``weighted.sum() + distill * kl.mean() + gpf * mean(
    imitation)``; ``per_exit()`` is the same sum split into one term per exit."""

    kind: int  # the phase kind: phase 1 trains the bare backbone, whose one output is the final exit
    losses: torch.Tensor  # [E] (phase 1: [1]): each exit's loss, unweighted (what the metrics report)
    weighted: torch.Tensor  # [E] (phase 1: [1]): w_k times exit k's loss (L2W: its sample-weighted loss)
    distill: float = 0.0  # the self-distillation coefficient
    kl: torch.Tensor | None = None  # [E-1]: each IC's KL from the detached final exit (T^2-scaled)
    gpf: float = 0.0  # GPF's imitation coefficient
    imitation: list[torch.Tensor] = field(default_factory=list)  # [K-1] 0-d: the ICs' imitation terms, the last none

    def loss(self) -> torch.Tensor:
        """The phase loss the optimiser minimises (summed in one fixed order, so training is reproducible)."""
        if self.kind == 1:
            return self.weighted[0]
        loss = self.weighted.sum()
        if self.kl is not None:
            loss = loss + self.distill * self.kl.mean()
        if self.gpf:
            loss = loss + self.gpf * imitation_total(self.imitation)
        return loss

    def per_exit(self, num_exits: int) -> torch.Tensor:
        """Each exit's additive term ``T_k`` of :meth:`loss`, ``[num_exits]``: ``w_k L_k``, plus for IC ``k``
        ``distill KL_k / (E-1)`` and ``gpf I_k / (K-1)``. Phase 1's single term is the final exit's."""
        if self.kind == 1:
            return torch.cat([self.weighted.new_zeros(num_exits - 1), self.weighted])
        pad = self.weighted.new_zeros(1)
        terms = self.weighted
        if self.kl is not None:
            terms = terms + torch.cat([self.distill * self.kl / len(self.kl), pad])
        if self.gpf and self.imitation:
            own = torch.stack(self.imitation) * (self.gpf / len(self.imitation))  # [K-1]
            terms = terms + torch.cat([own, pad.new_zeros(len(terms) - len(own))])
        return terms


def phase_forward(net: nn.Module, phase: Phase, x: torch.Tensor, *, step: int = 0, total: int = 1
                  ) -> tuple[list[torch.Tensor], list | None]:
    """The phase's forward: its outputs (phase 1: the bare backbone's, a list of one) and, for GPF's imitation
    loss, the ICs' input features (``None`` without it). Layer dropout applies at ``step`` of ``total``."""
    opts = phase.options
    feats: list | None = [] if opts.gpf.on and phase.kind != 1 else None
    with dropout_for(net, opts.layerskip, step, total):
        if phase.kind == 1:
            return [net(x)], None
        extra = {} if feats is None else {"feats": feats}
        outs = net(x, grad_equilibrium=opts.grad_equilibrium, **extra) if phase.kind == 2 else net(x, **extra)
    return outs, feats


def exit_terms(net: nn.Module, phase: Phase, x: torch.Tensor, y: torch.Tensor, *, step: int = 0, total: int = 1,
               weigh: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ExitTerms:
    """The phase's objective on a batch, exit by exit, at 0-based ``step`` of the phase's ``total`` (which
    layer-dropout rates and curriculum exits apply; see :mod:`exitlab.training.layerskip`). ``weigh`` maps
    per-sample losses ``[B, E]`` to sample weights ``[B, E]`` (L2W, :mod:`exitlab.training.l2w`).

    ``net`` is what the phase runs (see :func:`phase_module`): the bare backbone in phase 1, so the heads are not
    even evaluated, and the multi-exit model otherwise. Either may be wrapped in DDP. The per-exit weights are the
    phase's own (:attr:`Phase.weights`, resolved when the phases were planned; a Phase built by hand without them
    gets them from :func:`exitlab.training.phases.exit_weights`, the same resolution).
    """
    opts = phase.options
    outs, feats = phase_forward(net, phase, x, step=step, total=total)
    losses = exit_losses(outs, y, opts.label_smoothing)
    if phase.kind == 1:
        return ExitTerms(1, losses, losses)
    weights = phase.weights or exit_weights(phase.kind, opts, len(losses))  # a hand-built Phase: resolve here
    if len(weights) != len(losses):
        raise ConfigError(f"{phase.name} was planned for {len(weights)} exits but the model has {len(losses)}; "
                          "plan the phases with plan_phases(cfg, model.num_exits)")
    if opts.layerskip.curriculum != "none":
        weights = curriculum_weights(weights, exit_mask(opts.layerskip, len(losses), step, total))
    per_exit = losses if weigh is None else _sample_weighted(outs, y, opts.label_smoothing, weigh)
    weighted = _on_device(tuple(weights), losses.device) * per_exit
    kl = distill_loss(outs, opts.distill_temperature) if opts.distill > 0 and len(outs) > 1 else None
    imitation = gpf_imitation_terms(getattr(net, "module", net).heads, feats) if feats is not None else []
    return ExitTerms(phase.kind, losses, weighted, opts.distill, kl, opts.gpf.imitation, imitation)


def phase_loss(net: nn.Module, phase: Phase, x: torch.Tensor, y: torch.Tensor, *, step: int = 0, total: int = 1,
               weigh: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The phase's objective (the weighted sum of :func:`exit_terms`) and the per-exit losses it was built from."""
    terms = exit_terms(net, phase, x, y, step=step, total=total, weigh=weigh)
    return terms.loss(), terms.losses


def _sample_weighted(outs: list[torch.Tensor], y: torch.Tensor, label_smoothing: float, weigh) -> torch.Tensor:
    """Per exit, the mean over the batch of the sample-weighted losses: ``[E]``."""
    losses = per_sample_losses(outs, y, label_smoothing)  # [B, E]
    return (weigh(losses) * losses).mean(0)


@functools.lru_cache(maxsize=64)
def _on_device(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """``values`` as a float32 tensor on ``device``, copied once: a fresh host-to-device copy every step would make
    the host wait for the device (a pageable copy synchronises the stream). Callers must not modify it."""
    with torch.inference_mode(False):  # a normal tensor even if first asked for under inference mode
        return torch.tensor(values, device=device)
