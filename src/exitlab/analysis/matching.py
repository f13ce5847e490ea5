"""Weight matching (Ainsworth et al. 2023, "Git Re-Basin"): permute one model's hidden units to line up with another's.

Hidden units of a network can be reordered without changing its function, so two trained models can sit in
"different basins" only because their units are listed in different orders. A *permutation spec* names, for every
tensor of the state dict, which permutation acts on each axis. For the built-in ResNets the permutations are:

- one per residual stream segment (the stem's output channels, renewed at every block with a projection shortcut):
  it acts on every tensor that reads or writes the stream, through the identity shortcuts, and on the IC heads
  attached to the stream and the final classifier's input;
- one per block interior (two for a bottleneck block): the channels between the block's convolutions.

BatchNorm weights, biases and running statistics follow their channels. Weight matching finds each permutation by
coordinate descent: with the others fixed, maximising ``sum <W_a, P W_b>`` over one permutation is a linear
assignment problem (solved exactly here by the Hungarian algorithm), repeated over the permutations in random order
until none changes. It matches weights only; it does not look at data.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import ExitlabError
from ..models.core import MultiExitModel
from ..models.heads import CLSHead, MLPHead, PooledHead, SDNHead
from ..models.resnet import BasicBlock, ClassifierHead, PreActBlock, ResNet, WideResNet

Axis = "str | tuple[str, int] | None"  # a permutation name, (name, inner repeat) for flattened maps, or None
Spec = dict[str, tuple]  # state-dict key -> one Axis per tensor dimension


# ---------------------------------------------------------------- the specs of the built-in ResNets


def _bn(spec: Spec, prefix: str, perm: str, bn: nn.Module) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        if getattr(bn, name, None) is not None:
            spec[f"{prefix}.{name}"] = (perm,)


def _conv(spec: Spec, key: str, out: str | None, inp, conv: nn.Module) -> None:
    spec[f"{key}.weight"] = (out, inp, *([None] * (conv.weight.dim() - 2)))
    if getattr(conv, "bias", None) is not None:
        spec[f"{key}.bias"] = (out,)


def _block(spec: Spec, p: str, block: nn.Module, i: int, s_in: str) -> str:
    """Add one residual block's tensors; returns the permutation of its output stream."""
    projected = (isinstance(block, PreActBlock) and block.shortcut is not None) or \
        (not isinstance(block, PreActBlock) and len(block.shortcut) > 0)
    s_out = f"stream{i}" if projected else s_in
    if isinstance(block, PreActBlock):
        _bn(spec, f"{p}.bn1", s_in, block.bn1)
        _conv(spec, f"{p}.conv1", f"block{i}", s_in, block.conv1)
        _bn(spec, f"{p}.bn2", f"block{i}", block.bn2)
        _conv(spec, f"{p}.conv2", s_out, f"block{i}", block.conv2)
        if projected:
            _conv(spec, f"{p}.shortcut", s_out, s_in, block.shortcut)
        return s_out
    inner = [f"block{i}"] if isinstance(block, BasicBlock) else [f"block{i}a", f"block{i}b"]
    chain = [s_in, *inner, s_out]
    for n in range(len(chain) - 1):
        _conv(spec, f"{p}.conv{n + 1}", chain[n + 1], chain[n], getattr(block, f"conv{n + 1}"))
        _bn(spec, f"{p}.bn{n + 1}", chain[n + 1], getattr(block, f"bn{n + 1}"))
    if projected:
        _conv(spec, f"{p}.shortcut.0", s_out, s_in, block.shortcut[0])
        _bn(spec, f"{p}.shortcut.1", s_out, block.shortcut[1])
    return s_out


def _head(spec: Spec, p: str, head: nn.Module, stream: str) -> None:
    if isinstance(head, SDNHead):  # fc reads a [C, g, g] map flattened: each channel owns g*g columns
        spec[f"{p}.fc.weight"] = (None, (stream, head.grid * head.grid))
    elif isinstance(head, PooledHead):
        spec[f"{p}.fc.weight"] = (None, stream)
    elif isinstance(head, MLPHead):
        spec[f"{p}.mlp.0.weight"] = (None, stream)
    else:
        kind = "cls" if isinstance(head, CLSHead) else type(head).__name__
        raise ExitlabError(f"weight matching does not know the IC head {kind!r}; align without it (drop --align)")


def permutation_spec(model: MultiExitModel) -> tuple[Spec, dict[str, int]]:
    """The permutation spec of a built-in ResNet / Wide-ResNet multi-exit model, and each permutation's size.

    Tensors not named in the spec (biases of classifiers, head mixing weights, counters) are left as they are."""
    bb = model.backbone
    if not isinstance(bb, (ResNet, WideResNet)) or not isinstance(bb.final, ClassifierHead):
        raise ExitlabError(f"weight matching (--align) is implemented for the built-in ResNets and Wide-ResNets, not "
                           f"for {type(bb).__name__}; compare without --align")
    spec: Spec = {}
    if isinstance(bb, WideResNet):
        _conv(spec, "backbone.stem", "stream", None, bb.stem)
    else:
        _conv(spec, "backbone.stem.0", "stream", None, bb.stem[0])
        _bn(spec, "backbone.stem.1", "stream", bb.stem[1])
    stream, streams = "stream", []
    for i, block in enumerate(bb.blocks):
        stream = _block(spec, f"backbone.blocks.{i}", block, i, stream)
        streams.append(stream)
    if isinstance(bb.final.pre, nn.Sequential):
        _bn(spec, "backbone.final.pre.0", stream, bb.final.pre[0])
    spec["backbone.final.fc.weight"] = (None, stream)
    for j, b in enumerate(model.exits):
        _head(spec, f"heads.{j}", model.heads[j], streams[b])
    state = model.state_dict()
    sizes = {}
    for key, axes in spec.items():
        for d, ax in enumerate(axes):
            if ax is not None:
                name, rep = (ax, 1) if isinstance(ax, str) else ax
                sizes.setdefault(name, state[key].shape[d] // rep)
    return spec, sizes


# ---------------------------------------------------------------- applying permutations


def _axis_index(perm: torch.Tensor, rep: int) -> torch.Tensor:
    """Index along an axis of ``len(perm) * rep`` entries where unit ``c`` owns entries ``c*rep .. c*rep+rep-1``."""
    return (perm[:, None] * rep + torch.arange(rep)).flatten()


def _permute(t: torch.Tensor, axes: tuple, perms: dict[str, torch.Tensor], skip: int | None = None) -> torch.Tensor:
    for d, ax in enumerate(axes):
        if ax is None or d == skip:
            continue
        name, rep = (ax, 1) if isinstance(ax, str) else ax
        t = t.index_select(d, _axis_index(perms[name], rep).to(t.device))
    return t


def apply_permutation(state: dict[str, torch.Tensor], spec: Spec, perms: dict[str, torch.Tensor]
                      ) -> dict[str, torch.Tensor]:
    """A copy of ``state`` with every tensor in ``spec`` permuted: ``new[..., i, ...] = old[..., perm[i], ...]``."""
    return {k: (_permute(v, spec[k], perms) if k in spec else v.clone()) for k, v in state.items()}


# ---------------------------------------------------------------- the assignment problem


def linear_assignment(score: np.ndarray) -> np.ndarray:
    """The permutation ``col`` maximising ``sum_i score[i, col[i]]`` of a square matrix (Hungarian algorithm with
    potentials, O(n^3), vectorised over columns)."""
    cost = -np.asarray(score, dtype=np.float64)
    n = cost.shape[0]
    u, v = np.zeros(n + 1), np.zeros(n + 1)
    match = np.zeros(n + 1, dtype=np.int64)  # match[j]: the row (1-based) assigned to column j; 0 = none
    way = np.zeros(n + 1, dtype=np.int64)
    for i in range(1, n + 1):
        match[0], j0 = i, 0
        minv = np.full(n + 1, np.inf)
        used = np.zeros(n + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = match[j0]
            free = ~used
            free[0] = False
            cur = cost[i0 - 1] - u[i0] - v[1:]  # reduced costs of row i0 against columns 1..n
            better = free[1:] & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            j1 = int(np.argmin(np.where(free, minv, np.inf)))
            delta = minv[j1]
            u[match[used]] += delta
            v[used] -= delta
            minv[free] -= delta
            j0 = j1
            if match[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            match[j0] = match[j1]
            j0 = j1
    col = np.zeros(n, dtype=np.int64)
    col[match[1:] - 1] = np.arange(n)
    return col


def _score(name: str, spec: Spec, a: dict, b: dict, perms: dict[str, torch.Tensor], n: int) -> torch.Tensor:
    """``score[i, j] = sum <a's unit i, b's unit j>`` over every tensor axis that ``name`` permutes (float64)."""
    score = torch.zeros(n, n, dtype=torch.float64)
    for key, axes in spec.items():
        for d, ax in enumerate(axes):
            if ax is None or (ax if isinstance(ax, str) else ax[0]) != name:
                continue
            wa = a[key].double().movedim(d, 0).reshape(n, -1)
            wb = _permute(b[key], axes, perms, skip=d).double().movedim(d, 0).reshape(n, -1)
            score += wa @ wb.T
    return score


def weight_matching(spec: Spec, sizes: dict[str, int], a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], *,
                    max_iter: int = 100, seed: int = 0) -> dict[str, torch.Tensor]:
    """Permutations that line ``b``'s units up with ``a``'s (coordinate descent over the permutations)."""
    a = {k: v.detach().cpu() for k, v in a.items()}
    b = {k: v.detach().cpu() for k, v in b.items()}
    perms = {name: torch.arange(n) for name, n in sizes.items()}
    names = sorted(sizes)
    g = torch.Generator().manual_seed(seed)
    for _ in range(max_iter):
        changed = False
        for idx in torch.randperm(len(names), generator=g).tolist():
            name = names[idx]
            score = _score(name, spec, a, b, perms, sizes[name])
            new = torch.from_numpy(linear_assignment(score.numpy()))
            old_value = float(score[torch.arange(sizes[name]), perms[name]].sum())
            if float(score[torch.arange(sizes[name]), new].sum()) > old_value + 1e-12 * max(1.0, abs(old_value)):
                perms[name], changed = new, True
        if not changed:
            break
    return perms


def align(model_a: MultiExitModel, model_b: MultiExitModel, *, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """``model_b``'s state dict with its units permuted to match ``model_a`` (weight matching), and a summary."""
    spec, sizes = permutation_spec(model_a)
    a, b = model_a.state_dict(), model_b.state_dict()
    perms = weight_matching(spec, sizes, a, b, seed=seed)
    aligned = apply_permutation(b, spec, perms)
    keys = [k for k in spec if a[k].is_floating_point()]
    dist = lambda s: float(torch.sqrt(sum(((a[k].double() - s[k].double()) ** 2).sum() for k in keys)))  # noqa: E731
    moved = sum(int((p != torch.arange(len(p))).sum()) for p in perms.values())
    info = {"method": "weight matching (Ainsworth et al. 2023)", "permutations": len(perms),
            "units": sum(sizes.values()), "units_moved": moved, "distance_before": dist(b),
            "distance_after": dist(aligned)}
    return aligned, info
