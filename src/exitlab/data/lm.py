"""Language-model data: token chunks ``[N, T]`` with their next-token targets ``[N, T]``, held in memory.

A sample is one chunk; its "label" is the chunk shifted by one, so the training loop's per-exit cross-entropy is
the next-token loss at every position and its "accuracy" the next-token top-1 accuracy (see
:func:`exitlab.training.loop.exit_losses`). Splits are given (whole documents held out, e.g. plays), never drawn
from the training chunks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import ConfigError, DataError


@dataclass
class LMSource:
    """Token chunks per split: ``splits[name] = (inputs [N, T], targets [N, T])`` for train, val and test."""

    name: str
    splits: dict[str, tuple[torch.Tensor, torch.Tensor]]
    vocab_size: int
    tokenizer: object = None  # a transformers tokenizer, saved beside the model when given

    def __post_init__(self):
        missing = {"train", "val", "test"} - set(self.splits)
        if missing:
            raise DataError(f"{self.name}: an LM source needs train, val and test splits; missing {sorted(missing)}")
        for split, (x, y) in self.splits.items():
            if x.ndim != 2 or x.shape != y.shape or x.is_floating_point() or len(x) == 0:
                raise DataError(f"{self.name} {split}: inputs and targets must be non-empty integer [N, T] tensors "
                                f"of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
            if int(x.max()) >= self.vocab_size or int(y.max()) >= self.vocab_size:
                raise DataError(f"{self.name} {split}: token id {max(int(x.max()), int(y.max()))} is outside the "
                                f"vocabulary of {self.vocab_size}; the tokenizer does not fit the model")

    @property
    def context(self) -> int:
        return int(self.splits["train"][0].shape[1])


def from_corpus(corpus, name: str = "shakespeare") -> LMSource:
    """An :class:`LMSource` from a tokenised :class:`exitlab.data.corpus.Corpus`."""
    return LMSource(name, dict(corpus.splits), corpus.vocab_size, getattr(corpus, "hf_tokenizer", None))


class LMLoader:
    """Batches of chunks on ``device`` in a seeded order (the ``Loader`` protocol of :mod:`exitlab.data.run`)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, device: str | torch.device = "cpu",
                 shuffle: bool = False, drop_last: bool = False, shard: tuple[int, int] = (0, 1)):
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        self.x, self.y = x.to(device), y.to(device)
        self.batch_size, self.shuffle, self.drop_last, self.shard, self.seed = batch_size, shuffle, drop_last, shard, 0
        self.device = self.x.device

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch_seed(self, seed: int) -> None:
        """Fix the order of the next pass (exact resume depends on it)."""
        self.seed = seed

    def batch_indices(self) -> list[torch.Tensor]:
        """Positions in the split of every batch this rank gets in the next pass."""
        n, (rank, world) = len(self.y), self.shard
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed)) if self.shuffle else \
            torch.arange(n)
        out = []
        for i in range(len(self)):
            b = order[i * self.batch_size: (i + 1) * self.batch_size]
            chunk = -(-len(b) // world)
            out.append(b[rank * chunk: (rank + 1) * chunk])
        return out

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in self.batch_indices():
            idx = idx.to(self.device)
            yield self.x[idx], self.y[idx]

    def sample(self, n: int, seed: int = 0, batch_size: int = 500) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``n`` chunks drawn once with ``seed``, in index order, in batches."""
        if n > len(self.y):
            raise ConfigError(f"asked for {n} samples but the split holds only {len(self.y)}")
        idx = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return list(LMLoader(self.x[idx.to(self.device)], self.y[idx.to(self.device)], batch_size,
                             device=self.device))

    def unaugmented(self, batch_size: int | None = None) -> LMLoader:
        """The same split in order, unsharded."""
        return LMLoader(self.x, self.y, batch_size or self.batch_size, device=self.device)
