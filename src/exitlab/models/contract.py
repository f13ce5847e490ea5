"""The ordered-blocks contract every backbone honours: exit points, the tap protocol, and the built-in base class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

# on_tap(block_index, feature) -> the feature to continue with (possibly fewer samples), or None to stop. A feature
# is a tensor, or a TextFeature (token states with their attention mask) for text encoders.
TapFn = Callable[[int, "torch.Tensor | TextFeature"], "torch.Tensor | TextFeature | None"]


@dataclass(frozen=True)
class ExitPoint:
    """Shape of one block's output: ``channels``, spatial ``reduction`` vs the input, and ``kind`` map or tokens."""

    channels: int
    reduction: int = 1
    kind: str = "map"  # "map": [B, C, H, W]; "tokens": [B, N, D] with the CLS token first; "text": TextFeature


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
