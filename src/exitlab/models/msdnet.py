"""MSDNet (Huang et al., ICLR 2018, "Multi-Scale Dense Networks for Resource Efficient Image Classification").

A network built for early exit: feature maps are kept at several scales (finest first) and every layer adds
``growth * growth_factors[s]`` new channels to each scale, densely, from the same scale and (strided) from the
finer one. The finest scales are dropped one by one with depth, each time followed by a 1x1 transition that
halves the channels. A classifier (two strided 3x3 convs on the coarsest scale, average pooling, linear) follows
every block. Configured as in the reference code (kalviny/MSDNet-PyTorch) for CIFAR: the stem is its first layer,
each exitlab block one of its blocks (``base`` layers, then ``step`` more per block), ``prune="max"``.

In exitlab's ordered-blocks contract the state between blocks is a :class:`MultiScaleFeature` (the list of maps),
the ICs are MSDNet classifiers (head ``msdnet``, the backbone's default) and ``final`` is the last one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from .contract import BlocksBackbone, ExitPoint, MultiScaleFeature
from .heads import _Head, _option
from .resnet import init_conv_bn


def _cbr(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias), BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class _NewMaps(nn.Module):
    """New channels from one input map: an optional 1x1 bottleneck (at most ``bottleneck * cout`` wide), then a 3x3
    conv, stride 1 (same scale) or 2 (from the finer scale)."""

    def __init__(self, cin: int, cout: int, stride: int, bottleneck: int | None):
        super().__init__()
        inner = min(cin, bottleneck * cout) if bottleneck else cin
        layers = [_cbr(cin, inner, 1)] if bottleneck else []
        self.net = nn.Sequential(*layers, _cbr(inner, cout, 3, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _ScaleUnit(nn.Module):
    """One output scale of a dense layer: its input map, then new maps from it and (if any) from the finer scale."""

    def __init__(self, c_same: int, c_finer: int | None, growth: int, bn_same: int | None, bn_finer: int | None):
        super().__init__()
        split = growth if c_finer is None else growth // 2  # half from each input when there are two
        self.down = None if c_finer is None else _NewMaps(c_finer, split, 2, bn_finer)
        self.same = _NewMaps(c_same, split, 1, bn_same)

    def forward(self, same: torch.Tensor, finer: torch.Tensor | None) -> torch.Tensor:
        new = [self.same(same)] if self.down is None else [self.down(finer), self.same(same)]
        return torch.cat([same, *new], 1)  # [B, C + growth, H, W]


class _DenseLayer(nn.Module):
    """A multi-scale dense layer from ``scales_in`` to ``scales_out`` scales (the coarsest ones of ``n``); when one
    scale is dropped, the new finest scale still reads the dropped one through a strided conv."""

    def __init__(self, width: int, growth: int, scales_in: int, scales_out: int, cfg: _Config):
        super().__init__()
        n = len(cfg.growth_factors)
        self.first_in, self.first_out = n - scales_in, n - scales_out
        g, b = cfg.growth_factors, cfg.bn_factors if cfg.bottleneck else [None] * n
        units = []
        for s in range(self.first_out, n):
            finer = s - 1 if s > self.first_in else None
            units.append(_ScaleUnit(width * g[s], None if finer is None else width * g[finer], growth * g[s], b[s],
                                    None if finer is None else b[finer]))
        self.units = nn.ModuleList(units)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for k, unit in enumerate(self.units):
            i = self.first_out + k - self.first_in  # the same scale's index in ``maps``
            out.append(unit(maps[i], maps[i - 1] if unit.down is not None else None))
        return out


class _Transition(nn.Module):
    """1x1 conv-BN-ReLU on every scale, from ``cin * g_s`` to ``cout * g_s`` channels."""

    def __init__(self, cin: int, cout: int, scales: list[int], growth_factors: list[int]):
        super().__init__()
        self.convs = nn.ModuleList([_cbr(cin * growth_factors[s], cout * growth_factors[s], 1) for s in scales])

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(m) for conv, m in zip(self.convs, maps)]


class _Stem(nn.Module):
    """MSDNet's first layer: a 3x3 conv at full resolution, then one strided 3x3 conv per coarser scale."""

    def __init__(self, in_chans: int, width: int, growth_factors: list[int]):
        super().__init__()
        chans = [width * g for g in growth_factors]
        self.convs = nn.ModuleList([_cbr(in_chans, chans[0], 3, 1)] +
                                   [_cbr(chans[s - 1], chans[s], 3, 2) for s in range(1, len(chans))])

    def forward(self, x: torch.Tensor) -> MultiScaleFeature:
        maps = []
        for conv in self.convs:
            x = conv(x)
            maps.append(x)  # [B, width * g_s, H / 2^s, W / 2^s]
        return MultiScaleFeature(maps)


class _Step(nn.Module):
    """One MSDNet block: dense layers (with transitions where a scale was dropped) on the list of maps."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, h: MultiScaleFeature) -> MultiScaleFeature:
        maps = h.maps
        for layer in self.layers:
            maps = layer(maps)
        return MultiScaleFeature(maps)


class MSDNetHead(_Head):
    """MSDNet's classifier: two 3x3 stride-2 conv-BN-ReLU of ``width`` channels on the coarsest scale, global
    average pooling, linear. (The reference's ``AvgPool2d(2)`` on CIFAR's 2x2 maps is the same global average.)"""

    reads_scales = True  # build_head hands it the multi-scale feature itself

    def __init__(self, point: ExitPoint, num_classes: int, *, width: int = 128, cascade: bool = False):
        super().__init__(num_classes, cascade)
        if point.kind not in ("map", "scales"):
            raise ConfigError(f"head 'msdnet' needs feature maps (CNNs, MSDNet), this exit gives {point.kind!r}; for "
                              "token exits (ViT) use 'cls', 'pooled' or 'mlp2'")
        _option("width", width)
        self.convs = nn.Sequential(_cbr(point.channels, width, 3, 2), _cbr(width, width, 3, 2))
        self.fc = nn.Linear(width, num_classes)
        _init(self)

    def forward(self, x, prev: torch.Tensor | None = None) -> torch.Tensor:
        m = x.coarsest if isinstance(x, MultiScaleFeature) else x  # [B, C, H, W]
        return self._combine(self.fc(self.convs(m).mean(dim=(2, 3))), prev)


@dataclass
class _Config:
    growth_factors: list[int]
    bn_factors: list[int]
    bottleneck: bool


def layer_plan(blocks: int, base: int, step: int, step_mode: str, n_scales: int) -> list[list[tuple[int, int]]]:
    """``(scales_in, scales_out)`` of every dense layer, block by block (the reference's ``prune="max"``: the
    ``n_scales`` scales are dropped at evenly spaced depths, one at a time)."""
    steps = [base] + [step if step_mode == "even" else step * i + 1 for i in range(1, blocks)]
    total = sum(steps)
    interval = math.ceil(total / n_scales)
    plan, layer = [], 0
    for n in steps:
        rows = []
        for _ in range(n):
            layer += 1
            rows.append((n_scales - max(0, layer - 2) // interval, n_scales - (layer - 1) // interval))
        plan.append(rows)
    return plan


def _check(blocks, base, step, step_mode, channels, growth, growth_factors, bn_factors, reduction, head_width
           ) -> None:
    for name, v, lo in (("blocks", blocks, 2), ("base", base, 1), ("step", step, 1), ("channels", channels, 1),
                        ("growth", growth, 1), ("head_width", head_width, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            raise ValueError(f"msdnet {name} must be a whole number >= {lo}, got {v!r}")
    if step_mode not in ("even", "lin_grow"):
        raise ValueError(f"msdnet step_mode must be 'even' or 'lin_grow', got {step_mode!r}")
    if not growth_factors or len(bn_factors) != len(growth_factors):
        raise ValueError(f"msdnet growth_factors and bn_factors need one entry per scale, got {growth_factors} and "
                         f"{bn_factors}")
    if any(growth * g % 2 for g in growth_factors[1:]):
        raise ValueError(f"msdnet growth * growth_factors must be even on the coarser scales (half of the new "
                         f"channels come from the finer scale), got growth {growth} and {growth_factors}")
    if not 0 <= reduction <= 1:
        raise ValueError(f"msdnet reduction must be in [0, 1] (0: no transitions), got {reduction}")


class MSDNet(BlocksBackbone):
    """MSDNet for small images. Defaults: the reference's CIFAR-100 anytime-prediction network (7 blocks of
    4, 2, ..., 2 layers, 16 channels, growth 6, scale factors 1-2-4, bottleneck factors 1-2-4, 3 scales)."""

    default_head = "msdnet"

    def __init__(self, *, num_classes: int, in_chans: int = 3, blocks: int = 7, base: int = 4, step: int = 2,
                 step_mode: str = "even", channels: int = 16, growth: int = 6,
                 growth_factors: tuple[int, ...] = (1, 2, 4), bn_factors: tuple[int, ...] = (1, 2, 4),
                 bottleneck: bool = True, reduction: float = 0.5, head_width: int = 128):
        super().__init__()
        g, b = list(growth_factors), list(bn_factors)
        _check(blocks, base, step, step_mode, channels, growth, g, b, reduction, head_width)
        cfg = _Config(g, b, bool(bottleneck))
        n = len(g)
        plan = layer_plan(blocks, base, step, step_mode, n)
        if plan[-1][-1][1] != 1:
            raise ValueError(f"msdnet with {sum(map(len, plan))} layers keeps {plan[-1][-1][1]} scales after its last "
                             "layer, and no classifier reads the finer ones (parameters without gradients); change "
                             "blocks, base or step")
        self.num_classes = num_classes
        self.stem = _Stem(in_chans, channels, g)
        steps, widths = _build_steps(plan, channels, growth, reduction, cfg)
        info = [ExitPoint(w * g[-1], 2 ** (n - 1), "scales") for w in widths]  # the coarsest map's
        self.blocks = nn.ModuleList(steps)
        self.feature_info = info
        self.scales = [rows[-1][1] for rows in plan]  # how many maps each block hands on
        self.final = MSDNetHead(info[-1], num_classes, width=head_width)
        self.default_head_kwargs = {"width": head_width}  # its ICs are as wide as its final classifier
        _init(self)


def _build_steps(plan: list[list[tuple[int, int]]], width: int, growth: int, reduction: float, cfg: _Config
                 ) -> tuple[list[_Step], list[int]]:
    """The blocks of ``plan`` and each block's output base width (scale s has ``width * growth_factors[s]``)."""
    n = len(cfg.growth_factors)
    steps, widths = [], []
    for rows in plan:
        layers: list[nn.Module] = []
        for scales_in, scales_out in rows:
            layers.append(_DenseLayer(width, growth, scales_in, scales_out, cfg))
            width += growth
            if scales_in > scales_out and reduction > 0:  # a scale was dropped: compress
                narrow = math.floor(reduction * width)
                layers.append(_Transition(width, narrow, list(range(n - scales_out, n)), cfg.growth_factors))
                width = narrow
        steps.append(_Step(layers))
        widths.append(width)
    return steps, widths


def _init(model: nn.Module) -> None:
    """As the reference: convs normal with std sqrt(2 / (k * k * out channels)), BN weight 1, bias 0 (the same as
    the ResNets'), and linear biases 0."""
    init_conv_bn(model)
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
