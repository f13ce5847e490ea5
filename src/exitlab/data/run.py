"""A run's data, built once: the source (by name, or one passed in), the seeded stratified split and subset, the
normalisation, and one loader per split.

Every loader follows the :class:`Loader` protocol, whether it holds the data as tensors on the device
(:class:`~exitlab.data.loader.TensorLoader`, the fast path for in-memory data with the crop_flip recipe) or streams
it (:class:`~exitlab.data.stream.StreamLoader`: map-style datasets, image folders with ``data.stream``, WebDataset
shards, and the ImageNet recipe). The trainer, the evaluation and the analyses only use the protocol.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..errors import ConfigError
from .batching import Batching
from .catalog import is_text_data
from .datasets import Dataset
from .debian import debian_source
from .lee import lee_source
from .lm import LMLoader, LMSource
from .loader import TensorLoader, channel_stats, stratified_split, stratified_subset
from .sources import StreamSource, as_stream, check_labels, load_source
from .stream import StreamLoader, StreamOptions, resolve_workers, stream_stats
from .text import TextLoader, TextSource, strata
from .textfiles import text_source
from .transforms import Recipe

Batch = tuple[torch.Tensor, torch.Tensor]
Source = Dataset | StreamSource | TextSource  # data given to a run (``exitlab.train(..., data=...)``), not by name


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
    def unaugmented(self, batch_size: int | None = None) -> Loader: ...  # in order, unaugmented, unsharded
    def batch_indices(self) -> list[torch.Tensor]: ...  # positions in the split of this rank's next batches


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
    augment: str
    crop_fraction: float
    stream: bool
    workers: int
    wds_shards: str
    wds_image: str
    wds_label: str
    shuffle_buffer: int
    text: Any  # text data (data.name text or spam_assassin): exitlab.config.TextConfig


@dataclass
class RunData:
    """Loaders over one dataset split three ways, plus what the model and the export need to know about inputs."""

    train: Loader
    val: Loader
    test: Loader
    classes: list[str]
    shape: tuple[int, ...]  # one sample: (C, H, W); text: (3, mean token length), see exitlab.data.text
    normalize: dict = field(default_factory=dict)  # {"mean": [...], "std": [...]} applied to [0, 1] pixels
    tokenizer: Any = None  # text: the tokenizer that made the ids (a run saves it beside its model)
    fingerprint: str = ""  # SHA-256 of the built data set, when its source computes one (debian_sections, lee)
    input_dtype: torch.dtype = torch.float32  # a batch's inputs (token ids: int64)
    target_shape: tuple[int, ...] = ()  # one sample's target (a language model's: the next token at each position)

    def split(self, name: str) -> Loader:
        if name not in ("train", "val", "test"):
            raise ConfigError(f"unknown split {name!r}; choose one of: train, val, test")
        return getattr(self, name)


def split_indices(labels: torch.Tensor, d: DataSettings, seed: int, held_out: bool) -> tuple[torch.Tensor, ...]:
    """Training and validation positions: a seeded stratified split (none when the source has its own validation
    split), then the stratified ``train_subset``."""
    tr, va = (torch.arange(len(labels)), None) if held_out else stratified_split(labels, d.val_fraction, seed)
    if d.train_subset:
        tr = tr[stratified_subset(labels[tr], d.train_subset, seed)]
    if len(tr) == 0 or (va is not None and len(va) == 0):
        raise ConfigError("data: the train or validation split is empty; lower data.val_fraction or train_subset")
    return tr, va


def build_run_data(d: DataSettings, seed: int, device: torch.device, *, shard: tuple[int, int] = (0, 1),
                   channels_last: bool = False, data: Source | None = None) -> RunData:
    """Load the source named by ``d`` (or use ``data``: a :class:`Dataset` from :func:`from_tensors`, a
    :class:`StreamSource` from :func:`from_datasets`, a :class:`TextSource`), split off a seeded stratified
    validation set, and build the three loaders. ``shard`` is (rank, world) under DDP: every rank takes its slice of
    each global batch."""
    read_text = {"debian_sections": debian_source, "lee": lee_source}.get(d.name, text_source)
    src = data if data is not None else read_text(d) if is_text_data(d.name) else load_source(d)
    if isinstance(src, LMSource):
        return _lm_data(src, d, device, shard)
    if isinstance(src, TextSource):
        return _text_data(src, d, seed, device, shard)
    if isinstance(src, Dataset) and d.augment == "crop_flip":
        return _tensor_data(src, d, seed, device, shard, channels_last)
    return _stream_data(as_stream(src) if isinstance(src, Dataset) else src, d, seed, device, shard, channels_last)


def _tensor_data(ds: Dataset, d: DataSettings, seed: int, device: torch.device, shard: tuple[int, int],
                 channels_last: bool) -> RunData:
    """In-memory data as tensors on the device: the fast path."""
    check_labels(ds.train_y, len(ds.classes), f"{ds.name} train")
    check_labels(ds.test_y, len(ds.classes), f"{ds.name} test")
    tr, va = split_indices(ds.train_y, d, seed, held_out=False)
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


def _text_data(src: TextSource, d: DataSettings, seed: int, device: torch.device, shard: tuple[int, int]) -> RunData:
    """Tokenised text in memory: the seeded stratified split, batches padded to their own longest sequence."""
    if not src.train_y.is_floating_point():  # regression targets are checked by from_token_tensors
        check_labels(src.train_y, len(src.classes), f"{src.name} train")
        check_labels(src.test_y, len(src.classes), f"{src.name} test")
    tr, va = split_indices(strata(src.train_y), d, seed, held_out=False)
    return RunData(
        train=TextLoader(src.train_x[tr], src.train_y[tr], d.batch_size, device=device, shuffle=True,
                         drop_last=len(tr) > d.batch_size, length_buckets=src.length_buckets, shard=shard),
        val=TextLoader(src.train_x[va], src.train_y[va], d.eval_batch_size, device=device, shard=shard),
        test=TextLoader(src.test_x, src.test_y, d.eval_batch_size, device=device, shard=shard),
        classes=src.classes,
        shape=src.shape,
        tokenizer=src.tokenizer,
        fingerprint=src.fingerprint,
    )


def _lm_data(src: LMSource, d: DataSettings, device: torch.device, shard: tuple[int, int]) -> RunData:
    """Language-model chunks in memory; the source's own splits (whole documents held out)."""
    (tx, ty), (vx, vy), (sx, sy) = (src.splits[k] for k in ("train", "val", "test"))
    if d.train_subset:
        tx, ty = tx[: d.train_subset], ty[: d.train_subset]
    return RunData(
        train=LMLoader(tx, ty, d.batch_size, device=device, shuffle=True, drop_last=len(tx) > d.batch_size,
                       shard=shard),
        val=LMLoader(vx, vy, d.eval_batch_size, device=device, shard=shard),
        test=LMLoader(sx, sy, d.eval_batch_size, device=device, shard=shard),
        classes=[str(i) for i in range(src.vocab_size)],
        shape=(src.context,),
        tokenizer=src.tokenizer,
        input_dtype=torch.long,
        target_shape=(src.context,),
    )


def _stream_data(src: StreamSource, d: DataSettings, seed: int, device: torch.device, shard: tuple[int, int],
                 channels_last: bool) -> RunData:
    """Streamed data: per-sample decode and augmentation in DataLoader workers, normalised on the device."""
    tr, va = split_indices(src.train.labels, d, seed, held_out=src.val is not None)
    recipe = Recipe(d.augment, d.img_size, train=True, pad=d.crop_padding, flip=d.flip, crop_fraction=d.crop_fraction)
    workers, n_cls = resolve_workers(d.workers), len(src.classes)
    mean, std, shape, scaled = stream_stats(src.train, tr, recipe.evaluation(), seed, workers, n_cls)
    options = StreamOptions(shape, mean, std, device=device, channels_last=channels_last, workers=workers,
                            scaled=scaled, num_classes=n_cls)
    train = Batching(d.batch_size, shuffle=True, drop_last=len(tr) > d.batch_size, shard=shard)
    held_out = Batching(d.eval_batch_size, shard=shard)
    val, va = (src.val, torch.arange(len(src.val))) if src.val is not None else (src.train, va)
    return RunData(
        train=StreamLoader(src.train, tr, recipe, train, options),
        val=StreamLoader(val, va, recipe.evaluation(), held_out, options),
        test=StreamLoader(src.test, torch.arange(len(src.test)), recipe.evaluation(), held_out, options),
        classes=src.classes,
        shape=shape,
        normalize={"mean": mean.tolist(), "std": std.tolist()},
    )
