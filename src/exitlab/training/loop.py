"""The one training loop for a phase, the per-exit loss, and the all-exits evaluation pass."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, TrainingError
from ..models.core import MultiExitModel, eval_mode
from ..models.flops import count_flops
from ..models.gpf import gpf_imitation_loss
from ..runs import faults
from ..runs.components import OPTIMIZERS, SCHEDULES
from .distributed import SINGLE, DistInfo, all_sum
from .l2w import L2W, per_sample_losses
from .layerskip import curriculum_weights, dropout_for, exit_mask
from .phases import Phase, exit_weights


def set_trainable(model: MultiExitModel, phase: Phase) -> list[nn.Parameter]:
    """Freeze what the phase does not train and return the trainable parameters."""
    train_backbone = phase.trains in ("backbone", "all")
    train_heads = phase.trains in ("heads", "all")
    for p in model.backbone.parameters():
        p.requires_grad_(train_backbone)
    for p in model.heads.parameters():
        p.requires_grad_(train_heads)
    return [p for p in model.parameters() if p.requires_grad]


def set_modes(model: MultiExitModel, phase: Phase) -> None:
    """Train mode, except a frozen backbone stays in eval mode so its BatchNorm statistics do not move."""
    model.train()
    if phase.trains == "heads":
        model.backbone.eval()


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


def phase_loss(net: nn.Module, phase: Phase, x: torch.Tensor, y: torch.Tensor, *, step: int = 0, total: int = 1,
               weigh: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The phase's objective and the per-exit losses it was built from, at 0-based ``step`` of the phase's ``total``
    (which layer-dropout rates and curriculum exits apply; see :mod:`exitlab.layerskip`). ``weigh`` maps per-sample
    losses ``[B, E]`` to sample weights ``[B, E]`` (L2W, :mod:`exitlab.l2w`).

    ``net`` is what the phase runs (see :func:`phase_module`): the bare backbone in phase 1, so the heads are not
    even evaluated, and the multi-exit model otherwise. Either may be wrapped in DDP. The per-exit weights are the
    phase's own (:attr:`Phase.weights`, resolved when the phases were planned; a Phase built by hand without them
    gets them from :func:`exitlab.phases.exit_weights`, the same resolution).
    """
    opts = phase.options
    feats: list | None = [] if opts.gpf_imitation else None
    with dropout_for(net, opts, step, total):
        if phase.kind == 1:
            per_exit = exit_losses([net(x)], y, opts.label_smoothing)
            return per_exit[0], per_exit
        extra = {} if feats is None else {"feats": feats}
        outs = net(x, grad_equilibrium=opts.grad_equilibrium, **extra) if phase.kind == 2 else net(x, **extra)
    per_exit = exit_losses(outs, y, opts.label_smoothing)
    weights = phase.weights or exit_weights(phase.kind, opts, len(per_exit))  # a hand-built Phase: resolve here
    if len(weights) != len(per_exit):
        raise ConfigError(f"{phase.name} was planned for {len(weights)} exits but the model has {len(per_exit)}; "
                          "plan the phases with plan_phases(cfg, model.num_exits)")
    if opts.exit_curriculum != "none":
        weights = curriculum_weights(weights, exit_mask(opts, len(per_exit), step, total))
    weighted = per_exit if weigh is None else _weighted(outs, y, opts.label_smoothing, weigh)
    loss = (_on_device(tuple(weights), per_exit.device) * weighted).sum()
    if opts.distill > 0 and len(outs) > 1:
        loss = loss + opts.distill * distill_loss(outs, opts.distill_temperature).mean()
    if feats is not None:
        loss = loss + opts.gpf_imitation * gpf_imitation_loss(getattr(net, "module", net).heads, feats)
    return loss, per_exit


def _weighted(outs: list[torch.Tensor], y: torch.Tensor, label_smoothing: float, weigh) -> torch.Tensor:
    """Per exit, the mean over the batch of the sample-weighted losses: ``[E]``."""
    losses = per_sample_losses(outs, y, label_smoothing)  # [B, E]
    return (weigh(losses) * losses).mean(0)


@functools.lru_cache(maxsize=64)
def _on_device(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """``values`` as a float32 tensor on ``device``, copied once: a fresh host-to-device copy every step would make
    the host wait for the device (a pageable copy synchronises the stream). Callers must not modify it."""
    with torch.inference_mode(False):  # a normal tensor even if first asked for under inference mode
        return torch.tensor(values, device=device)


def phase_module(model: MultiExitModel, phase: Phase) -> nn.Module:
    """The module a phase calls: the backbone alone in phase 1, the whole model in phases 2 and 3."""
    return model.backbone if phase.kind == 1 else model


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


def train_epoch(model: nn.Module, phase: Phase, loader, opt: torch.optim.Optimizer, *, step: int, total_steps: int,
                amp: str = "none", where: str = "", progress: Callable | None = None, info: DistInfo = SINGLE,
                on_step: Callable[[int], None] | None = None, warmup_steps: int = 0, max_steps: int | None = None,
                lr_scale: float = 1.0, l2w: L2W | None = None, check_every: int = CHECK_EVERY
                ) -> tuple[EpochStats, int]:
    """One pass over ``loader``. Raises TrainingError on a non-finite loss or gradient, naming the step, phase and
    exit of the first one. With ``l2w`` every step starts with L2W's meta step and weights the per-sample losses.

    No step waits for the device: losses stay on it and are read back every ``check_every`` steps and at the end
    of the epoch (``on_step`` probes read the model, so with one the check runs after every step). A bad step is
    therefore reported up to ``check_every - 1`` steps late, always before the epoch returns, so no checkpoint
    ever holds its weights. Under DDP the losses are summed over ranks every step (asynchronously on NCCL) and
    every rank checks at the same steps, so every rank stops together instead of hanging.
    """
    stats, pending = EpochStats(), _Pending()
    every = 1 if on_step is not None else max(1, check_every)
    device_type = loader.device.type
    for x, y in progress(loader) if progress else loader:
        if max_steps is not None and stats.steps >= max_steps:
            break  # a FLOPs-budgeted phase ends mid-epoch
        lr = lr_at(phase, step, total_steps, warmup_steps, lr_scale)
        for g in opt.param_groups:
            g["lr"] = lr
        if l2w is not None:
            l2w.before_step(model, x, y, lr, step)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            loss, per_exit = phase_loss(model, phase, x, y, step=step, total=total_steps,
                                        weigh=l2w.weigh if l2w is not None else None)
        synced = all_sum(torch.cat([loss.detach().view(1).float(), per_exit.detach()]), info) / info.world
        opt.zero_grad(set_to_none=True)
        loss.backward()
        pending.add(step, synced, _clip_and_check(opt, phase.options.grad_clip))
        opt.step()
        step += 1
        stats.steps += 1
        stats.samples += len(y)
        if stats.steps % every == 0:
            _check_pending(pending, stats, phase, where)
        faults.point("step")
        if on_step is not None:  # probe point: e.g. gradient-contribution logging
            on_step(step)
    return _finish_epoch(pending, stats, phase, where), step


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
