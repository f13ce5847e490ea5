"""Streamed data: a map-style dataset read one sample at a time in DataLoader workers, with exact seeded epochs.

The order of a pass and every sample's augmentation depend only on the epoch seed and the sample index. A pass cuts
the seeded order into global batches; under DDP every rank takes its slice of each global batch, as
:class:`~exitlab.data.loader.TensorLoader` does. So every rank gets the same number of batches, no sample is seen
twice in an epoch, and the run is the same whatever the number of workers or ranks, which makes resume exact.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, replace

import torch

from ..errors import DataError
from .batching import Batched, Batching, draw_positions, seeded
from .transforms import Recipe, sample_rng, view

Batch = tuple[torch.Tensor, torch.Tensor]
STATS_SAMPLES = 1000  # training samples (seeded draw, evaluation view) that the normalisation is estimated from


@dataclass
class Samples:
    """A split read one sample at a time: ``data[i]`` is (image, label); ``labels`` ``[N]`` are known up front.

    ``data`` may offer ``describe(i)`` (a name for error messages) and ``epoch_order(positions, seed)`` (the order
    of a shuffled pass, e.g. shard by shard); otherwise a pass is a seeded ``randperm``.
    """

    data: torch.utils.data.Dataset
    labels: torch.Tensor  # [N] int64

    def __len__(self) -> int:
        return len(self.labels)


class _Views(torch.utils.data.Dataset):
    """What a worker computes: sample ``i`` through ``recipe``, drawn with the generator of (seed, i)."""

    def __init__(self, data: torch.utils.data.Dataset, recipe: Recipe, num_classes: int):
        self.data, self.recipe, self.num_classes = data, recipe, num_classes

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        seed, i = key
        name = self.data.describe(i) if hasattr(self.data, "describe") else f"sample {i}"
        img, label = self.data[i]
        label = int(label)
        if not 0 <= label < self.num_classes:
            raise DataError(f"{name} has label {label}, outside 0..{self.num_classes - 1}; labels must be 0..C-1")
        return view(img, self.recipe, sample_rng(seed, i), name), label


def _collate(items: list[tuple[torch.Tensor, int]], shape: tuple[int, int, int], dtype: torch.dtype) -> Batch:
    """Stack one batch (in the worker); an empty rank slice becomes an empty batch of the known shape."""
    if not items:
        return torch.empty((0, *shape), dtype=dtype), torch.empty(0, dtype=torch.long)
    for x, _ in items:
        if tuple(x.shape) != shape:
            raise DataError(f"a sample came out as {tuple(x.shape)} but the data set's images are {shape}; give every "
                            "image the same number of channels (1 or 3)")
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def resolve_workers(workers: int) -> int:
    """Worker processes per rank: ``workers`` itself, or for -1 the CPU cores of this process shared between the
    ranks on this machine (``LOCAL_WORLD_SIZE``), at most 8."""
    if workers >= 0:
        return workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))))


def loader_options(device: torch.device, workers: int, persistent: bool = True) -> dict:
    """DataLoader options: pinned memory for CUDA, workers kept between passes, a deeper prefetch queue."""
    return dict(num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=persistent and workers > 0,
                prefetch_factor=4 if workers > 0 else None)


def worker_error(e: Exception) -> DataError:
    """A DataError raised in a worker arrives wrapped in its traceback; keep only the one-line message."""
    last = str(e).strip().splitlines()[-1]
    return DataError(last.split("DataError: ", 1)[-1])


def prefetched(batches, device: torch.device) -> Iterator[Batch]:
    """The batches on ``device``. On CUDA the next batch is copied on a side stream while the current one is in
    use, so the copy overlaps the training step; elsewhere each is moved when it is reached."""
    if device.type != "cuda":
        yield from ((x.to(device), y.to(device)) for x, y in batches)
        return
    side, main = torch.cuda.Stream(device), torch.cuda.current_stream(device)

    def send(batch: Batch) -> Batch:
        with torch.cuda.stream(side):  # pinned by the DataLoader (pin_memory), so the copies are asynchronous
            return tuple(t.to(device, non_blocking=True) for t in batch)

    it = iter(batches)
    ahead = next(it, None)
    ahead = send(ahead) if ahead is not None else None
    while ahead is not None:
        main.wait_stream(side)  # the batch is complete before the step reads it
        for t in ahead:
            t.record_stream(main)  # allocated on the side stream, used on the main one
        current, ahead = ahead, next(it, None)
        ahead = send(ahead) if ahead is not None else None
        yield current


class _Batches:
    """The DataLoader's batch sampler: this rank's batches of the loader's next pass, as (seed, index) keys.

    It holds the loader weakly: a cycle loader -> DataLoader -> sampler -> loader would leave the workers to the
    garbage collector, whose late shutdown waits seconds per worker.
    """

    def __init__(self, loader: StreamLoader):
        self.loader = weakref.ref(loader)

    def __len__(self) -> int:
        return len(self.loader())

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        loader = self.loader()
        seed, base = loader.seed, loader.indices
        for b in loader.batch_indices():
            yield [(seed, int(i)) for i in base[b]]


@dataclass(frozen=True)
class StreamOptions:
    """How a streamed split's samples are read and normalised; its train, validation and test loaders share them."""

    shape: tuple[int, int, int]  # every sample's [C, H, W] after its recipe
    mean: torch.Tensor  # [C] normalisation
    std: torch.Tensor  # [C]
    device: str | torch.device = "cpu"
    channels_last: bool = False
    workers: int = 0  # DataLoader worker processes (0: read in this process)
    scaled: bool = True  # uint8 pixels are divided by 255; float images are used as given
    num_classes: int = 0  # labels must be 0..num_classes-1 (0: the largest label + 1)


class StreamLoader(Batched):
    """Batches of ``samples[indices]`` read in DataLoader workers through ``recipe``, cut by ``batching``, normalised
    on the options' device; follows ``Loader``."""

    def __init__(self, samples: Samples, indices: torch.Tensor, recipe: Recipe, batching: Batching,
                 options: StreamOptions):
        self.samples, self.indices = samples, torch.as_tensor(indices, dtype=torch.long)
        self.recipe, self.batching, self.options = recipe, batching, options
        self.device = torch.device(options.device)
        self.mean = options.mean.to(self.device).view(1, -1, 1, 1)
        self.std = options.std.to(self.device).view(1, -1, 1, 1)
        self.num_classes = options.num_classes or int(samples.labels.max()) + 1
        self.seed = 0
        self._dl: torch.utils.data.DataLoader | None = None

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def _order(self) -> torch.Tensor:
        """Positions in the split, in the order of the next pass."""
        n = len(self.indices)
        if self.batching.shuffle and hasattr(self.samples.data, "epoch_order"):
            return torch.as_tensor(self.samples.data.epoch_order(self.indices, self.seed), dtype=torch.long)
        order = self.batching.order(n, seeded(self.seed))
        return order if order is not None else torch.arange(n)

    def batch_indices(self) -> list[torch.Tensor]:
        """Positions in the split of every batch this rank gets in the next pass (for checks; nothing is read)."""
        return self.batching.rank_batches(self._order())

    def _make(self, persistent: bool) -> torch.utils.data.DataLoader:
        views = _Views(self.samples.data, self.recipe, self.num_classes)
        dtype = torch.uint8 if self.options.scaled else torch.float32
        collate = functools.partial(_collate, shape=self.options.shape, dtype=dtype)
        return torch.utils.data.DataLoader(views, batch_sampler=_Batches(self), collate_fn=collate,
                                           **loader_options(self.device, self.options.workers, persistent))

    def _normalise(self, xb: torch.Tensor) -> torch.Tensor:
        xb = xb.to(self.device, non_blocking=True).float()  # [B, C, H, W]
        xb = (xb.div_(255) if self.options.scaled else xb).sub_(self.mean).div_(self.std)
        return xb.contiguous(memory_format=torch.channels_last) if self.options.channels_last else xb

    def _iterate(self, dl: torch.utils.data.DataLoader) -> Iterator[Batch]:
        try:
            for xb, yb in prefetched(dl, self.device):
                yield self._normalise(xb), yb
        except DataError as e:
            raise worker_error(e) from None

    def __iter__(self) -> Iterator[Batch]:
        if self._dl is None:
            self._dl = self._make(persistent=True)
        return self._iterate(self._dl)

    def _subset(self, positions: torch.Tensor, batch_size: int) -> StreamLoader:
        """The same samples at ``positions``, in order, unaugmented and unsharded."""
        return StreamLoader(self.samples, self.indices[positions], self.recipe.evaluation(), Batching(batch_size),
                            replace(self.options, num_classes=self.num_classes))

    def sample(self, n: int, seed: int = 0, batch_size: int = 500) -> list[Batch]:
        """``n`` samples drawn once with ``seed``, in index order, normalised but never augmented, in batches."""
        sub = self._subset(draw_positions(len(self.indices), n, seed), batch_size)
        return list(sub._iterate(sub._make(persistent=False)))

    def unaugmented(self, batch_size: int | None = None) -> StreamLoader:
        """The same split in order, without augmentation or sharding (for evaluation passes)."""
        return self._subset(torch.arange(len(self.indices)), batch_size or self.batch_size)


def stream_stats(samples: Samples, positions: torch.Tensor, recipe: Recipe, seed: int, workers: int,
                 num_classes: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int], bool]:
    """Per-channel mean and std (uint8 on the [0, 1] scale, float as given) of at most ``STATS_SAMPLES`` training
    samples drawn with ``seed``, in their evaluation view; also the image shape and whether pixels are uint8."""
    pick = positions[torch.randperm(len(positions), generator=seeded(seed))[:STATS_SAMPLES]]
    first, _ = _Views(samples.data, recipe, num_classes)[(0, int(pick[0]))]
    shape, scaled = tuple(first.shape), first.dtype == torch.uint8
    ones = torch.ones(shape[0])
    options = StreamOptions(shape, mean=ones * 0, std=ones, workers=min(workers, -(-len(pick) // 250)), scaled=scaled,
                            num_classes=num_classes)
    probe = StreamLoader(samples, pick.sort().values, recipe, Batching(250), options)
    s1 = s2 = torch.zeros(shape[0], dtype=torch.float64)
    count = 0
    for xb, _ in probe._iterate(probe._make(persistent=False)):
        xd = xb.double()
        s1, s2, count = s1 + xd.sum((0, 2, 3)), s2 + xd.square().sum((0, 2, 3)), count + xd[:, 0].numel()
    mean = s1 / count
    var = (s2 - s1 * s1 / count) / max(count - 1, 1)
    return mean.float(), var.clamp_min(0).sqrt().float().clamp_min(1e-3), shape, scaled
