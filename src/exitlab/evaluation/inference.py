"""Real dynamic inference: samples that exit leave the batch, the rest go on through the backbone.

:func:`early_exit` drives the model's one head walk (:meth:`MultiExitModel.walk`). At each exit the walk evaluates
that exit's head on the samples still running, and the router asks the policy (:meth:`Policy.step` and
``decide``) which of them stop, records their predictions, and tells the walk which samples go on; the walk
compacts their features and, for cascading heads, their previous logits, and the router their policy state. It
calls the same ``step`` as the simulator, on the same logits, so it makes the same decisions as
:func:`exitlab.sweep.simulate` on cached outputs.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError, ExitlabError
from ..models.adapter import HookedBackbone
from ..models.core import eval_mode
from .policies import Policy, State

FAST_CHECK = True  # see _Router._nobody_leaves; a switch only so benchmarks can measure what it saves


@dataclass
class EarlyExitResult:
    """What :func:`early_exit` returns, one row per input sample (in input order)."""

    preds: torch.Tensor  # [B] int64: the policy's prediction at the exit taken (regression: float values)
    exits: torch.Tensor  # [B] int64: index of the exit taken (0..E-1, final exit last)
    logits: torch.Tensor  # [B, C]: the raw logits of the exit taken
    flops: torch.Tensor | None  # [B] float64: cumulative FLOPs spent on each sample (None without costs)

    @property
    def mean_flops(self) -> float | None:
        return None if self.flops is None else self.flops.mean().item()


class _Router:
    """Per-call state of one early-exit pass: who is still running, and what the policy knows about them.

    Outcomes are collected as pieces (one per exit that someone leaves at) and put in input order once at the
    end, so an exit that nobody leaves at costs no copies, and a batch that nobody leaves early costs none at all.
    """

    def __init__(self, model, policy: Policy, threshold: float):
        self.model, self.policy, self.threshold = model, policy, threshold
        self.alive: torch.Tensor | None = None  # [b]: input rows still running (None: all of them, in order)
        self.state: State = {}
        self.pieces: list[tuple[int, torch.Tensor | None, torch.Tensor, torch.Tensor]] = []  # (exit, rows, pred, z)
        # Built-in decide on float32 scores: "does anyone leave?" is one reduction, compared on the host with the
        # threshold rounded to float32 exactly as torch rounds it (both sides are exact float32 values).
        self.quick = FAST_CHECK and type(policy).decide is Policy.decide
        self.t32 = struct.unpack("f", struct.pack("f", threshold))[0]

    def _nobody_leaves(self, score: torch.Tensor) -> bool:
        if not self.quick or score.dtype != torch.float32:
            return False
        one = score.numel() == 1  # batch 1: read the score itself, one reduction fewer
        if self.policy.exit_when == "above":
            return (score if one else score.max()).item() < self.t32  # NaN compares False: the full decision
        return (score if one else score.min()).item() > self.t32

    def _rows(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Input rows of the running samples selected by ``mask`` (all running samples when None)."""
        alive = self.alive if self.alive is not None else torch.arange(len(h), device=h.device)
        return alive if mask is None else alive[mask]

    def on_exit(self, j: int, logits: torch.Tensor, h: torch.Tensor) -> bool | torch.Tensor | None:
        """The model's head walk hands over exit ``j``'s logits ``[b, C]``; say who goes on (see ``ExitFn``)."""
        score, pred, self.state = self.policy.step(j, logits, self.state)
        if self._nobody_leaves(score):  # the common case at batch 1: no mask, no copies at all
            return True
        leave = self.policy.decide(score, self.threshold)  # [b] bool
        n_leave = int(leave.sum())  # one host sync per exit
        if n_leave == 0:
            return True
        if n_leave == len(leave):
            self.pieces.append((j, self.alive, pred, logits))
            return None  # everyone has left: stop the backbone
        keep = ~leave
        self.pieces.append((j, self._rows(h, leave), pred[leave], logits[leave]))
        self.alive = self._rows(h, keep)
        self.state = self.policy.compact(self.state, keep)
        return keep

    def finish(self, final_logits: torch.Tensor) -> None:
        _, pred, _ = self.policy.step(self.model.num_exits - 1, final_logits, self.state)
        self.pieces.append((self.model.num_exits - 1, self.alive, pred, final_logits))

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predictions, exit indices and logits in input order."""
        if len(self.pieces) == 1 and self.pieces[0][1] is None:  # everyone left at the same exit, in order
            j, _, pred, logits = self.pieces[0]
            return pred, torch.full(pred.shape, j, dtype=torch.long, device=pred.device), logits  # pred: maybe float
        rows = torch.cat([r for _, r, _, _ in self.pieces])  # [B]: a permutation of the input rows
        pred = torch.cat([p for _, _, p, _ in self.pieces])
        preds = torch.empty_like(pred)  # int64 classes, or float values for regression
        preds[rows] = pred
        exits = torch.empty_like(rows)
        exits[rows] = torch.cat([torch.full_like(r, j) for j, r, _, _ in self.pieces])
        z = torch.cat([z for _, _, _, z in self.pieces])
        logits = torch.empty_like(z)
        logits[rows] = z
        return preds, exits, logits


@torch.no_grad()
def early_exit(model, x, policy: Policy, threshold: float | None = None, *,
               costs: Sequence[float] | torch.Tensor | None = None) -> EarlyExitResult:
    """Classify the batch ``x`` with real early exit under ``policy`` at ``threshold`` (default: the policy's).

    Every sample stops computing at the first exit where the policy lets it leave; the others continue as a
    smaller batch. ``costs`` (cumulative FLOPs per exit, e.g. ``exit_costs(model).flops``; or ``[E, B]``, per exit
    and sample, e.g. ``length_costs(model, lengths)`` for text) fills ``result.flops``. ``x`` is a batch tensor, or
    for a text encoder a tokenizer's output (a mapping) or a packed tensor. The model runs in eval mode (BatchNorm
    statistics of a partial batch would differ and its running statistics would move) and gets its own modes back
    afterwards.
    """
    t = policy.threshold if threshold is None else threshold
    if t is None:
        raise ConfigError(f"policy {policy.name!r} has no threshold; pass threshold=... or set policy.threshold")
    t = policy.check_threshold(t, model.num_exits, model.num_classes)
    if isinstance(model.backbone, HookedBackbone):
        model.backbone.check_compaction()  # adapted modules: refuse the ones where samples cannot leave mid-way
    prepare = getattr(model.backbone, "prepare_input", None)  # text encoders: a tokenizer's mapping, packed
    if prepare is not None:
        x = prepare(x)
    router = _Router(model, policy, float(t))
    if x.shape[0] == 0:
        empty = torch.empty(0, dtype=torch.long, device=x.device)
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        preds, exits, logits = empty, empty, torch.empty(0, model.num_classes, dtype=dtype, device=x.device)
    else:
        with eval_mode(model):
            final = model.walk(x, router.on_exit)
            if final is not None:
                router.finish(final)
        preds, exits, logits = router.result()
        if not bool(torch.isfinite(logits).all()):  # one check per call; the simulation refuses these too
            raise ExitlabError("the model produced NaN or infinite logits for some inputs; check the inputs (scale, "
                               "normalisation) and the weights")
    flops = None
    if costs is not None:
        costs = torch.as_tensor(costs, dtype=torch.float64)  # [E], or [E, B] per sample (text: real lengths)
        flops = costs[exits.cpu()] if costs.ndim == 1 else costs[exits.cpu(), torch.arange(len(exits))]
    return EarlyExitResult(preds, exits, logits, flops)
