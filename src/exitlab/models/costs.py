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

from ..errors import ConfigError
from .core import eval_mode
from .flops import count_flops


@dataclass
class ExitCost:
    """Cumulative cost of one exit, for one sample."""

    exit: int  # exit index, 0..E-1 (final exit last)
    block: int  # index of the backbone block that feeds this exit (the last block for the final exit)
    flops: float  # backbone up to ``block`` plus heads 0..exit (text: the mean over the samples' own lengths)
    params: int  # parameters used on the way (the same parts)
    fraction: float  # flops / bare backbone flops

    @property
    def macs(self) -> float:
        return self.flops / 2


@dataclass
class ExitCosts:
    """Per-exit costs of a model, and the bare backbone's cost they are relative to."""

    exits: list[ExitCost]
    backbone_flops: float  # text: the mean over the samples
    backbone_params: int
    input_shape: tuple[int, ...]
    uncounted: list[str] = field(default_factory=list)
    samples: torch.Tensor | None = None  # text: ``[E, N]`` cumulative FLOPs of every exit for each sample

    @property
    def flops(self) -> torch.Tensor:
        """Cumulative FLOPs per exit, ``[E]`` float64 (text: the mean over the samples)."""
        return torch.tensor([e.flops for e in self.exits], dtype=torch.float64)

    @property
    def table(self) -> torch.Tensor:
        """What a simulation charges: ``[E, N]`` per sample when known (text), else ``[E]`` for every sample."""
        return self.samples if self.samples is not None else self.flops

    @property
    def fractions(self) -> torch.Tensor:
        """Cumulative FLOPs per exit as a fraction of the bare backbone's, ``[E]`` float64."""
        return self.flops / self.backbone_flops

    def to_dict(self) -> dict:
        out = {
            "convention": "FLOPs = 2 x MACs (one multiply-add = 2 FLOPs); matmul, conv and attention counted",
            "input_shape": list(self.input_shape),
            "backbone_flops": self.backbone_flops,
            "backbone_macs": self.backbone_flops / 2,
            "backbone_params": self.backbone_params,
            "exits": [{**asdict(e), "macs": e.macs} for e in self.exits],
            "uncounted_ops": self.uncounted,
        }
        if self.samples is not None:
            out["per_sample"] = (f"text: the mean over {self.samples.shape[1]} samples, each at its own token length "
                                 "(padding not counted); the sweep charges every sample its own cost")
        return out


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

    A batch padded to its longest sample computes more than this: padding is not free, and these costs leave it out
    on purpose (they are what each sample needs alone). See :func:`length_table` for how lengths are measured."""
    lengths = torch.as_tensor(lengths).long().flatten().cpu()
    if len(lengths) and int(lengths.min()) < 1:
        raise ConfigError("length_costs: every sample needs at least one token")
    if not len(lengths):
        return torch.empty(getattr(model, "num_exits", 0), 0, dtype=torch.float64)
    table = length_table(model, lengths.unique().tolist())
    return torch.stack([table[n][0] for n in lengths.tolist()], 1)  # [E, B]


def length_table(model: nn.Module, lengths: list[int]) -> dict[int, tuple[torch.Tensor, float]]:
    """Per token length: cumulative FLOPs of every exit ``[E]`` and of the bare backbone, on one unpadded sample.

    Every count of an encoder is a polynomial of degree 2 in the length (projections and feed-forward layers grow
    linearly, attention with its square). With more than five lengths, three are measured with FlopCounterMode and
    the rest follow exactly from the polynomial through them; two more measured lengths check it, and if either
    differs by a single FLOP every length is measured instead."""
    lengths = sorted(set(int(n) for n in lengths))
    measure = lambda n: (lambda c: (c.flops, float(c.backbone_flops)))(exit_costs(model, (3, n)))  # noqa: E731
    if len(lengths) <= 5:
        return {n: measure(n) for n in lengths}
    picks = [lengths[0], lengths[len(lengths) // 2], lengths[-1]]
    known = {n: measure(n) for n in picks}
    fit = _quadratic(picks, [torch.cat([known[n][0], torch.tensor([known[n][1]], dtype=torch.float64)])
                             for n in picks])
    for n in (lengths[1], lengths[-2]):
        got = measure(n)
        if not torch.equal(fit(n), torch.cat([got[0], torch.tensor([got[1]], dtype=torch.float64)])):
            return {m: known.get(m) or measure(m) for m in lengths}
    return {n: (lambda v: (v[:-1], float(v[-1])))(fit(n)) for n in lengths}


def _quadratic(xs: list[int], ys: list[torch.Tensor]):
    """The degree-2 polynomial through three points (Lagrange form, exact in float64 for FLOP counts)."""
    def at(n: int) -> torch.Tensor:
        out = torch.zeros_like(ys[0])
        for i, (xi, yi) in enumerate(zip(xs, ys)):
            w = 1.0
            for j, xj in enumerate(xs):
                if j != i:
                    w *= (n - xj) / (xi - xj)
            out += w * yi
        return out.round()
    return at


def text_costs(model: nn.Module, lengths, table: dict | None = None) -> ExitCosts:
    """The costs of a text split: every sample at its own token length (``samples``: ``[E, N]``), and per exit the
    mean over the samples, as fractions of the bare backbone's mean over the same samples."""
    lengths = torch.as_tensor(lengths).long().flatten().cpu()
    if not len(lengths) or int(lengths.min()) < 1:
        raise ConfigError("text_costs: give the token length (>= 1) of every sample")
    table = table or length_table(model, lengths.unique().tolist())
    samples = torch.stack([table[n][0] for n in lengths.tolist()], 1)  # [E, N]
    backbone = float(sum(table[n][1] for n in lengths.tolist()) / len(lengths))
    one = exit_costs(model, (3, int(lengths[0])))  # blocks, parameters and the uncounted ops do not depend on length
    mean = samples.mean(1)
    exits = [ExitCost(c.exit, c.block, float(m), c.params, float(m) / backbone) for c, m in zip(one.exits, mean)]
    return ExitCosts(exits, backbone, one.backbone_params, (3, round(float(lengths.double().mean()))), one.uncounted,
                     samples=samples)
