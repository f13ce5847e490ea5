"""Internal-classifier heads. Each kind is one small class built from an :class:`ExitPoint`."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from .contract import ExitPoint

HEADS: Registry[type[nn.Module]] = Registry("head")


def _pool(x: torch.Tensor, point: ExitPoint) -> torch.Tensor:
    """Global summary of a feature: mean over space for maps, mean over patch tokens for tokens."""
    if point.kind == "map":
        return x.mean(dim=(2, 3))  # [B, C]
    return x[:, 1:].mean(dim=1) if x.shape[1] > 1 else x[:, 0]  # [B, D]


def _option(name: str, value, lo: int = 1) -> None:
    """A whole-number head option must be an int >= ``lo``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ConfigError(f"model.head_kwargs.{name} must be a whole number >= {lo}, got {value!r}")


class _Head(nn.Module):
    """Shared cascade logic: with ``cascade`` the head also reads the previous exit's logits (ZTW).

    As in ZTW's reference code, the previous logits are detached and layer-normalised before they enter the
    head's linear map (``logits + W LayerNorm(prev)`` is a linear layer over the concatenation). ``W`` starts at 0,
    so a fresh cascading head predicts what the plain head would.
    """

    def __init__(self, num_classes: int, cascade: bool):
        super().__init__()
        if not isinstance(cascade, bool):
            raise ConfigError(f"model.head_kwargs.cascade must be true or false, got {cascade!r}")
        self.cascade = nn.Linear(num_classes, num_classes, bias=False) if cascade else None
        self.cascade_norm = nn.LayerNorm(num_classes) if cascade else None
        if self.cascade is not None:
            nn.init.zeros_(self.cascade.weight)

    def _combine(self, logits: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        if self.cascade is None or prev is None:
            return logits
        return logits + self.cascade(self.cascade_norm(prev.detach().to(logits.dtype)))


@HEADS.register("sdn")
class SDNHead(_Head):
    """SDN head: a learned mix of max and average pooling down to a ``grid`` x ``grid`` map, then a linear layer."""

    def __init__(self, point: ExitPoint, num_classes: int, *, grid: int = 4, cascade: bool = False):
        super().__init__(num_classes, cascade)
        if point.kind != "map":
            raise ConfigError("head 'sdn' needs spatial feature maps; for token exits (ViT) use 'cls', 'pooled' or "
                              "'mlp2'")
        _option("grid", grid)
        self.grid = grid
        self.alpha = nn.Parameter(torch.zeros(()))  # sigmoid(0) = 0.5: start as an even mix
        self.fc = nn.Linear(point.channels * grid * grid, num_classes)

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        g = min(self.grid, x.shape[-1], x.shape[-2])
        # a * max + (1 - a) * avg in three elementwise ops, not four: at batch 1 every op costs more than its
        # arithmetic. Not torch.lerp: its vectorised and scalar loops round differently (FMA), so a sample's logits
        # would depend on the batch it is in, and real early exit would no longer match the all-exits run exactly.
        avg = F.adaptive_avg_pool2d(x, g)  # [B, C, g, g]
        pooled = avg + torch.sigmoid(self.alpha) * (F.adaptive_max_pool2d(x, g) - avg)
        if g < self.grid:  # tiny maps: repeat up to the grid so the linear layer's shape holds
            pooled = F.interpolate(pooled, size=self.grid, mode="nearest")
        return self._combine(self.fc(pooled.flatten(1)), prev)


@HEADS.register("pooled")
class PooledHead(_Head):
    """Global average pooling (or mean over patch tokens), then one linear layer."""

    def __init__(self, point: ExitPoint, num_classes: int, *, cascade: bool = False):
        super().__init__(num_classes, cascade)
        self.point = point
        self.fc = nn.Linear(point.channels, num_classes)

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        return self._combine(self.fc(_pool(x, self.point)), prev)


class MLPHead(_Head):
    """Pooled feature, then ``layers`` linear layers with ReLU between them (``layers=1`` is a linear probe)."""

    def __init__(self, point: ExitPoint, num_classes: int, *, layers: int = 2, hidden: int | None = None,
                 cascade: bool = False):
        super().__init__(num_classes, cascade)
        _option("layers", layers)
        if hidden is not None:
            _option("hidden", hidden)
        self.point = point
        hidden = hidden or point.channels
        dims = [point.channels] + [hidden] * (layers - 1) + [num_classes]
        mods: list[nn.Module] = []
        for i in range(layers):
            mods.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                mods.append(nn.ReLU(inplace=True))
        self.mlp = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        return self._combine(self.mlp(_pool(x, self.point)), prev)


HEADS.register("mlp", MLPHead)
for _n in (1, 2, 3):
    HEADS.register(f"mlp{_n}", functools.partial(MLPHead, layers=_n))


@HEADS.register("cls")
class CLSHead(_Head):
    """ViT head: LayerNorm then a linear layer on the CLS token (token 0)."""

    def __init__(self, point: ExitPoint, num_classes: int, *, cascade: bool = False):
        super().__init__(num_classes, cascade)
        if point.kind != "tokens":
            raise ConfigError("head 'cls' reads a CLS token and needs a token exit (ViT); for CNNs use 'sdn' or "
                              "'pooled'")
        self.norm = nn.LayerNorm(point.channels)
        self.fc = nn.Linear(point.channels, num_classes)

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        return self._combine(self.fc(self.norm(x[:, 0])), prev)


@HEADS.register("text")
class TextHead(_Head):
    """Text encoder head: the CLS token (``pool="cls"``) or the mean of the real tokens under the attention mask
    (``pool="mean"``), then a linear layer (``layers=1``) or an MLP (``layers=2``, tanh between, as BERT's pooler)."""

    def __init__(self, point: ExitPoint, num_classes: int, *, pool: str = "cls", layers: int = 1,
                 hidden: int | None = None, cascade: bool = False):
        super().__init__(num_classes, cascade)
        if point.kind != "text":
            raise ConfigError("head 'text' reads a text encoder's tokens and attention mask (exitlab.from_hf); for "
                              "images use 'sdn', 'pooled' or 'cls'")
        if pool not in ("cls", "mean"):
            raise ConfigError(f"model.head_kwargs.pool must be 'cls' or 'mean', got {pool!r}")
        if layers not in (1, 2):
            raise ConfigError(f"model.head_kwargs.layers must be 1 (linear) or 2 (MLP), got {layers!r}")
        if hidden is not None:
            _option("hidden", hidden)
        self.pool = pool
        d = point.channels
        self.fc = nn.Linear(d, num_classes) if layers == 1 else \
            nn.Sequential(nn.Linear(d, hidden or d), nn.Tanh(), nn.Linear(hidden or d, num_classes))

    def forward(self, x, prev: torch.Tensor | None = None) -> torch.Tensor:
        return self._combine(self.fc(x.pooled(self.pool)), prev)  # x: token states [B, L, D] and their mask


class CoarsestScale(nn.Module):
    """A map head on a multi-scale exit (MSDNet): it reads the coarsest scale's map only."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    @property
    def cascade(self) -> nn.Module | None:
        return self.inner.cascade

    def forward(self, x, prev: torch.Tensor | None = None) -> torch.Tensor:
        return self.inner(x.coarsest, prev)  # [B, C, H, W] of the coarsest scale


@HEADS.register("shared")
class SharedHead(nn.Module):
    """LayerSkip's shared exit: the IC is the backbone's own final classifier, the same weights at every exit. Its
    parameters are the backbone's (a plain reference, not registered again); built by the model, not by name."""

    def __init__(self, point: ExitPoint, num_classes: int, *, final: nn.Module | None = None):
        super().__init__()
        if final is None:
            raise ConfigError("head 'shared' reuses the backbone's final classifier; use model.head=shared (the model "
                              "builds it)")
        self.__dict__["final"] = final

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        return self.__dict__["final"](x)


def build_head(name: str, point: ExitPoint, num_classes: int, **kwargs) -> nn.Module:
    """Build the head ``name`` for a feature described by ``point``. On a multi-scale exit, a head that does not
    read scales itself (``reads_scales``) is built for the coarsest map and reads only that."""
    cls = HEADS.get(name)
    if point.kind == "scales" and not getattr(cls, "reads_scales", False):
        return CoarsestScale(build_head(name, ExitPoint(point.channels, point.reduction), num_classes, **kwargs))
    if point.kind == "text" and name not in ("text", "gpf"):
        raise ConfigError(f"head {name!r} reads image maps or ViT tokens; a text encoder's exits take head 'text' "
                          "(options pool: cls|mean, layers: 1|2)")
    try:
        return cls(point, num_classes, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model.head_kwargs: {e}; check the options of head {name!r}") from None
