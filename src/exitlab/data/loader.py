"""Data held as tensors on the training device: stratified split, batched augmentation, an epoch as a randperm."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ..errors import ConfigError
from .batching import Batched, Batching, draw_positions, seeded
from .datasets import Dataset


def _class_groups(y: torch.Tensor) -> list[torch.Tensor]:
    """Indices of each class present in ``y``, in label order, each ascending (one stable sort, not a pass per
    class)."""
    _, counts = torch.unique(y, return_counts=True)
    return list(torch.split(torch.argsort(y, stable=True), counts.tolist()))


def stratified_split(y: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a seeded train/validation split that keeps each class's share."""
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for idx in _class_groups(y):
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = int(round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def _quotas(counts: torch.Tensor, n: int) -> list[int]:
    """Per-class sample counts summing to ``n`` in proportion to ``counts`` (largest remainders), at least one per
    class when ``n`` allows."""
    exact = counts.double() * n / counts.sum()
    q = exact.floor().long()
    q[torch.argsort(exact - q, descending=True, stable=True)[: n - int(q.sum())]] += 1
    while n >= len(q) and bool((q == 0).any()):  # move one sample from the largest quota to an empty class
        q[int(torch.argmax(q))] -= 1
        q[int(torch.nonzero(q == 0)[0])] += 1
    return q.tolist()


def stratified_subset(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Ascending positions of ``n`` samples of ``y`` drawn with ``seed``, keeping every class's share."""
    if n <= 0 or n >= len(y):
        return torch.arange(len(y))
    groups = _class_groups(y)
    g = torch.Generator().manual_seed(seed)
    quotas = _quotas(torch.tensor([len(i) for i in groups]), n)
    picked = [idx[torch.randperm(len(idx), generator=g)[:q]] for idx, q in zip(groups, quotas)]
    return torch.cat(picked).sort().values


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device``. To a GPU it goes through pinned memory asynchronously: a plain copy from
    pageable memory would make the host wait for the GPU at every batch."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool, g: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip on a whole batch ``[B, C, H, W]``; no per-image Python."""
    B, C, H, W = x.shape
    if pad > 0:
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        oy = to_device(torch.randint(0, 2 * pad + 1, (B,), generator=g, device=g.device), x.device)
        ox = to_device(torch.randint(0, 2 * pad + 1, (B,), generator=g, device=g.device), x.device)
        rows = (oy[:, None] + torch.arange(H, device=x.device))[:, :, None]  # [B, H, 1]
        cols = (ox[:, None] + torch.arange(W, device=x.device))[:, None, :]  # [B, 1, W]
        b = torch.arange(B, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[b, rows, cols].permute(0, 3, 1, 2)  # [B, C, H, W]
    if flip:
        mask = to_device(torch.rand(B, generator=g, device=g.device) < 0.5, x.device)
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


class TensorLoader(Batched):
    """Batches from images on ``device`` (uint8, or float used as given), normalised on the fly; shuffling and
    augmentation are seeded (one generator per pass: the order, then the augmentation)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, mean: torch.Tensor, std: torch.Tensor,
                 device: str | torch.device = "cpu", shuffle: bool = False, pad: int = 0, flip: bool = False,
                 drop_last: bool = False, channels_last: bool = False, shard: tuple[int, int] = (0, 1)):
        self.batching = Batching(batch_size, shuffle, drop_last, shard)  # shard: each rank's slice of every batch
        self.x = x.to(device)
        self.y = y.to(device)
        self.mean = mean.to(device).view(1, -1, 1, 1)
        self.std = std.to(device).view(1, -1, 1, 1)
        self.pad, self.flip = pad, flip
        self.scaled = self.x.dtype == torch.uint8  # uint8 pixels are divided by 255; float data is used as given
        self.channels_last = channels_last
        self.seed = 0
        self.device = self.x.device

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def sample(self, n: int, seed: int = 0, batch_size: int = 500) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``n`` samples drawn once with ``seed``, in index order, normalised but never augmented, in batches."""
        idx = draw_positions(len(self.y), n, seed).to(self.device)
        sub = TensorLoader(self.x[idx], self.y[idx], batch_size, mean=self.mean.flatten(), std=self.std.flatten(),
                           device=self.device, channels_last=self.channels_last)
        return list(sub)

    def unaugmented(self, batch_size: int | None = None) -> TensorLoader:
        """The same split in order, without augmentation or sharding (for evaluation passes)."""
        return TensorLoader(self.x, self.y, batch_size or self.batch_size, mean=self.mean.flatten(),
                            std=self.std.flatten(), device=self.device, channels_last=self.channels_last)

    def batch_indices(self) -> list[torch.Tensor]:
        """Positions in the split of every batch this rank gets in the next pass (for checks; nothing is read)."""
        order = self.batching.order(len(self.y), seeded(self.seed))
        return self.batching.rank_batches(order if order is not None else torch.arange(len(self.y)))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = seeded(self.seed)  # the order first, then the augmentation of every batch
        order = self.batching.order(len(self.y), g)
        order = to_device(order, self.x.device) if order is not None else None
        for i in range(len(self)):
            window = self.batching.window(i)
            idx = order[window] if order is not None else window
            xb = self.x[idx].float().div_(255) if self.scaled else self.x[idx].float()
            if self.pad or self.flip:
                xb = random_crop_flip(xb, self.pad, self.flip, g)
            xb, yb = (xb - self.mean) / self.std, self.y[idx]
            if self.batching.shard[1] > 1:  # augment the global batch on every rank, then slice (as one process)
                part = self.batching.rank_slice(len(yb))
                xb, yb = xb[part], yb[part]
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield xb, yb


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of images: uint8 on the [0, 1] scale, float as given."""
    xf = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    return xf.mean(dim=(0, 2, 3)), xf.std(dim=(0, 2, 3)).clamp_min(1e-3)


def describe(ds: Dataset) -> dict:
    return {"name": ds.name, "train": len(ds.train_y), "test": len(ds.test_y), "shape": list(ds.shape),
            "num_classes": ds.num_classes}
