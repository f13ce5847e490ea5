"""The one training loop for a phase (its objective is :mod:`exitlab.training.objective`), and the all-exits
evaluation pass."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data import Loader
from ..errors import TrainingError
from ..models.core import MultiExitModel, eval_mode
from ..models.flops import count_flops
from ..runs import faults
from ..runs.components import OPTIMIZERS, SCHEDULES
from .distributed import SINGLE, DistInfo, all_sum
from .finetune import final_classifier_params, finetune_groups, freeze_embeddings
from .l2w import L2W
from .objective import phase_loss, phase_module
from .phases import Phase


def set_trainable(model: MultiExitModel, phase: Phase) -> list[nn.Parameter]:
    """Freeze what the phase does not train and return the trainable parameters."""
    train_backbone = phase.trains in ("backbone", "all")
    train_heads = phase.trains in ("heads", "all")
    for p in model.backbone.parameters():
        p.requires_grad_(train_backbone)
    for p in model.heads.parameters():
        p.requires_grad_(train_heads)
    if train_backbone:
        freeze_embeddings(model, phase.options.finetune)
    if phase.final_head:  # phase 3 on an untouched pretrained backbone: its new classifier trains with the ICs
        for p in final_classifier_params(model):
            p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def set_modes(model: MultiExitModel, phase: Phase) -> None:
    """Train mode, except a frozen backbone stays in eval mode so its BatchNorm statistics do not move."""
    model.train()
    if phase.trains == "heads":
        model.backbone.eval()


def lr_at(phase: Phase, step: int, total: int, warmup: int = 0, scale: float = 1.0) -> float:
    """Learning rate after ``step`` of ``total`` steps: a linear warm-up over the first ``warmup`` steps, then the
    phase's schedule over the rest (cosine to zero, constant, plateau), times ``scale`` (plateau cuts)."""
    base = phase.options.lr * scale
    if step < warmup:
        return base * (step + 1) / warmup
    if total <= warmup:
        return base
    return base * SCHEDULES.get(phase.options.schedule)((step - warmup) / (total - warmup))


def param_groups(model: nn.Module, params: list[nn.Parameter], decay_params: str, weight_decay: float) -> list[dict]:
    """One group with weight decay, and with ``decay_params="weights"`` a second one without it for norm layers,
    biases, position embeddings and CLS tokens (every 0-d or 1-d parameter, and any named ``pos``/``cls``)."""
    if decay_params == "all":
        return [{"params": params, "weight_decay": weight_decay}]
    trained = {id(p) for p in params}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if id(p) not in trained:
            continue
        leaf = name.rsplit(".", 1)[-1]
        skip = p.ndim <= 1 or leaf in ("pos", "cls", "pos_embed", "cls_token", "position_embeddings")
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(params: list[nn.Parameter], phase: Phase, model: nn.Module | None = None) -> torch.optim.Optimizer:
    """The phase's optimizer over ``params`` (``model`` names them, for ``decay_params="weights"``)."""
    o = phase.options
    groups = param_groups(model, params, o.decay_params, o.weight_decay) if model is not None else \
        [{"params": params, "weight_decay": o.weight_decay}]
    if model is not None:
        groups = finetune_groups(model, groups, o.finetune, o.lr)  # per-group lr_scale: backbone, heads, layers
    return OPTIMIZERS.get(o.optimizer)(groups, lr=o.lr, momentum=o.momentum)


def step_flops(model: MultiExitModel, phase: Phase, x: torch.Tensor, y: torch.Tensor) -> int:
    """Measured FLOPs of one training step of ``phase`` on the batch: the forward and backward pass of its objective
    (FlopCounterMode; a frozen backbone costs its forward only), not the optimizer update. The model's flags, modes,
    buffers (BatchNorm statistics), gradients and the random state are left exactly as they were."""
    flags = {p: p.requires_grad for p in model.parameters()}
    grads = {p: p.grad for p in model.parameters()}
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]

    def step() -> None:
        loss, _ = phase_loss(phase_module(model, phase), phase, x, y)
        loss.backward()

    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    try:
        set_trainable(model, phase)
        set_modes(model, phase)
        with torch.random.fork_rng(devices=devices):
            return count_flops(step, grad=True).total
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p in model.parameters():
            p.requires_grad_(flags[p])
            p.grad = grads[p]
        for m, training in modes:
            m.train(training)


CHECK_EVERY = 32  # steps between the finiteness checks that read losses back from the device (one sync each)


@dataclass
class EpochStats:
    loss: float = 0.0
    exit_losses: list[float] = field(default_factory=list)
    steps: int = 0
    samples: int = 0  # on this rank


@dataclass
class _Pending:
    """The steps since the last check, still on the device: step number, rank-averaged ``[loss, *per_exit]`` and
    the gradient flag of each (``None``: no gradients to check)."""

    rows: list[tuple[int, torch.Tensor, torch.Tensor | None]] = field(default_factory=list)
    exit_sums: torch.Tensor | None = None  # [E]: per-exit losses summed over the epoch's steps

    def add(self, step: int, synced: torch.Tensor, grads_ok: torch.Tensor | None) -> None:
        self.rows.append((step, synced, grads_ok))
        per_exit = synced[1:]
        self.exit_sums = per_exit if self.exit_sums is None else self.exit_sums + per_exit


def _read_pending(pending: _Pending) -> list[tuple[int, list[float], bool]]:
    """Every pending step as (step, [loss, *per_exit], gradients finite), read back in one host sync."""
    if not pending.rows:
        return []
    losses = torch.stack([v for _, v, _ in pending.rows])  # [n, 1+E]
    ones = torch.ones((), dtype=torch.bool, device=losses.device)
    flags = torch.stack([ones if g is None else g for _, _, g in pending.rows])  # [n]
    table = torch.cat([losses, flags[:, None].to(losses.dtype)], 1).tolist()  # the one host sync
    out = [(step, row[:-1], row[-1] == 1.0) for (step, _, _), row in zip(pending.rows, table)]
    pending.rows.clear()
    return out


def _check_pending(pending: _Pending, stats: EpochStats, phase: Phase, where: str) -> None:
    """Raise TrainingError naming the first pending step whose loss or gradient was not finite; otherwise add the
    steps' losses to ``stats``. The steps after a bad one ran on spoilt weights, but nothing has saved them yet."""
    for step, row, grads_ok in _read_pending(pending):
        per_exit = row[1:]
        if not all(math.isfinite(v) for v in row):
            bad = [i for i, v in enumerate(per_exit) if not math.isfinite(v)]
            raise TrainingError(f"non-finite loss at {where} step {step} (exit {bad[0] if bad else '?'} of the "
                                f"phase's {len(per_exit)}); lower the learning rate or check the data. The last good "
                                "checkpoint is kept")
        if not grads_ok:
            raise TrainingError(f"non-finite gradient at {where} step {step} (the loss was finite: per-exit losses "
                                f"{[round(v, 4) for v in per_exit]}); lower the learning rate or set "
                                f"{phase.name}.grad_clip (e.g. 1.0). The last good checkpoint is kept")
        stats.loss += row[0]


def _finish_epoch(pending: _Pending, stats: EpochStats, phase: Phase, where: str) -> EpochStats:
    """The epoch's last check, then the mean losses (exit means read back in one more sync)."""
    _check_pending(pending, stats, phase, where)
    if stats.steps:
        stats.loss /= stats.steps
        stats.exit_losses = (pending.exit_sums / stats.steps).tolist()
    return stats


@dataclass
class PhaseState:
    """What one phase's training loop works with, built once per phase: what runs (``net``, see
    :func:`~exitlab.training.objective.phase_module`, possibly DDP-wrapped), the phase, its training batches and
    optimizer, the learning-rate schedule's length and warm-up, and the step reached (advanced by
    :func:`train_epoch`). ``lr_scale`` (plateau cuts) and ``on_step`` (the step probe point) may change between
    epochs. ``check_every``: steps between finiteness checks (each one host sync); ``l2w``: L2W's state, if any."""

    net: nn.Module
    phase: Phase
    loader: Loader
    opt: torch.optim.Optimizer
    total_steps: int  # the schedule's length in steps
    step: int = 0  # optimizer steps taken in the phase so far
    amp: str = "none"
    warmup_steps: int = 0
    lr_scale: float = 1.0
    info: DistInfo = SINGLE
    l2w: L2W | None = None
    on_step: Callable[[int], None] | None = None
    check_every: int = CHECK_EVERY


def train_epoch(state: PhaseState, *, max_steps: int | None = None, where: str = "",
                progress: Callable | None = None) -> EpochStats:
    """One pass over ``state.loader`` (at most ``max_steps`` steps: a FLOPs-budgeted phase ends mid-epoch); advances
    ``state.step``. Raises TrainingError on a non-finite loss or gradient, naming the step, phase (``where``) and exit
    of the first one. With ``state.l2w`` every step starts with L2W's meta step and weights the per-sample losses.

    No step waits for the device: losses stay on it and are read back every ``check_every`` steps and at the end
    of the epoch (``on_step`` probes read the model, so with one the check runs after every step). A bad step is
    therefore reported up to ``check_every - 1`` steps late, always before the epoch returns, so no checkpoint
    ever holds its weights. Under DDP the losses are summed over ranks every step (asynchronously on NCCL) and
    every rank checks at the same steps, so every rank stops together instead of hanging.
    """
    s, phase = state, state.phase
    stats, pending = EpochStats(), _Pending()
    every = 1 if s.on_step is not None else max(1, s.check_every)
    device_type = s.loader.device.type
    for x, y in progress(s.loader) if progress else s.loader:
        if max_steps is not None and stats.steps >= max_steps:
            break  # a FLOPs-budgeted phase ends mid-epoch
        lr = lr_at(phase, s.step, s.total_steps, s.warmup_steps, s.lr_scale)
        for g in s.opt.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        if s.l2w is not None:
            s.l2w.before_step(s.net, x, y, lr, s.step)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=s.amp == "bf16"):
            loss, per_exit = phase_loss(s.net, phase, x, y, step=s.step, total=s.total_steps,
                                        weigh=s.l2w.weigh if s.l2w is not None else None)
        synced = all_sum(torch.cat([loss.detach().view(1).float(), per_exit.detach()]), s.info) / s.info.world
        s.opt.zero_grad(set_to_none=True)
        loss.backward()
        pending.add(s.step, synced, _clip_and_check(s.opt, phase.options.grad_clip))
        s.opt.step()
        s.step += 1
        stats.steps += 1
        stats.samples += len(y)
        if stats.steps % every == 0:
            _check_pending(pending, stats, phase, where)
        faults.point("step")
        if s.on_step is not None:  # probe point: e.g. gradient-contribution logging
            s.on_step(s.step)
    return _finish_epoch(pending, stats, phase, where)


def _clip_and_check(opt: torch.optim.Optimizer, max_norm: float) -> torch.Tensor | None:
    """Whether every gradient is finite, as a 0-d bool tensor on the device (``None`` when there are no
    gradients); with ``max_norm > 0`` the global gradient norm is clipped to it first. Nothing is read back."""
    grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
    if not grads:
        return None
    norms = torch.stack(torch._foreach_norm(grads))  # [P]
    if max_norm > 0:  # non-finite norms make the scale NaN: the step is spoilt and reported at the next check
        total = norms.norm()
        torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp(max=1.0))  # as torch.nn.utils.clip_grad_norm_
    return torch.isfinite(norms).all()


@torch.no_grad()
def evaluate(model: MultiExitModel, loader, amp: str = "none", info: DistInfo = SINGLE) -> tuple[list[float], int]:
    """Accuracy of every exit in one pass over ``loader``; returns (accuracies, sample count). For regression (float
    labels) the negative mean squared error of every exit, so that higher is better as for accuracy.

    Under DDP each rank evaluates its share of every batch and the counts are summed over ranks.
    """
    correct: torch.Tensor | None = None
    n = 0
    device_type = loader.device.type
    with eval_mode(model):
        for x, y in loader:
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp == "bf16"):
                outs = model(x)
            hits = _hits(torch.stack(outs), y)  # [E]
            correct = hits if correct is None else correct + hits
            n += len(y)
    if correct is None:
        return [], 0
    correct = all_sum(correct, info)
    n = int(all_sum(torch.tensor(n, device=correct.device), info))
    return (correct.double() / max(n, 1)).tolist(), n


def _hits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per exit, the correct predictions of a batch (``[E]``); for regression (float labels) the negative sum of
    squared errors, so the "accuracy" that validation reports is then the negative mean squared error."""
    if y.is_floating_point():
        return -(logits[..., 0].double() - y.double()[None]).pow(2).sum(1)
    if logits.ndim == 4:  # a causal LM: per sequence, the fraction of next tokens right (top-1)
        return (logits.argmax(-1) == y).double().mean(2).sum(1)
    return (logits.argmax(-1) == y).sum(1)


def trained_scores(phase: Phase, accs: list[float]) -> list[float]:
    """Validation accuracies of the exits the phase trains."""
    return accs[-1:] if phase.kind == 1 else accs if phase.kind == 2 else accs[:-1]


def phase_score(phase: Phase, accs: list[float]) -> float:
    """Early-stopping score: mean validation accuracy over the exits the phase trains."""
    trained = trained_scores(phase, accs)
    return sum(trained) / len(trained)
