"""Gradient contributions: how hard each exit's loss pulls on each part of the backbone.

For exit ``k`` and backbone part ``j`` (stem, block 0..n-1, final), ``g_kj`` is the gradient of exit ``k``'s mean
cross-entropy over a fixed set of batches with respect to part ``j``'s parameters. With loss weights ``w``, the joint
loss ``sum_k w_k L_k`` has gradient ``G_j = sum_k w_k g_kj`` on part ``j``, and exit ``k``'s share of it is reported two
ways: by norm, ``||w_k g_kj|| / sum_k' ||w_k' g_k'j||`` (in [0, 1]), and by projection onto the total,
``<w_k g_kj, G_j> / ||G_j||^2``. The projection shares of a part sum to exactly 1; a negative one means the exit pulls
against the joint update.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ExitlabError
from ..files import append_jsonl
from ..loop import exit_losses
from ..models.core import MultiExitModel
from ..rundir import RunDir
from .common import Batches, block_groups, exit_names, finite, preserved

MODES = ("current", "train", "eval")


def per_exit_gradients(model: MultiExitModel, batches: Batches, params: list[nn.Parameter]) -> list[list[torch.Tensor]]:
    """Gradient of each exit's loss with respect to each of ``params``: ``[E][P]`` tensors (zeros where unused).

    The losses are averaged over all samples of ``batches`` (batches weighted by their size). Uses
    ``torch.autograd.grad``, so no ``.grad`` field is touched. The caller sets modes and ``requires_grad``.
    """
    n_total = sum(len(y) for _, y in batches)
    if not n_total:
        raise ExitlabError("gradient contributions need at least one non-empty batch")
    sums = [[torch.zeros_like(p, dtype=torch.float64) for p in params] for _ in range(model.num_exits)]
    for x, y in batches:
        per_exit = exit_losses(model(x), y)  # [E]
        for k in range(model.num_exits):
            grads = torch.autograd.grad(per_exit[k], params, retain_graph=k < model.num_exits - 1, allow_unused=True)
            for acc, g in zip(sums[k], grads):
                if g is not None:
                    acc.add_(g.double(), alpha=len(y) / n_total)
    return sums


def _set_mode(model: MultiExitModel, mode: str) -> None:
    if mode not in MODES:
        raise ExitlabError(f"gradient mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "train":
        model.train()
    elif mode == "eval":
        model.eval()


def gradient_contributions(model: MultiExitModel, batches: Batches, weights: torch.Tensor | None = None, *,
                           mode: str = "current") -> dict:
    """Per-exit, per-block gradient norms and shares on ``batches`` (a list of ``(x, y)``); JSON-serialisable.

    ``weights``: loss weight per exit, ``[num_exits]`` (default: uniform, the paper's plain mean). ``mode``:
    ``"current"`` keeps the modes the model is in (inside the training loop, exactly the gradients the optimiser
    sees), ``"train"`` uses BatchNorm batch statistics, ``"eval"`` running statistics.

    Nothing about the model changes: parameters are only read (``autograd.grad``, ``.grad`` untouched); BatchNorm
    buffers, which a train-mode forward updates, are saved and restored; train/eval modes and ``requires_grad``
    flags are restored; and the global RNG state is forked so that dropout here does not shift the training run's
    random stream.
    """
    E = model.num_exits
    w = torch.full((E,), 1.0 / E, dtype=torch.float64) if weights is None else torch.as_tensor(weights).double()
    if w.shape != (E,):
        raise ExitlabError(f"weights must hold one loss weight per exit ({E}), got shape {tuple(w.shape)}")
    if not batches:
        raise ExitlabError("gradient contributions need at least one batch")
    groups = block_groups(model, batches[0][0])
    params = [p for _, g in groups for p in g]
    devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    with preserved(model), torch.random.fork_rng(devices=devices):
        _set_mode(model, mode)
        for p in params:
            p.requires_grad_(True)
        grads = per_exit_gradients(model, batches, params)
    sizes = [len(g) for _, g in groups]
    table = _contribution_table(grads, sizes, w.cpu())
    return {"analysis": "gradients", "exits": exit_names(model), "blocks": [name for name, _ in groups],
            "params": [sum(p.numel() for p in g) for _, g in groups], "weights": w.tolist(), "mode": mode,
            "samples": sum(len(y) for _, y in batches), "batches": len(batches), **table}


def _flat_by_group(grads: list[torch.Tensor], sizes: list[int]) -> list[torch.Tensor]:
    out, i = [], 0
    for s in sizes:
        part = grads[i:i + s]
        out.append(torch.cat([g.flatten().cpu() for g in part]) if part else torch.zeros(0, dtype=torch.float64))
        i += s
    return out


def _contribution_table(grads: list[list[torch.Tensor]], sizes: list[int], w: torch.Tensor) -> dict:
    """Norms, norm shares, projection shares and cosines from per-exit gradients, grouped by backbone part."""
    by_exit = [_flat_by_group(g, sizes) for g in grads]  # [E][J] flat float64 vectors
    E, J = len(by_exit), len(sizes)
    norm = [[float(by_exit[k][j].norm()) for j in range(J)] for k in range(E)]
    share_norm = [[None] * J for _ in range(E)]
    share_proj = [[None] * J for _ in range(E)]
    cosine = [[None] * J for _ in range(E)]
    total_norm = []
    for j in range(J):
        contrib = [w[k] * by_exit[k][j] for k in range(E)]  # exit k's part of the joint gradient on part j
        total = torch.stack(contrib).sum(0) if contrib[0].numel() else contrib[0]
        tn = float(total.norm())
        total_norm.append(tn)
        norm_sum = sum(float(c.norm()) for c in contrib)
        for k in range(E):
            if norm_sum > 0:
                share_norm[k][j] = float(contrib[k].norm()) / norm_sum
            if tn > 0:
                share_proj[k][j] = finite(float(contrib[k] @ total) / tn ** 2)
                if norm[k][j] > 0:
                    cosine[k][j] = finite(float(by_exit[k][j] @ total) / (norm[k][j] * tn))
    return {"norm": norm, "share_norm": share_norm, "share_projection": share_proj, "cosine": cosine,
            "total_norm": total_norm}


def gradient_logger(every: int, samples: int = 256):
    """A training probe: every ``every`` optimizer steps, append the per-exit gradient contributions on ``samples``
    fixed validation samples, under the phase's own loss weights, to the run's ``gradients.jsonl``."""
    batches: list = []

    def probe(ctx) -> None:  # ctx: exitlab.train.ProbeContext
        if ctx.step % every:
            return
        if not batches:
            n = min(samples, ctx.data.val.num_samples)
            batches.extend(ctx.data.val.sample(n, seed=0, batch_size=128))
        record = gradient_contributions(ctx.model, batches, torch.tensor(ctx.phase.weights))
        append_jsonl(ctx.run / RunDir.GRADIENTS, {"phase": ctx.phase.kind, "step": ctx.step, **record})

    return probe
