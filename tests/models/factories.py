"""User-style model factories the adapter tests build by import path (``tests.models.factories:...``)."""

from torch import nn


class Net(nn.Module):
    """A small CNN written the way users write them: named stages, then a pooled linear classifier."""

    def __init__(self, num_classes: int = 7, width: int = 8, in_chans: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.stage3 = nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, 2, 1), nn.BatchNorm2d(4 * width), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))

    def forward(self, x):
        return self.head(self.stage3(self.stage2(self.stage1(self.stem(x)))))


class SharedRelu(nn.Module):
    """torchvision-ResNet style: one ReLU module called after every conv (it fires several times per forward)."""

    def __init__(self, num_classes: int = 7):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.relu(self.b(self.relu(self.a(x)))).mean((2, 3)))


class Skip(nn.Module):
    """A skip connection across the tap point ``mid``: compaction there cannot be exact."""

    def __init__(self, num_classes: int = 7):
        super().__init__()
        self.inp, self.mid, self.out = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 7)

    def forward(self, x):
        h = self.inp(x)
        return self.out((self.mid(h) + h).mean((2, 3)))


def make_net(num_classes: int = 7, width: int = 8, in_chans: int = 3) -> Net:
    return Net(num_classes=num_classes, width=width, in_chans=in_chans)


def make_skip() -> Skip:
    return Skip()


def not_a_module():
    return "a string"


class Seq(nn.Module):
    """A stage list (``blocks``), as timm and torchvision models have: exits can go by index, every:K or flops:N."""

    def __init__(self, num_classes: int = 7):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        widths = [8, 16, 16, 32]
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(a, b, 3, 1 + (i % 2), 1), nn.ReLU())
                                      for i, (a, b) in enumerate(zip([8] + widths, widths))])
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def make_seq(num_classes: int = 7) -> Seq:
    return Seq(num_classes)


def make_shared_relu() -> SharedRelu:
    return SharedRelu()
