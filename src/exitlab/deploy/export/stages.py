"""A multi-exit model cut into stages: stage j runs the blocks up to exit j and returns (feature, logits of exit j).

Stages are plain ``nn.Module`` views that share the model's parameters. They are what the ONNX exporter traces
(one graph per stage) and what the FLOPs in the export manifest are counted on.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ExitlabError
from ...models.contract import MultiScaleFeature
from ...models.flops import count_flops


def _has_cascade(head: nn.Module) -> bool:
    """A ZTW-style head reads the previous exit's logits as a second input."""
    return getattr(head, "cascade", None) is not None


def _arity(bb: nn.Module, block: int) -> int:
    """How many tensors a block's output is: one, or one per scale (``bb.scales``, MSDNet's multi-scale maps)."""
    scales = getattr(bb, "scales", None)
    return 1 if scales is None else scales[block]


def _flat(h) -> tuple[torch.Tensor, ...]:
    return tuple(h.maps) if isinstance(h, MultiScaleFeature) else (h,)


class Stage(nn.Module):
    """Blocks ``start..end-1`` (plus the stem for stage 0), then exit ``index``'s head, or the final classifier.

    ``forward(*features[, prev_logits])`` returns ``(*features, logits)`` for an internal exit and ``logits`` alone
    for the final exit. A feature is one tensor, or one tensor per scale for a multi-scale backbone (MSDNet), so
    every graph input and output is a plain tensor with the batch first. ``prev_logits`` is taken only when the head
    is a cascading head and this is not the first exit.
    """

    def __init__(self, model: nn.Module, index: int):
        super().__init__()
        bb = model.backbone
        n_ics = len(model.exits)
        start = 0 if index == 0 else model.exits[index - 1] + 1
        end = model.exits[index] + 1 if index < n_ics else len(bb.blocks)
        self.index, self.start, self.end = index, start, end
        self.stem = bb.stem if index == 0 else None
        self.blocks = nn.ModuleList(list(bb.blocks)[start:end])
        self.head = model.heads[index] if index < n_ics else None
        self.final = bb.final if index == n_ics else None
        self.takes_prev = self.head is not None and index > 0 and _has_cascade(self.head)
        self.n_in = 1 if index == 0 else _arity(bb, start - 1)
        self.n_out = 0 if self.final is not None else _arity(bb, end - 1)

    @property
    def is_final(self) -> bool:
        return self.final is not None

    @property
    def input_names(self) -> list[str]:
        first = ["x"] if self.index == 0 else _names("feature_in", self.n_in)
        return [*first, "prev_logits"] if self.takes_prev else first

    @property
    def output_names(self) -> list[str]:
        return ["logits"] if self.is_final else [*_names("feature", self.n_out), "logits"]

    def forward(self, *args: torch.Tensor):
        h = args[0] if self.n_in == 1 else MultiScaleFeature(list(args[: self.n_in]))
        prev = args[self.n_in] if self.takes_prev else None
        if self.stem is not None:
            h = self.stem(h)
        for block in self.blocks:
            h = block(h)
        if self.final is not None:
            return self.final(h)  # [B, K]
        return (*_flat(h), self.head(h, prev))  # feature tensors, [B, K]


def _names(stem: str, n: int) -> list[str]:
    return [stem] if n == 1 else [f"{stem}_{s}" for s in range(n)]


class AllExits(nn.Module):
    """The whole model as one graph: every exit's logits, final exit last (no early exit inside the graph)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(x))


def check_exportable(model: nn.Module) -> None:
    """Staged export cuts ``backbone.blocks``; models wrapped with ``from_module`` have no such list."""
    bb = model.backbone
    if not all(hasattr(bb, a) for a in ("stem", "blocks", "final")):
        raise ExitlabError("staged export needs an ordered-blocks backbone (stem, blocks, final); a model built with "
                           "exitlab.from_module can only be exported with layout='all'")


def build_stages(model: nn.Module) -> list[Stage]:
    """One :class:`Stage` per exit, final exit last."""
    check_exportable(model)
    return [Stage(model, j).eval() for j in range(model.num_exits)]


@torch.no_grad()
def example_inputs(stages: list[Stage], x: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """The inputs each stage sees when the model runs on ``x`` (used for tracing, FLOPs and verification)."""
    inputs, h, prev = [], (x,), None
    for st in stages:
        args = (*h, prev) if st.takes_prev else h
        inputs.append(args)
        out = st(*args)
        if not st.is_final:
            h, prev = out[:-1], out[-1]
    return inputs


def stage_flops(stages: list[Stage], sample_shape: tuple[int, ...]) -> list[int]:
    """Measured FLOPs of each stage for one sample (1 multiply-add = 2 FLOPs, :func:`exitlab.flops.count_flops`)."""
    args = example_inputs(stages, torch.zeros(1, *sample_shape))
    return [count_flops(lambda st=st, a=a: st(*a)).total for st, a in zip(stages, args)]
