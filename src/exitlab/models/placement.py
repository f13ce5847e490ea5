"""Where the internal classifiers go: explicit block indices, every k blocks, or evenly by cumulative FLOPs."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..flops import count_flops


def block_flops(backbone: nn.Module, input_shape: tuple[int, ...]) -> list[int]:
    """Measured FLOPs of the stem plus each block for one sample; entry i includes everything up to block i."""
    x = torch.zeros(1, *input_shape)
    was_training = backbone.training
    backbone.eval()
    try:
        h = x
        cum, total = [], count_flops(lambda: backbone.stem(x)).total
        with torch.no_grad():
            h = backbone.stem(x)
        for block in backbone.blocks:
            total += count_flops(lambda b=block, h=h: b(h)).total
            with torch.no_grad():
                h = block(h)
            cum.append(total)
        return cum
    finally:
        backbone.train(was_training)


def resolve_exits(spec, backbone: nn.Module, input_shape: tuple[int, ...]) -> list[int]:
    """Turn an exit spec (list of block indices, ``"every:K"`` or ``"flops:N"``) into sorted block indices."""
    n_blocks = len(backbone.feature_info)
    if isinstance(spec, (list, tuple)):
        return list(spec)
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"model.exits must be a list of block indices, 'every:K' or 'flops:N', got {spec!r}")
    kind, _, arg = spec.partition(":")
    try:
        k = int(arg)
    except ValueError:
        raise ConfigError(f"model.exits {spec!r}: {arg!r} is not an integer") from None
    if k < 1:
        raise ConfigError(f"model.exits {spec!r}: the number must be >= 1")
    if kind == "every":
        return list(range(k - 1, n_blocks - 1, k))
    if kind == "flops":
        if not hasattr(backbone, "blocks"):
            raise ConfigError("model.exits 'flops:N' needs an ordered-blocks backbone; give block indices instead")
        cum = torch.tensor(block_flops(backbone, input_shape), dtype=torch.float64)
        targets = cum[-1] * torch.arange(1, k + 1, dtype=torch.float64) / (k + 1)
        picks = sorted({int(torch.argmin((cum[:-1] - t).abs())) for t in targets})
        return picks
    raise ConfigError(f"model.exits {spec!r}: unknown placement {kind!r}; use 'every:K' or 'flops:N'")
