"""Real dynamic inference: samples that exit leave the batch, the rest go on through the backbone.

:func:`early_exit` drives the backbone's ``run(x, taps, on_tap)`` protocol. At each exit it evaluates that exit's
head on the samples still running, asks the policy (:meth:`exitlab.policies.Policy.step` and ``decide``) which of
them stop, records their predictions, and hands back the feature of the others only (compaction), together with
their policy state and, for cascading heads, their previous logits. It calls the same ``step`` as the simulator,
on the same logits, so it makes the same decisions as :func:`exitlab.sweep.simulate` on cached outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import ConfigError
from .policies import Policy, State


@dataclass
class EarlyExitResult:
    """What :func:`early_exit` returns, one row per input sample (in input order)."""

    preds: torch.Tensor  # [B] int64: the policy's prediction at the exit taken
    exits: torch.Tensor  # [B] int64: index of the exit taken (0..E-1, final exit last)
    logits: torch.Tensor  # [B, C]: the raw logits of the exit taken
    flops: torch.Tensor | None  # [B] float64: cumulative FLOPs spent on each sample (None without costs)

    @property
    def mean_flops(self) -> float | None:
        return None if self.flops is None else self.flops.mean().item()


class _Router:
    """Per-call state of one early-exit pass: who is still running, and what the policy knows about them."""

    def __init__(self, model, policy: Policy, threshold: float, batch: int, device: torch.device):
        self.model, self.policy, self.threshold = model, policy, threshold
        self.slot = {b: j for j, b in enumerate(model.exits)}
        self.alive = torch.arange(batch, device=device)  # [b]: input rows still running
        self.state: State = {}
        self.prev: torch.Tensor | None = None  # [b, C] previous exit's logits (cascading heads)
        self.preds = torch.empty(batch, dtype=torch.long, device=device)
        self.exits = torch.empty(batch, dtype=torch.long, device=device)
        self.logits: torch.Tensor | None = None

    def record(self, j: int, logits: torch.Tensor, pred: torch.Tensor, rows: torch.Tensor | None) -> None:
        """Store the outcome of the samples leaving at exit ``j`` (``rows`` of the running batch; None = all)."""
        if self.logits is None:
            self.logits = logits.new_empty(len(self.preds), logits.shape[-1])
        idx = self.alive if rows is None else self.alive[rows]
        self.preds[idx] = pred if rows is None else pred[rows]
        self.exits[idx] = j
        self.logits[idx] = logits if rows is None else logits[rows]

    def on_tap(self, block: int, h: torch.Tensor) -> torch.Tensor | None:
        j = self.slot[block]
        logits = self.model.heads[j](h, self.prev)  # [b, C]
        score, pred, self.state = self.policy.step(j, logits, self.state)
        leave = self.policy.decide(score, self.threshold)  # [b] bool
        n_leave = int(leave.sum())  # one host sync per exit
        if n_leave == 0:  # nobody leaves: no copies at all
            self.prev = logits
            return h
        if n_leave == len(leave):
            self.record(j, logits, pred, None)
            return None  # everyone has left: stop the backbone
        keep = ~leave
        self.record(j, logits, pred, leave)
        self.alive = self.alive[keep]
        self.state = self.policy.compact(self.state, keep)
        self.prev = logits[keep]
        return h[keep]

    def finish(self, final_logits: torch.Tensor) -> None:
        j = self.model.num_exits - 1
        _, pred, _ = self.policy.step(j, final_logits, self.state)
        self.record(j, final_logits, pred, None)


@torch.no_grad()
def early_exit(model, x: torch.Tensor, policy: Policy, threshold: float | None = None, *,
               costs: Sequence[float] | torch.Tensor | None = None) -> EarlyExitResult:
    """Classify the batch ``x`` with real early exit under ``policy`` at ``threshold`` (default: the policy's).

    Every sample stops computing at the first exit where the policy lets it leave; the others continue as a
    smaller batch. ``costs`` (cumulative FLOPs per exit, e.g. ``exit_costs(model).flops``) fills
    ``result.flops``. The model should be in eval mode (BatchNorm statistics of a partial batch differ).
    """
    t = policy.threshold if threshold is None else threshold
    if t is None:
        raise ConfigError(f"policy {policy.name!r} has no threshold; pass threshold=... or set policy.threshold")
    n_classes = model.num_classes
    policy.check_thresholds([t], model.num_exits, n_classes)
    router = _Router(model, policy, float(t), x.shape[0], x.device)
    if x.shape[0] > 0:
        final = model.backbone.run(x, set(model.exits), router.on_tap)
        if final is not None:
            router.finish(final)
    logits = router.logits if router.logits is not None else x.new_empty(0, n_classes)
    flops = None
    if costs is not None:
        costs = torch.as_tensor(costs, dtype=torch.float64)
        flops = costs[router.exits.cpu()]
    return EarlyExitResult(router.preds, router.exits, logits, flops)
