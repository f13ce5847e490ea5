"""VGG-16-BN and MobileNetV2, sized for 28x28 and 32x32 images."""

from __future__ import annotations

import torch
from torch import nn

from .contract import BlocksBackbone, ExitPoint
from .resnet import ClassifierHead, init_conv_bn

_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(BlocksBackbone):
    """VGG-16-BN: each conv-BN-ReLU (with the max-pool that follows it, if any) is one block."""

    def __init__(self, *, num_classes: int, in_chans: int = 3, width_mult: float = 1.0):
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Identity()
        blocks, info, c, reduction = [], [], in_chans, 1
        cfg = list(_VGG16)
        for i, v in enumerate(cfg):
            if v == "M":
                continue
            w = int(v * width_mult)
            layers: list[nn.Module] = [nn.Conv2d(c, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if i + 1 < len(cfg) and cfg[i + 1] == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))  # ceil: 28x28 inputs stay >= 1x1
                reduction *= 2
            blocks.append(nn.Sequential(*layers))
            info.append(ExitPoint(w, reduction))
            c = w
        self.blocks = nn.ModuleList(blocks)
        self.feature_info = info
        self.final = ClassifierHead(c, num_classes)
        init_conv_bn(self)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    @property
    def identity_skip(self) -> bool:
        return self.residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(BlocksBackbone):
    """MobileNetV2 for small images: stride-1 stem and first downsampling removed (as in the CIFAR ports)."""

    # (expansion, channels, repeats, stride) -- stride 1 in the second row is the small-image change
    _CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, *, num_classes: int, in_chans: int = 3, width_mult: float = 1.0, last_channels: int = 1280):
        super().__init__()
        self.num_classes = num_classes
        c = int(32 * width_mult)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU6(True))
        blocks, info, reduction = [], [], 1
        for t, ch, n, s in self._CFG:
            w = int(ch * width_mult)
            for j in range(n):
                stride = s if j == 0 else 1
                reduction *= stride
                blocks.append(InvertedResidual(c, w, stride, t))
                info.append(ExitPoint(w, reduction))
                c = w
        self.blocks = nn.ModuleList(blocks)
        self.feature_info = info
        last = int(last_channels * max(1.0, width_mult))
        self.final = nn.Sequential(
            nn.Conv2d(c, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(True), ClassifierHead(last, num_classes)
        )
        init_conv_bn(self)
