"""Turn any ``nn.Module`` into a multi-exit model, given the names of the submodules after which exits go.

The outputs of the named submodules become the exit-able "blocks", in call order. The model's own output is the
final exit. Forward hooks read (and, for real early exit, replace) the tapped features, so nothing of the user's
code changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError, ExitlabError
from .contract import ExitPoint, TapFn
from .core import MultiExitModel, eval_mode
from .flops import count_flops
from .spec import ModuleSpec


class _Stop(Exception):
    """Raised inside a forward hook to end the forward pass early."""


class HookedBackbone(nn.Module):
    """A user module whose named submodules are tap points, in call order.

    The tapped feature may be replaced by a smaller batch (early-exit compaction). That is exact when nothing
    computed before a tap point is used after it: true of chain-like stage layouts (``nn.Sequential``, the stages
    of torchvision and timm CNNs and ViTs). :meth:`check_compaction` tests it on the model; real early exit calls it
    and refuses models where it fails. Training and simulated early exit work on every model.
    """

    def __init__(self, module: nn.Module, tap_names: Sequence[str], num_classes: int | None,
                 input_shape: tuple[int, ...]):
        super().__init__()
        names = dict(module.named_modules())
        missing = [n for n in tap_names if n not in names or not n]
        if missing:
            some = [n for n in names if n][:12]
            raise ConfigError(f"exit names {missing} are not submodules of {type(module).__name__}; some valid names: "
                              f"{some}")
        if len(set(tap_names)) != len(tap_names):
            raise ConfigError(f"exit names {list(tap_names)} repeat a module; name each tap point once")
        self.module = module
        self.tap_names = list(tap_names)
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape)
        points = self._probe()  # sets num_classes from the module's output when it is None
        self.feature_info = points + [ExitPoint(self.num_classes, 1, "logits")]
        self._compactable: bool | None = None

    def _probe(self) -> list[ExitPoint]:
        """One dry run: every tap must fire exactly once, in the order given; their outputs give the exit points."""
        order: list[int] = []
        shapes: dict[int, torch.Size] = {}

        def on_tap(i: int, h: torch.Tensor) -> torch.Tensor:
            order.append(i)
            shapes[i] = h.shape
            return h

        with torch.no_grad(), eval_mode(self):
            try:
                out = self.run(torch.zeros(2, *self.input_shape), set(range(len(self.tap_names))), on_tap,
                               strict=False)
            except (RuntimeError, ValueError, TypeError, IndexError) as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise ConfigError(f"a dry run of {type(self.module).__name__} on input_shape {self.input_shape} failed "
                                  f"({first}); give input_shape as the shape of one sample that the module accepts, "
                                  "e.g. (3, 224, 224)") from None
        self._check_output(out)
        self._check_order(order)
        return [self._point(i, shapes[i]) for i in range(len(self.tap_names))]

    def _check_output(self, out) -> None:
        """The module's own output is the final exit: one tensor of logits ``[B, num_classes]``."""
        name = type(self.module).__name__
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"{name}.forward returns a {type(out).__name__}, not a tensor; the module's output is "
                              "the final exit, so wrap it so that forward returns the logits [B, num_classes]")
        if out.dim() != 2:
            raise ConfigError(f"{name}.forward returns shape {[2, *out.shape[1:]]} for a batch of 2; the final exit "
                              "must be logits [B, num_classes]: wrap the module so that forward returns them")
        if self.num_classes is None:
            self.num_classes = out.shape[1]
        elif out.shape[1] != self.num_classes:
            raise ConfigError(f"{name}.forward gives {out.shape[1]} logits but num_classes is {self.num_classes}; "
                              f"replace its classifier with one of {self.num_classes} outputs, or set num_classes "
                              "to match")

    def _check_order(self, order: list[int]) -> None:
        names = self.tap_names
        twice = sorted({names[i] for i in order if order.count(i) > 1})
        if twice:
            raise ConfigError(f"exit after {twice[0]!r}: that module runs {order.count(names.index(twice[0]))} times "
                              "per forward (a shared module, like torchvision ResNet's self.relu), so its output is "
                              "not one point of the network; tap a module that runs once, e.g. a stage or block")
        never = [n for i, n in enumerate(names) if i not in order]
        if never:
            raise ConfigError(f"exit after {never}: those modules never run in forward; pick modules that do")
        if order != sorted(order):
            called = [names[i] for i in order]
            raise ConfigError(f"exit names {names} are not in call order (forward runs them as {called}); list them "
                              "in the order forward calls them")

    def _point(self, i: int, shape: torch.Size) -> ExitPoint:
        square = len(self.input_shape) == 3 and self.input_shape[1] == self.input_shape[2]
        if len(shape) == 4 and square and shape[1] == shape[2] != shape[3]:  # on a square input, [B, C, H, W] is square
            raise ConfigError(f"exit after {self.tap_names[i]!r} gives a channels-last map {[1, *shape[1:]]} "
                              "([B, H, W, C]); exitlab's heads read [B, C, H, W] maps, so this model's stages cannot "
                              "take exits yet (see docs/models.md)")
        if len(shape) == 4:
            return ExitPoint(shape[1], max(1, self.input_shape[-1] // shape[-1]), "map")
        if len(shape) == 3:
            return ExitPoint(shape[-1], 1, "tokens")
        raise ConfigError(f"exit after {self.tap_names[i]!r}: output shape {tuple(shape)} is neither a [B, C, H, W] "
                          "map nor [B, N, D] tokens; tap a module whose output is one")

    def run(self, x: torch.Tensor, taps: set[int], on_tap: TapFn, *, strict: bool = True) -> torch.Tensor | None:
        """Run the user module with forward hooks on the tapped submodules; a hook may shrink or stop the pass.
        A tap that fires twice in one pass is an error (``strict``): its output would be handed on twice."""
        modules = dict(self.module.named_modules())
        fired: set[int] = set()

        def make_hook(i: int):
            def hook(mod, inp, out):
                if strict and i in fired:
                    raise ConfigError(f"exit after {self.tap_names[i]!r}: the module ran twice in one forward pass; "
                                      "tap a module that runs once")
                fired.add(i)
                h = on_tap(i, out)
                if h is None:
                    raise _Stop
                return h

            return hook

        handles = [modules[self.tap_names[i]].register_forward_hook(make_hook(i)) for i in sorted(taps)]
        try:
            return self.module(x)
        except _Stop:
            return None
        finally:
            for h in handles:
                h.remove()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def check_compaction(self) -> None:
        """Raise unless dropping samples at every tap point leaves the others' outputs unchanged (checked once)."""
        if self._compactable is None:
            self._compactable = self._compaction_holds()
        if not self._compactable:
            raise ExitlabError(f"real early exit cannot run on this adapted {type(self.module).__name__}: something "
                               "computed before an exit is used after it (a skip connection across a tap point), so "
                               "samples cannot leave the batch there; tap other modules (stage outputs), or simulate "
                               "early exit from cached logits (exitlab eval)")

    def _compaction_holds(self) -> bool:
        n = len(self.tap_names)
        x = torch.randn(n + 2, *self.input_shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad(), eval_mode(self):
            full = self.module(x)

            def drop_first(i: int, h: torch.Tensor) -> torch.Tensor:
                return h[1:]  # one sample fewer at every tap: n + 2 in, 2 out

            try:
                part = self.run(x, set(range(len(self.tap_names))), drop_first)
            except (RuntimeError, ValueError, IndexError):
                return False
        return part is not None and part.shape == full[n:].shape and torch.allclose(part, full[n:], atol=1e-5)

    def tap_flops(self) -> list[int]:
        """Measured FLOPs of one sample up to each tap point (cumulative)."""
        x = torch.zeros(1, *self.input_shape)
        out = []
        with eval_mode(self):
            for i in range(len(self.tap_names)):
                out.append(count_flops(lambda i=i: self.run(x, {i}, lambda j, h: None)).total)
        return out


def from_module(module: nn.Module, exit_after: Sequence[str], *, num_classes: int | None, input_shape: tuple[int, ...],
                head: str = "pooled", head_kwargs: dict | None = None, factory: str | None = None,
                factory_kwargs: dict | None = None) -> MultiExitModel:
    """Attach exits to a user model after the submodules named in ``exit_after``; the model's output is the final exit.

    ``input_shape`` is one sample's shape, e.g. ``(3, 32, 32)``; a dry run on it finds each exit's feature shape and
    checks that every named module runs exactly once, in the order given, and that the module returns logits
    ``[B, num_classes]`` (``num_classes=None``: as many classes as the module's output has). ``factory``
    (``"package.module:function"``) with ``factory_kwargs`` says how to build ``module`` again: with it, a run
    directory or a ``save_pretrained`` folder can be loaded by ``exitlab.load`` alone; without it, pass the module
    back: ``exitlab.load(dir, module=m)``.
    """
    backbone = HookedBackbone(module, list(exit_after), num_classes, tuple(input_shape))
    spec = ModuleSpec(exits=tuple(exit_after), num_classes=backbone.num_classes, input_shape=tuple(input_shape),
                      head=head, head_kwargs=dict(head_kwargs or {}), factory=factory,
                      factory_kwargs=dict(factory_kwargs or {}))
    return MultiExitModel(backbone, list(range(len(exit_after))), head, head_kwargs=head_kwargs, spec=spec)
