"""Turn any ``nn.Module`` into a multi-exit model, given the names of the submodules after which exits go."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .contract import ExitPoint, TapFn
from .core import MultiExitModel


class _Stop(Exception):
    """Raised inside a forward hook to end the forward pass early."""


class HookedBackbone(nn.Module):
    """Wraps a user module; the outputs of the named submodules become the exit-able "blocks", in call order.

    The tapped feature may be replaced by a smaller batch (early-exit compaction), which is correct when nothing
    computed before a tap point is used after it -- true for chain-like models (``nn.Sequential``, most CNN and
    ViT stage layouts). Models with skip connections across a tap point can still be trained and simulated.
    """

    def __init__(self, module: nn.Module, tap_names: Sequence[str], num_classes: int, input_shape: tuple[int, ...]):
        super().__init__()
        names = dict(module.named_modules())
        missing = [n for n in tap_names if n not in names]
        if missing:
            raise ConfigError(f"exit_after names {missing} are not submodules; some valid names: {list(names)[1:12]}")
        self.module = module
        self.tap_names = list(tap_names)
        self.num_classes = num_classes
        self.feature_info = self._probe(input_shape) + [ExitPoint(num_classes, 1, "logits")]

    def _probe(self, input_shape: tuple[int, ...]) -> list[ExitPoint]:
        seen: dict[int, torch.Size] = {}

        def on_tap(i: int, h: torch.Tensor) -> torch.Tensor:
            seen[i] = h.shape
            return h

        was = self.training
        self.eval()
        with torch.no_grad():
            self.run(torch.zeros(2, *input_shape), set(range(len(self.tap_names))), on_tap)
        self.train(was)
        if sorted(seen) != list(range(len(self.tap_names))):
            never = [name for i, name in enumerate(self.tap_names) if i not in seen]
            raise ConfigError(f"exit_after: modules {never} were never called in forward")
        info = []
        for i in range(len(self.tap_names)):
            shape = seen[i]
            if len(shape) == 4:
                info.append(ExitPoint(shape[1], max(1, input_shape[-1] // shape[-1]), "map"))
            elif len(shape) == 3:
                info.append(ExitPoint(shape[-1], 1, "tokens"))
            else:
                raise ConfigError(f"exit after {self.tap_names[i]!r}: output shape {tuple(shape)} is neither a "
                                  "[B, C, H, W] map nor [B, N, D] tokens")
        return info

    def run(self, x: torch.Tensor, taps: set[int], on_tap: TapFn) -> torch.Tensor | None:
        """Run the user module with forward hooks on the tapped submodules; a hook may shrink or stop the pass."""
        modules = dict(self.module.named_modules())
        handles = []

        def make_hook(i: int):
            def hook(mod, inp, out):
                h = on_tap(i, out)
                if h is None:
                    raise _Stop
                return h

            return hook

        for i in sorted(taps):
            handles.append(modules[self.tap_names[i]].register_forward_hook(make_hook(i)))
        try:
            return self.module(x)
        except _Stop:
            return None
        finally:
            for h in handles:
                h.remove()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def from_module(module: nn.Module, exit_after: Sequence[str], *, num_classes: int, input_shape: tuple[int, ...],
                head: str = "pooled", head_kwargs: dict | None = None) -> MultiExitModel:
    """Attach exits to a user model after the submodules named in ``exit_after``; the model's output is the final exit.

    ``input_shape`` is one sample's shape, e.g. ``(3, 32, 32)``; a dry run on it finds each exit's feature shape.
    """
    backbone = HookedBackbone(module, exit_after, num_classes, tuple(input_shape))
    exits = list(range(len(exit_after)))
    return MultiExitModel(backbone, exits, head, head_kwargs=head_kwargs, spec={"adapter": list(exit_after)})
