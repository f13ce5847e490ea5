"""ResNets for small images: the CIFAR family (ResNet-20/32/56/110), ResNet-18/34/50 with a CIFAR stem, WRN-28-k."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .contract import BlocksBackbone, ExitPoint


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Sequential:
    """The residual branch's shortcut: the identity (an empty Sequential) when the shapes agree, else a strided 1x1
    convolution and BatchNorm."""
    if stride == 1 and cin == cout:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))


class _Residual(nn.Module):
    """A post-activation residual block: ``relu(branch(x) + shortcut(x))``."""

    shortcut: nn.Sequential

    @property
    def identity_skip(self) -> bool:
        """Skipping the block is the identity (layer dropout): an identity shortcut, and the input is post-ReLU."""
        return len(self.shortcut) == 0


class BasicBlock(_Residual):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _bn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _bn(cout)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x), inplace=True)


class Bottleneck(_Residual):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = _bn(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = _bn(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = _bn(cout)
        self.shortcut = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x), inplace=True)


class PreActBlock(nn.Module):
    """Wide-ResNet block: BN-ReLU-conv twice, with optional dropout between."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = _bn(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = _bn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    @property
    def identity_skip(self) -> bool:
        return self.shortcut is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv2(self.drop(F.relu(self.bn2(self.conv1(o)))))
        return o + skip


class ClassifierHead(nn.Module):
    """Global average pooling then a linear layer; optional BN-ReLU first (pre-activation nets)."""

    def __init__(self, channels: int, num_classes: int, pre_act: bool = False):
        super().__init__()
        self.pre = nn.Sequential(_bn(channels), nn.ReLU(inplace=True)) if pre_act else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pre(x).mean(dim=(2, 3)))


def _stem(in_chans: int, c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_chans, c, 3, 1, 1, bias=False), _bn(c), nn.ReLU(inplace=True))


class ResNet(BlocksBackbone):
    """A stage-wise residual network; every residual block is one exit-able block."""

    def __init__(self, block: type[nn.Module], depths: list[int], widths: list[int], *, num_classes: int,
                 in_chans: int = 3, stem_width: int | None = None):
        super().__init__()
        self.num_classes = num_classes
        c = stem_width or widths[0]
        self.stem = _stem(in_chans, c)
        blocks, info, reduction = [], [], 1
        expansion = getattr(block, "expansion", 1)
        for stage, (n, w) in enumerate(zip(depths, widths)):
            for j in range(n):
                stride = 2 if stage > 0 and j == 0 else 1
                reduction *= stride
                blocks.append(block(c, w, stride))
                c = w * expansion
                info.append(ExitPoint(c, reduction))
        self.blocks = nn.ModuleList(blocks)
        self.feature_info = info
        self.final = ClassifierHead(c, num_classes)
        init_conv_bn(self)


class WideResNet(BlocksBackbone):
    """WRN-depth-k (Zagoruyko & Komodakis): pre-activation blocks, widths 16k/32k/64k."""

    def __init__(self, depth: int = 28, k: int = 10, *, num_classes: int, in_chans: int = 3, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        self.num_classes = num_classes
        self.stem = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        c, blocks, info, reduction = 16, [], [], 1
        for stage, w in enumerate([16 * k, 32 * k, 64 * k]):
            for j in range(n):
                stride = 2 if stage > 0 and j == 0 else 1
                reduction *= stride
                blocks.append(PreActBlock(c, w, stride, dropout))
                c = w
                info.append(ExitPoint(c, reduction))
        self.blocks = nn.ModuleList(blocks)
        self.feature_info = info
        self.final = ClassifierHead(c, num_classes, pre_act=True)
        init_conv_bn(self)


def init_conv_bn(model: nn.Module) -> None:
    """He-normal convs (fan out), BatchNorm weight 1 and bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def cifar_resnet(depth: int, *, num_classes: int, in_chans: int = 3, width: int = 16) -> ResNet:
    """He et al.'s CIFAR ResNet-(6n+2): three stages of n basic blocks at widths w, 2w, 4w."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 20, 32, 56, 110), got {depth}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, [n] * 3, [width, 2 * width, 4 * width], num_classes=num_classes, in_chans=in_chans)


def imagenet_style_resnet(depth: int, *, num_classes: int, in_chans: int = 3, width: int = 64) -> ResNet:
    """ResNet-18/34/50 with the CIFAR stem (3x3 conv, stride 1, no max-pool)."""
    layers = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}[depth]
    block = Bottleneck if depth >= 50 else BasicBlock
    widths = [width, 2 * width, 4 * width, 8 * width]
    return ResNet(block, layers, widths, num_classes=num_classes, in_chans=in_chans, stem_width=width)
