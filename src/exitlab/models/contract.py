"""The ordered-blocks contract every backbone honours: exit points, the tap protocol, and the built-in base class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

# on_tap(block_index, feature) -> the feature to continue with (possibly fewer samples), or None to stop. A feature
# is a tensor, a TextFeature (token states with their attention mask) for text encoders, or a MultiScaleFeature
# (MSDNet's maps at several scales).
TapFn = Callable[[int, "torch.Tensor | TextFeature | MultiScaleFeature"],
                 "torch.Tensor | TextFeature | MultiScaleFeature | None"]


@dataclass(frozen=True)
class ExitPoint:
    """Shape of one block's output: ``channels``, spatial ``reduction`` vs the input, and ``kind`` map or tokens."""

    channels: int
    reduction: int = 1
    kind: str = "map"  # "map": [B, C, H, W]; "tokens": [B, N, D] with the CLS token first; "text": TextFeature;
    # "scales": MultiScaleFeature (channels and reduction are its coarsest map's)


@dataclass
class TextFeature:
    """A text encoder's block output: token states ``[B, L, D]`` with their attention mask ``[B, L]`` (True: a
    real token, False: padding). Rows slice together, so a sample that leaves takes its mask with it."""

    hidden: torch.Tensor  # [B, L, D]
    mask: torch.Tensor  # [B, L] bool

    def __getitem__(self, rows) -> TextFeature:
        return TextFeature(self.hidden[rows], self.mask[rows])

    def __len__(self) -> int:
        return self.hidden.shape[0]

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    def with_hidden(self, hidden: torch.Tensor) -> TextFeature:
        return TextFeature(hidden, self.mask)

    def pooled(self, pool: str = "cls") -> torch.Tensor:
        """One vector per sample ``[B, D]``: the first (CLS) token, or the mean of the real tokens (``"mean"``)."""
        h = self.hidden
        if pool == "cls":
            return h[:, 0]
        m = self.mask.to(h.dtype).unsqueeze(-1)  # [B, L, 1]
        return (h * m).sum(1) / m.sum(1).clamp_min(1.0)  # [B, D]


@dataclass
class MultiScaleFeature:
    """A multi-scale block output (MSDNet): a list of maps ``[B, C_s, H_s, W_s]``, finest first, coarsest last.
    Rows slice together, so a sample that leaves takes all its scales with it."""

    maps: list[torch.Tensor]

    def __getitem__(self, rows) -> MultiScaleFeature:
        return MultiScaleFeature([m[rows] for m in self.maps])

    def __len__(self) -> int:
        return self.maps[0].shape[0]

    @property
    def device(self) -> torch.device:
        return self.maps[0].device

    @property
    def coarsest(self) -> torch.Tensor:
        return self.maps[-1]

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> MultiScaleFeature:
        """The same feature with ``fn`` applied to every scale's map."""
        return MultiScaleFeature([fn(m) for m in self.maps])


class Backbone(Protocol):
    """What a backbone offers. Built-ins are ``stem`` + ``blocks`` + ``final``; adapters write their own ``run``."""

    feature_info: list[ExitPoint]  # one entry per block, in order
    num_classes: int

    def run(self, x: torch.Tensor, taps: set[int], on_tap: TapFn) -> torch.Tensor | None: ...


class BlocksBackbone(nn.Module):
    """Base for ordered-blocks backbones: ``stem``, ``blocks`` (an nn.ModuleList) and ``final`` (the classifier)."""

    stem: nn.Module
    blocks: nn.ModuleList
    final: nn.Module
    feature_info: list[ExitPoint]
    num_classes: int

    def run(self, x: torch.Tensor, taps: set[int], on_tap: TapFn) -> torch.Tensor | None:
        """Run block by block, handing the output of every block in ``taps`` to ``on_tap``."""
        h = self.stem(x)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i in taps:
                h = on_tap(i, h)
                if h is None:
                    return None
        return self.final(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The plain backbone: the final classifier's logits."""
        return self.run(x, set(), lambda i, h: h)
