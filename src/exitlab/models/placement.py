"""Where the internal classifiers go: explicit block indices, every k blocks, or evenly by cumulative FLOPs."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .flops import count_flops


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
    places = n_blocks - 1  # ICs go after blocks 0..n_blocks-2; the last block feeds the final exit
    if kind == "every":
        picks = list(range(k - 1, places, k))
        if not picks:
            raise ConfigError(f"model.exits {spec!r} places no IC: this backbone has {n_blocks} blocks, so ICs can go "
                              f"after blocks 0..{places - 1}; use every:K with K <= {places}")
        return picks
    if kind == "flops":
        if not hasattr(backbone, "blocks"):
            raise ConfigError("model.exits 'flops:N' needs an ordered-blocks backbone; give block indices instead")
        if k > places:
            raise ConfigError(f"model.exits {spec!r} asks for {k} ICs, but this backbone has only {places} places "
                              f"for them (after blocks 0..{places - 1}); use flops:N with N <= {places}")
        cum = torch.tensor(block_flops(backbone, input_shape), dtype=torch.float64)
        targets = cum[-1] * torch.arange(1, k + 1, dtype=torch.float64) / (k + 1)
        return nearest_distinct(cum[:-1], targets)
    raise ConfigError(f"model.exits {spec!r}: unknown placement {kind!r}; use 'every:K' or 'flops:N'")


def nearest_distinct(values: torch.Tensor, targets: torch.Tensor) -> list[int]:
    """Increasing indices ``i_1 < ... < i_k`` into sorted ``values`` minimising ``sum |values[i_j] - targets[j]|``.

    Dynamic programming over (target, index): exact, and unlike rounding each target to its nearest value it never
    puts two ICs on one block, so ``flops:N`` always gives N distinct exits.
    """
    m, k = len(values), len(targets)
    cost = (values[None, :] - targets[:, None]).abs().tolist()  # [k, m]
    inf = float("inf")
    best = [[inf] * m for _ in range(k)]  # best[j][i]: targets 0..j placed, target j at index i
    back = [[-1] * m for _ in range(k)]
    best[0] = cost[0][:]
    for j in range(1, k):
        run, arg = inf, -1  # min of best[j-1][:i]
        for i in range(m):
            if i > 0 and best[j - 1][i - 1] < run:
                run, arg = best[j - 1][i - 1], i - 1
            if arg >= 0:
                best[j][i], back[j][i] = run + cost[j][i], arg
    i = min(range(m), key=lambda t: best[k - 1][t])
    picks = [i]
    for j in range(k - 1, 0, -1):
        i = back[j][i]
        picks.append(i)
    return picks[::-1]
