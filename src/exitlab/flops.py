"""Measured FLOPs with PyTorch's own FlopCounterMode. Convention: 1 multiply-add = 2 FLOPs, so MACs = FLOPs / 2."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

aten = torch.ops.aten


def _sdpa_cpu_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_mapping() -> dict:
    """Ops that FlopCounterMode counts as 0 on CPU but that do real work."""
    mapping = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu",):
        op = getattr(aten, name, None)
        if op is not None:
            mapping[op] = _sdpa_cpu_flops
    return mapping


# Ops that move or reshape data, or are elementwise: not counted, by the same convention as fvcore and the paper.
_FREE_PREFIXES = (
    "view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "clone", "detach", "cat", "stack",
    "unsqueeze", "squeeze", "flatten", "slice", "select", "split", "unbind", "contiguous", "as_strided", "alias",
    "empty", "zeros", "ones", "fill", "copy", "_to_copy", "lift_fresh", "new_", "index", "narrow", "_reshape",
)


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


def count_flops(fn: Callable[[], object]) -> FlopReport:
    """Run ``fn()`` under FlopCounterMode (plus the CPU attention mapping) and report what was and wasn't counted."""
    counter = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
    recorder = _OpRecorder()
    with torch.no_grad(), counter, recorder:
        fn()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    counted = set(counter.flop_registry)
    uncounted = sorted(
        str(op) for op in recorder.ops if op not in counted and not op.__name__.lstrip("_").startswith(_FREE_PREFIXES)
    )
    return FlopReport(int(counter.get_total_flops()), by_op, uncounted)
