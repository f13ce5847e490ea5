"""How every loader cuts a pass into batches; :class:`~exitlab.data.loader.TensorLoader`,
:class:`~exitlab.data.stream.StreamLoader` and :class:`~exitlab.data.text.TextLoader` share it.

A pass is an order of the split's positions that depends only on the epoch seed (a ``randperm`` when shuffling, the
positions in order otherwise). The order is cut into global batches of ``batch_size`` (the last one short, or left
out with ``drop_last``), and under DDP rank r of w takes the r-th of w equal slices (rounded up) of every global
batch. So every rank gets the same number of batches, no sample is seen twice in a pass, and a resumed run sees
exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError


def seeded(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: every pass and every fixed draw starts from one."""
    return torch.Generator().manual_seed(seed)


def draw_positions(total: int, n: int, seed: int) -> torch.Tensor:
    """``n`` of ``total`` positions drawn once with ``seed``, sorted (the fixed samples of ``Loader.sample``)."""
    if n > total:
        raise ConfigError(f"asked for {n} samples but the split holds only {total}")
    return torch.randperm(total, generator=seeded(seed))[:n].sort().values


@dataclass(frozen=True)
class Batching:
    """How a split is cut into batches: the global batch size, whether the order is shuffled, whether a short last
    batch is dropped, and this process's ``shard`` (rank, world)."""

    batch_size: int
    shuffle: bool = False
    drop_last: bool = False
    shard: tuple[int, int] = (0, 1)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {self.batch_size}")

    def count(self, n: int) -> int:
        """Batches per pass over ``n`` samples (on every rank)."""
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, n: int, g: torch.Generator) -> torch.Tensor | None:
        """The shuffled order of a pass (drawn from ``g``, which the caller may go on using), or None in order."""
        return torch.randperm(n, generator=g) if self.shuffle else None

    def window(self, i: int) -> slice:
        """Where global batch ``i`` sits in the pass's order."""
        return slice(i * self.batch_size, (i + 1) * self.batch_size)

    def rank_slice(self, size: int) -> slice:
        """This rank's part of a global batch of ``size`` samples."""
        rank, world = self.shard
        chunk = -(-size // world)
        return slice(rank * chunk, (rank + 1) * chunk)

    def rank_batches(self, order: torch.Tensor) -> list[torch.Tensor]:
        """The positions of every batch this rank gets from a pass in ``order`` (all ``n`` positions)."""
        out = []
        for i in range(self.count(len(order))):
            b = order[self.window(i)]
            out.append(b[self.rank_slice(len(b))])
        return out


class Batched:
    """What every loader shares: its :class:`Batching`, the number of samples a pass visits, and the epoch seed that
    fixes the next pass's order (and augmentation). A loader sets ``batching`` and ``seed`` and says how many
    samples its split holds (``num_samples``)."""

    batching: Batching
    seed: int

    @property
    def num_samples(self) -> int:
        raise NotImplementedError

    @property
    def batch_size(self) -> int:
        return self.batching.batch_size

    def __len__(self) -> int:
        return self.batching.count(self.num_samples)

    def set_epoch_seed(self, seed: int) -> None:
        """Fix the order (and augmentation) of the next pass: exact resume depends on it."""
        self.seed = seed
