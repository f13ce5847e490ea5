"""What each exit costs: cumulative FLOPs, MACs and parameters of reaching it, measured on one sample.

The cost of exit ``j`` is everything a sample that leaves at ``j`` has run: the backbone up to the block that feeds
exit ``j`` plus the heads of exits ``0..j`` (every IC on the way is evaluated to decide whether to stop). The final
exit's cost is the whole backbone plus every IC. Fractions are relative to the **bare backbone** (no heads), so the
final exit of a multi-exit model costs slightly more than 100%.

FLOPs follow :mod:`exitlab.flops`: 2 FLOPs per multiply-add (MACs = FLOPs / 2); matmuls, convolutions and attention
are counted, elementwise ops, normalisation, pooling and softmax are not (they are listed in ``uncounted``).
A ZTW ensemble's combination of exit outputs is elementwise and is not counted either.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .errors import ConfigError
from .flops import count_flops
from .models.core import eval_mode


@dataclass
class ExitCost:
    """Cumulative cost of one exit, for one sample."""

    exit: int  # exit index, 0..E-1 (final exit last)
    block: int  # index of the backbone block that feeds this exit (the last block for the final exit)
    flops: int  # backbone up to ``block`` plus heads 0..exit
    params: int  # parameters used on the way (the same parts)
    fraction: float  # flops / bare backbone flops

    @property
    def macs(self) -> int:
        return self.flops // 2


@dataclass
class ExitCosts:
    """Per-exit costs of a model, and the bare backbone's cost they are relative to."""

    exits: list[ExitCost]
    backbone_flops: int
    backbone_params: int
    input_shape: tuple[int, ...]
    uncounted: list[str] = field(default_factory=list)

    @property
    def flops(self) -> torch.Tensor:
        """Cumulative FLOPs per exit, ``[E]`` float64."""
        return torch.tensor([e.flops for e in self.exits], dtype=torch.float64)

    @property
    def fractions(self) -> torch.Tensor:
        """Cumulative FLOPs per exit as a fraction of the bare backbone's, ``[E]`` float64."""
        return self.flops / self.backbone_flops

    def to_dict(self) -> dict:
        return {
            "convention": "FLOPs = 2 x MACs (one multiply-add = 2 FLOPs); matmul, conv and attention counted",
            "input_shape": list(self.input_shape),
            "backbone_flops": self.backbone_flops,
            "backbone_macs": self.backbone_flops // 2,
            "backbone_params": self.backbone_params,
            "exits": [{**asdict(e), "macs": e.macs} for e in self.exits],
            "uncounted_ops": self.uncounted,
        }


def model_input_shape(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """One sample's shape: ``input_shape`` if given, else from the model's build spec (in_chans, img_size)."""
    if input_shape is not None:
        return tuple(input_shape)
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ConfigError("the model does not record its input size; pass input_shape, e.g. (3, 32, 32)")
    return tuple(shape)


def _params_used(model: nn.Module, fn) -> int:
    """Parameters of the modules that ran during ``fn()`` (each counted once), plus the backbone's own."""
    ran: dict[int, nn.Module] = {}

    def record(mod: nn.Module, _inputs) -> None:  # a pre-hook must return None to leave the inputs alone
        ran[id(mod)] = mod

    handles = [m.register_forward_pre_hook(record) for m in model.modules()]
    try:
        with torch.no_grad():
            fn()
    finally:
        for h in handles:
            h.remove()
    ran[id(model.backbone)] = model.backbone
    seen: set[int] = set()
    total = 0
    for mod in ran.values():
        for p in mod.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def exit_costs(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> ExitCosts:
    """Measure every exit's cumulative FLOPs and parameters on one sample of ``input_shape`` (C, H, W).

    Runs ``model.forward_to(x, j)`` for each exit under FlopCounterMode, in eval mode, on a zero input of the
    model's own dtype and device.
    """
    shape = model_input_shape(model, input_shape)
    p0 = next(model.parameters())
    x = torch.zeros(1, *shape, dtype=p0.dtype, device=p0.device)
    with eval_mode(model):
        base = count_flops(lambda: model.backbone(x))
        backbone_params = sum(p.numel() for p in model.backbone.parameters())
        n_blocks = len(model.backbone.feature_info)
        blocks = list(model.exits) + [n_blocks - 1]
        uncounted = set(base.uncounted)
        exits = []
        for j, block in enumerate(blocks):
            rep = count_flops(lambda j=j: model.forward_to(x, j))
            uncounted.update(rep.uncounted)
            params = _params_used(model, lambda j=j: model.forward_to(x, j))
            exits.append(ExitCost(j, block, rep.total, params, rep.total / max(base.total, 1)))
    if base.total <= 0:
        raise ConfigError("the backbone counts 0 FLOPs: no matmul, conv or attention ran; cannot express costs as "
                          "fractions of it")
    return ExitCosts(exits, base.total, backbone_params, shape, sorted(uncounted))


def length_costs(model: nn.Module, lengths) -> torch.Tensor:
    """Cumulative FLOPs of every exit for each text sample at its own real token length: ``[E, B]`` float64.

    Each distinct length is measured once (:func:`exit_costs` on one sample of that length, no padding), so
    attention's quadratic growth is in the count. A batch padded to its longest sample computes more than this:
    padding is not free, and these costs leave it out on purpose (they are what each sample needs alone)."""
    lengths = torch.as_tensor(lengths).long().flatten().cpu()
    if len(lengths) and int(lengths.min()) < 1:
        raise ConfigError("length_costs: every sample needs at least one token")
    table = {n: exit_costs(model, (3, n)).flops for n in lengths.unique().tolist()}
    if not table:
        return torch.empty(getattr(model, "num_exits", 0), 0, dtype=torch.float64)
    return torch.stack([table[n] for n in lengths.tolist()], 1)  # [E, B]
