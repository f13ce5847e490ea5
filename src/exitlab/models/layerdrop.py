"""Layer dropout (LayerSkip, Elhoushi et al. 2024; stochastic depth, Huang et al. 2016): skip residual blocks at random.

A block can be skipped when skipping it is the identity: its input and output shapes match and its shortcut is the
identity (``identity_skip`` on the block; the built-in residual blocks say so, see docs/training.md). A skipped block
passes its input on unchanged: per sample (``per="sample"``, the block's output is replaced by its input for the
dropped samples, as stochastic depth's residual branch scaled to zero) or for the whole batch (``per="batch"``).
The block is still computed and its output masked, so layer dropout saves no training compute here.

The draws come from torch's global CPU generator, which the trainer seeds at every epoch (as for dropout), so a run
resumed from a checkpoint draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import ConfigError


def droppable(backbone: nn.Module) -> tuple[list[nn.Module], list[int]]:
    """The blocks layer dropout counts (in order) and the indices of those it may skip. Built-in backbones: their
    ``blocks``, skippable where ``identity_skip``; Hugging Face encoders: every transformer layer (residual, same
    width in and out); anything else: none."""
    blocks = getattr(backbone, "blocks", None)
    if isinstance(blocks, nn.ModuleList):
        return list(blocks), [i for i, b in enumerate(blocks) if getattr(b, "identity_skip", False)]
    layers = getattr(backbone, "layers", None)
    if getattr(backbone, "layers_skippable", False) and isinstance(layers, nn.ModuleList):
        return list(layers), list(range(len(layers)))
    return [], []


def skippable_blocks(backbone: nn.Module) -> list[int]:
    """Indices of the backbone's blocks that layer dropout may skip (empty for adapters and non-residual nets)."""
    return droppable(backbone)[1]


def depth_scale(kind: str, l: int, n: int) -> float:  # noqa: E741
    """D(l) of block ``l`` of ``n``: 0 at the first block, 1 at the last. ``exp``: 2^(l/(n-1)) - 1 (LayerSkip's
    e^(l ln 2 / (L-1)) - 1), ``linear``: l/(n-1), ``uniform``: 1."""
    if kind == "uniform" or n == 1:
        return 1.0
    if kind == "exp":
        return math.exp(l * math.log(2) / (n - 1)) - 1
    if kind == "linear":
        return l / (n - 1)
    raise ConfigError(f"layerskip.depth_scale: {kind!r}; choose exp, linear or uniform")


def block_rates(backbone: nn.Module, p_max: float, kind: str = "exp", time_scale: float = 1.0) -> list[float]:
    """Drop rate of every block: p_l = S(t) D(l) p_max over all ``L`` blocks, 0 for blocks that cannot be skipped."""
    blocks, skippable = droppable(backbone)
    n, ok = len(blocks), set(skippable)
    return [time_scale * depth_scale(kind, i, n) * p_max if i in ok else 0.0 for i in range(n)]


def _hook(rate: float, per: str):
    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        x = args[0]
        if not module.training:
            return out
        y = out[0] if isinstance(out, tuple) else out  # transformers 4.x layers return a tuple
        if per == "batch":
            y = x if float(torch.rand(())) < rate else y
        else:
            drop = (torch.rand(x.shape[0]) < rate).to(x.device)  # [B], drawn on the CPU: the same on every device
            y = torch.where(drop.view(-1, *([1] * (x.dim() - 1))), x, y)
        return (y, *out[1:]) if isinstance(out, tuple) else y

    return hook


@contextlib.contextmanager
def layer_dropout(backbone: nn.Module, rates: list[float], per: str = "sample") -> Iterator[None]:
    """Within the block, every block ``i`` with ``rates[i] > 0`` is skipped with that probability (in train mode)."""
    if per not in ("sample", "batch"):
        raise ConfigError(f"layerskip.per: {per!r}; choose sample or batch")
    blocks = droppable(backbone)[0]
    handles = [blocks[i].register_forward_hook(_hook(r, per)) for i, r in enumerate(rates) if r > 0]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
