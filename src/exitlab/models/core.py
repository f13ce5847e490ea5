"""The multi-exit model: a backbone of ordered blocks, internal classifiers after chosen blocks, final exit last."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict

import torch
from torch import nn

from ..errors import ConfigError
from .contract import MultiScaleFeature, TextFeature
from .gpf import gpf_heads
from .heads import build_head
from .spec import ModelSpec

# on_exit(exit j, its logits, the feature it read) -> what the walk does next: True goes on with every sample,
# a [b] bool mask goes on with those samples only (their features and logits are compacted), None stops.
ExitFn = Callable[[int, torch.Tensor, torch.Tensor], "bool | torch.Tensor | None"]


class _GradScale(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def _grad_scaled(h, scale: float):
    """``h`` with its gradient scaled on the way back (a text feature's token states; its mask has no gradient)."""
    if isinstance(h, TextFeature):
        return h.with_hidden(_GradScale.apply(h.hidden, scale))
    if isinstance(h, MultiScaleFeature):
        return h.apply(lambda m: _GradScale.apply(m, scale))
    return _GradScale.apply(h, scale)


class MultiExitModel(nn.Module):
    """A backbone with internal classifiers (ICs) after the blocks in ``exits``; the backbone's classifier is last.

    ``forward`` returns a plain list of logits, one per exit, final exit last. ``forward_to(x, k)`` stops after
    exit ``k``. Real early exit with per-sample compaction lives in :func:`exitlab.inference.early_exit`.
    """

    def __init__(self, backbone: nn.Module, exits: Sequence[int], head: str = "sdn", *,
                 head_kwargs: dict | None = None, spec: ModelSpec | None = None):
        super().__init__()
        n_blocks = len(backbone.feature_info)
        exits = list(exits)
        check_exits(exits, n_blocks)
        self.backbone = backbone
        self.exits = exits
        self.head_name = head
        self.head_kwargs = dict(head_kwargs or {})
        self.heads = nn.ModuleList(_heads(head, backbone, exits, self.head_kwargs))
        self.spec = spec  # how to build this model again (set by its builder); saved in model.json

    @property
    def num_exits(self) -> int:
        return len(self.exits) + 1

    @property
    def num_classes(self) -> int:
        return self.backbone.num_classes

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """One sample's shape (C, H, W) as recorded in the spec, or None when the spec does not say."""
        return None if self.spec is None else self.spec.input_shape

    @property
    def task(self) -> str:
        """``"classification"``, or ``"regression"`` for a model with one output per exit trained on numbers."""
        return "classification" if self.spec is None else self.spec.task

    def forward(self, x: torch.Tensor, *, grad_equilibrium: bool = False, feats: list | None = None
                ) -> list[torch.Tensor]:
        """Logits of every exit, final exit last. ``grad_equilibrium`` rescales gradients as in Li et al. 2019;
        ``feats``, a list, receives every IC's input feature (for losses that need them, such as GPF's)."""
        return self.forward_to(x, self.num_exits - 1, grad_equilibrium=grad_equilibrium, feats=feats)

    def forward_to(self, x: torch.Tensor, k: int, *, grad_equilibrium: bool = False, feats: list | None = None
                   ) -> list[torch.Tensor]:
        """Logits of exits ``0..k`` only; the backbone stops after the block that feeds exit ``k``."""
        if not 0 <= k < self.num_exits:
            raise IndexError(f"exit {k} out of range; this model has exits 0..{self.num_exits - 1}")
        outs: list[torch.Tensor] = []

        def keep(j: int, z: torch.Tensor, h) -> bool:
            outs.append(z)
            if feats is not None:
                feats.append(h)
            return True

        final = self.walk(x, keep, upto=k, grad_equilibrium=grad_equilibrium)
        if final is not None:
            outs.append(final)
        return outs

    def walk(self, x: torch.Tensor, on_exit: ExitFn, *, upto: int | None = None,
             grad_equilibrium: bool = False) -> torch.Tensor | None:
        """The one head walk: run the backbone, evaluate each IC on its block's output with the previous exit's
        logits (for cascading heads), and let ``on_exit`` decide who goes on. Stops after exit ``upto``; returns
        the final exit's logits for the samples still running, or None when the walk stopped early."""
        last = self.num_exits - 1 if upto is None else upto
        return self.backbone.run(x, set(self.exits[: last + 1]), self._walker(on_exit, last, grad_equilibrium))

    def heads_on(self, feats: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        """Every IC's logits from features already computed (``feats[block]``), by the same walk."""
        outs: list[torch.Tensor] = []
        on_tap = self._walker(lambda j, z, h: outs.append(z) or True, self.num_exits - 1, False)
        for b in self.exits:
            on_tap(b, feats[b])
        return outs

    def _walker(self, on_exit: ExitFn, last: int, grad_equilibrium: bool):
        slot = {b: j for j, b in enumerate(self.exits)}
        heads = list(self.heads)  # ModuleList indexing formats a string key on every access
        n, prev = self.num_exits, None

        def on_tap(block: int, h: torch.Tensor) -> torch.Tensor | None:
            nonlocal prev
            j = slot[block]
            to_head, to_next = h, h
            if grad_equilibrium:  # exit j shares the trunk with the n - j - 1 exits after it
                to_head = _grad_scaled(h, 1.0 / (n - j))
                to_next = _grad_scaled(h, (n - j - 1) / (n - j))
            out = heads[j](to_head, prev)  # logits, or (logits, what the next exit reads) for GPF
            logits, carry = out if isinstance(out, tuple) else (out, out)
            verdict = on_exit(j, logits, h)
            if verdict is None or verdict is False or j == last:
                return None
            if verdict is True:
                prev = carry
                return to_next
            prev = carry[verdict]
            return to_next[verdict]

        return on_tap

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())

    def describe(self) -> dict:
        """A JSON-able summary: exits, their block indices and feature shapes."""
        info = self.backbone.feature_info
        return {
            "exits": self.exits,
            "num_exits": self.num_exits,
            "head": self.head_name,
            "blocks": len(info),
            "exit_features": [asdict(info[i]) for i in self.exits],
        }


def _heads(head: str, backbone: nn.Module, exits: list[int], head_kwargs: dict) -> list[nn.Module]:
    """One IC head per exit; GPF's are built together (they share projections), and ``shared`` ICs are the
    backbone's own final classifier, which needs every exit's feature to have the last block's shape."""
    points, num_classes = [backbone.feature_info[i] for i in exits], backbone.num_classes
    if head == "gpf":
        return gpf_heads(points, num_classes, **head_kwargs)
    if head == "shared":
        last = backbone.feature_info[-1]
        bad = [e for e, p in zip(exits, points) if (p.channels, p.kind) != (last.channels, last.kind)]
        if bad or head_kwargs or not isinstance(getattr(backbone, "final", None), nn.Module):
            raise ConfigError(f"model.head=shared reuses the final classifier, which reads {last.channels}-channel "
                              f"{last.kind} features, but the exits after blocks {bad or exits} give another shape (or "
                              "the backbone has no final module, or head_kwargs are set); place the exits where the "
                              "width is the last block's (e.g. the last stage, or any ViT block) or use another head")
        return [build_head("shared", p, num_classes, final=backbone.final) for p in points]
    heads = []
    for j, point in enumerate(points):
        kwargs = dict(head_kwargs)
        if j == 0 and kwargs.get("cascade"):
            kwargs["cascade"] = False  # the first IC has no earlier exit to read from
        heads.append(build_head(head, point, num_classes, **kwargs))
    return heads


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode, then give every submodule back its own mode (a frozen backbone inside a
    training model stays in eval mode). Every inference entry point goes through this."""
    modes = _modes(model, [])
    if any(training for _, training in modes):
        model.eval()
    try:
        yield model
    finally:
        for m, training in modes:  # pre-order: a parent before its children
            if m.training == training:
                continue
            if type(m).train is nn.Module.train:
                m.training = training  # train() would redo m's whole subtree: quadratic on MSDNet's ~1500 modules
            else:
                m.train(training)  # a module with its own train(); its children are set right after it


def _modes(model: nn.Module, out: list[tuple[nn.Module, bool]]) -> list[tuple[nn.Module, bool]]:
    """``(module, training)`` for ``model`` and every submodule, parents before children (a module shared by two
    parents appears twice). ``model.modules()`` builds a dotted name for each one on the way, which at batch 1
    costs more than the heads do."""
    out.append((model, model.training))
    for child in model._modules.values():
        if child is not None:
            _modes(child, out)
    return out


def check_exits(exits: Sequence[int], n_blocks: int) -> None:
    """Exit indices must be sorted, unique, and name blocks before the last one (which feeds the final exit)."""
    if any(not isinstance(e, int) or isinstance(e, bool) for e in exits):
        raise ConfigError(f"model.exits must be integers, got {list(exits)}")
    if list(exits) != sorted(set(exits)):
        raise ConfigError(f"model.exits must be sorted and unique, got {list(exits)}; e.g. {sorted(set(exits))}")
    bad = [e for e in exits if not 0 <= e < n_blocks - 1]
    if bad:
        raise ConfigError(
            f"model.exits {bad} out of range: this backbone has blocks 0..{n_blocks - 1}, and ICs go after blocks "
            f"0..{n_blocks - 2} (the last block feeds the final exit)"
        )
