"""A run's data, built once: the dataset (by name, or a source passed in), the seeded stratified split, the
normalisation, and one loader per split.

Every loader follows the :class:`Loader` protocol, whether it holds the data as tensors on the device
(:class:`~exitlab.data.loader.TensorLoader`, the fast path for small data sets) or streams it. The trainer, the
evaluation and the analyses only use the protocol.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..errors import ConfigError
from .datasets import Dataset
from .loader import TensorLoader, channel_stats, stratified_split
from .sources import load_dataset

Batch = tuple[torch.Tensor, torch.Tensor]


class Loader(Protocol):
    """What every split's loader offers. Batches come normalised, on ``device``; augmentation only in training.

    The order and augmentation of a pass depend only on the seed given to :meth:`set_epoch_seed` (never on the
    number of worker processes), so a resumed run sees exactly the batches of an uninterrupted one. Under DDP every
    rank gets the same number of batches, each of ``batch_size / world`` samples.
    """

    device: torch.device
    batch_size: int  # the global batch size

    def __iter__(self) -> Iterator[Batch]: ...
    def __len__(self) -> int: ...  # batches per pass on this rank
    def set_epoch_seed(self, seed: int) -> None: ...
    @property
    def num_samples(self) -> int: ...  # samples in the split (all ranks)
    def sample(self, n: int, seed: int = 0, batch_size: int = 500) -> list[Batch]: ...  # fixed, unaugmented


class DataSettings(Protocol):
    """The data settings a run's data is built from (``exitlab.config.DataConfig`` has them all)."""

    name: str
    root: str | None
    download: bool
    img_size: int
    val_fraction: float
    batch_size: int
    eval_batch_size: int
    crop_padding: int
    flip: bool
    train_subset: int
    synthetic: dict


@dataclass
class RunData:
    """Loaders over one dataset split three ways, plus what the model and the export need to know about inputs."""

    train: Loader
    val: Loader
    test: Loader
    classes: list[str]
    shape: tuple[int, int, int]  # one sample: (C, H, W)
    normalize: dict = field(default_factory=dict)  # {"mean": [...], "std": [...]} applied to [0, 1] pixels

    def split(self, name: str) -> Loader:
        if name not in ("train", "val", "test"):
            raise ConfigError(f"unknown split {name!r}; choose one of: train, val, test")
        return getattr(self, name)


def build_run_data(d: DataSettings, seed: int, device: torch.device, *, shard: tuple[int, int] = (0, 1),
                   channels_last: bool = False, source: Dataset | None = None) -> RunData:
    """Load the dataset named by ``d`` (or use ``source``), split off a seeded stratified validation set, and build
    the three loaders. ``shard`` is (rank, world) under DDP: every rank takes its slice of each global batch."""
    ds = source if source is not None else load_dataset(d.name, d.root, download=d.download, img_size=d.img_size,
                                                        synthetic_kwargs=d.synthetic)
    tr, va = stratified_split(ds.train_y, d.val_fraction, seed)
    if d.train_subset:
        tr = tr[: d.train_subset]
    if len(tr) == 0 or len(va) == 0:
        raise ConfigError("data: the train or validation split is empty; lower data.val_fraction or train_subset")
    mean, std = channel_stats(ds.train_x[tr])
    common = dict(mean=mean, std=std, device=device, channels_last=channels_last, shard=shard)
    return RunData(
        train=TensorLoader(ds.train_x[tr], ds.train_y[tr], d.batch_size, shuffle=True, pad=d.crop_padding,
                           flip=d.flip, drop_last=len(tr) > d.batch_size, **common),
        val=TensorLoader(ds.train_x[va], ds.train_y[va], d.eval_batch_size, **common),
        test=TensorLoader(ds.test_x, ds.test_y, d.eval_batch_size, **common),
        classes=ds.classes,
        shape=ds.shape,
        normalize={"mean": mean.flatten().tolist(), "std": std.flatten().tolist()},
    )
