"""Measured FLOPs with PyTorch's own FlopCounterMode. Convention: 1 multiply-add = 2 FLOPs, so MACs = FLOPs / 2.

What is counted: matrix products, convolutions and attention (FlopCounterMode's formulas, plus the CPU attention
kernels it misses, see ``_MISSING``). What is not: elementwise ops, normalisation, pooling and softmax, as in the
paper's FLOPs. Every non-trivial op that ran without a formula is listed in :attr:`FlopReport.uncounted`, so a
reader can see what the total leaves out. Per-exit cumulative costs are in :mod:`exitlab.costs`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                             **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# Attention kernels that FlopCounterMode (torch 2.4 .. 2.13) has no formula for: counted as 0 without these.
_MISSING = {
    "_scaled_dot_product_flash_attention_for_cpu": _sdpa_cpu_flops,
    "_scaled_dot_product_fused_attention_overrideable": _sdpa_cpu_flops,
    "_scaled_dot_product_flash_attention_for_cpu_backward": _sdpa_cpu_backward_flops,
}


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None) -> int:
    """Backward of a convolution: each of the input and the weight gradient costs what the forward costs.
    FlopCounterMode's own formula (torch 2.4 .. 2.14) ignores ``groups`` and overcounts grouped and depthwise
    convolutions many times over (a depthwise 3x3 backward at 33x its forward instead of 2x)."""
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


@functools.cache
def _custom_mapping() -> dict:
    """Formulas for ops that FlopCounterMode counts as 0 but that do real work (only where torch has none), and the
    grouped-convolution backward, whose torch formula is wrong."""
    known = set(FlopCounterMode(display=False).flop_registry)
    mapping = {aten.convolution_backward: _conv_backward_flops}
    for name, formula in _MISSING.items():
        op = getattr(aten, name, None)
        if op is not None and op not in known:
            mapping[op] = formula
    return mapping


# Ops that only move, reshape or allocate data: never reported as uncounted.
_FREE = {
    "view", "_unsafe_view", "reshape", "_reshape_alias", "permute", "transpose", "t", "expand", "expand_as", "clone",
    "detach", "cat", "stack", "unsqueeze", "squeeze", "flatten", "unbind", "contiguous", "alias", "narrow", "view_as",
    "_to_copy", "lift_fresh", "lift_fresh_copy", "_local_scalar_dense",
}
_FREE_PREFIXES = ("new_", "empty", "zeros", "ones", "fill", "copy", "as_strided", "slice", "select", "split", "index")


def _is_free(name: str) -> bool:
    return name in _FREE or name.startswith(_FREE_PREFIXES)


@dataclass
class FlopReport:
    """FLOPs counted by op, and the non-trivial ops that no formula covered."""

    total: int = 0
    by_op: dict[str, int] = field(default_factory=dict)
    uncounted: list[str] = field(default_factory=list)

    @property
    def macs(self) -> int:
        return self.total // 2


class _OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func._overloadpacket)
        return func(*args, **(kwargs or {}))


def count_flops(fn: Callable[[], object], *, grad: bool = False) -> FlopReport:
    """Run ``fn()`` under FlopCounterMode (plus the CPU attention mapping) and report what was and wasn't counted.
    With ``grad`` autograd stays on, so a backward pass inside ``fn`` is counted too (a training step)."""
    counter = FlopCounterMode(display=False, custom_mapping=dict(_custom_mapping()))
    recorder = _OpRecorder()
    with torch.set_grad_enabled(grad), counter, recorder:
        fn()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    counted = set(counter.flop_registry)
    uncounted = sorted(
        str(op) for op in recorder.ops if op not in counted and not _is_free(op.__name__))
    return FlopReport(int(counter.get_total_flops()), by_op, uncounted)
