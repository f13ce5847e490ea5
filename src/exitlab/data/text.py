"""Text data: token ids held in memory, tokenised once, padded per batch to its own longest sequence.

A text source keeps every split as one packed ``[N, 3, L]`` int64 tensor (input ids, attention mask, token type
ids; right-padded to the split's longest sequence) with each sample's real length. A batch is cut to the longest
sequence in it (dynamic padding), so short batches cost less; ``length_buckets`` sorts samples by length within
seeded buckets of that many batches, so batches waste little padding while their order stays random.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import ConfigError, DataError
from .batching import Batched, Batching, draw_positions, seeded
from .sources import resolve_classes


@dataclass
class TextSource:
    """Tokenised splits: packed ``[N, 3, L]`` tokens and labels per split, and the class names."""

    name: str
    train_x: torch.Tensor  # [N, 3, L] int64
    train_y: torch.Tensor  # [N] int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    length_buckets: int = 0  # training batches: sort by length within buckets of this many batches (0: off)
    tokenizer: object = None  # the tokenizer that made the ids, when known (a run saves it beside its model)
    fingerprint: str = ""  # SHA-256 of the built texts and labels, when the source computes one (runs record it)

    @property
    def shape(self) -> tuple[int, int]:
        """One sample as the model sees it on average: (3, mean real length of the training texts)."""
        return (3, max(1, round(float(lengths(self.train_x).double().mean()))))


def strata(y: torch.Tensor, bins: int = 5) -> torch.Tensor:
    """Labels to stratify a split on: the classes, or for regression targets their quantile bins."""
    if not y.is_floating_point():
        return y
    edges = torch.quantile(y.double(), torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1])
    return torch.bucketize(y.double(), edges)


def lengths(x: torch.Tensor) -> torch.Tensor:
    """Real token counts of packed samples ``[N, 3, L]``: ``[N]``."""
    return x[:, 1].sum(1)


def _packed(ids, mask, types, what: str) -> torch.Tensor:
    ids = torch.as_tensor(ids).long()
    if ids.ndim != 2 or len(ids) == 0 or ids.shape[1] == 0:
        raise DataError(f"{what}: token ids must be [N, L] with N, L > 0, got {tuple(ids.shape)}")
    mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask).long()
    types = torch.zeros_like(ids) if types is None else torch.as_tensor(types).long()
    if mask.shape != ids.shape or types.shape != ids.shape:
        raise DataError(f"{what}: attention mask {tuple(mask.shape)} and token types {tuple(types.shape)} must have "
                        f"the shape of the ids {tuple(ids.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise DataError(f"{what}: the attention mask must hold 0 (padding) and 1 (token) only")
    n = mask.sum(1)
    if bool((n == 0).any()):
        raise DataError(f"{what}: sample {int(torch.nonzero(n == 0)[0])} is empty (no real token); drop empty texts")
    if not bool((mask == (torch.arange(ids.shape[1]) < n[:, None]).long()).all()):
        raise DataError(f"{what}: padding must be on the right (tokenizer padding_side='right')")
    return torch.stack([ids, mask, types], 1)


def from_token_tensors(train_ids, train_y, test_ids, test_y, *, train_mask=None, test_mask=None,
                       train_types=None, test_types=None, classes: list[str] | None = None,
                       name: str = "tokens", length_buckets: int = 0, task: str = "classification") -> TextSource:
    """A text source from token ids ``[N, L]`` (right-padded; masks default to all tokens real) and integer labels,
    or float targets with ``task="regression"`` (class list ``["value"]``: one output)."""
    tx = _packed(train_ids, train_mask, train_types, "train_ids")
    vx = _packed(test_ids, test_mask, test_types, "test_ids")
    if task not in ("classification", "regression"):
        raise ConfigError(f"task must be 'classification' or 'regression', got {task!r}")
    cast = (lambda a: torch.as_tensor(a).float().flatten()) if task == "regression" else \
        (lambda a: torch.as_tensor(a).long().flatten())
    ty, vy = cast(train_y), cast(test_y)
    if len(ty) != len(tx) or len(vy) != len(vx):
        raise DataError(f"{len(ty)} train labels for {len(tx)} texts, {len(vy)} test labels for {len(vx)}; give one "
                        "label per text")
    if task == "regression":
        if not bool(torch.isfinite(ty).all() and torch.isfinite(vy).all()):
            raise DataError("regression targets hold NaN or infinite values; clean the labels first")
        names = ["value"]
    else:
        names = resolve_classes(classes, (ty, "train labels"), (vy, "test labels"))
    if not isinstance(length_buckets, int) or length_buckets < 0:
        raise ConfigError(f"length_buckets must be a whole number >= 0, got {length_buckets!r}")
    return TextSource(name, tx, ty, vx, vy, names, length_buckets)


class TextLoader(Batched):
    """Batches of packed tokens on ``device``, each cut to its longest sequence; the order is seeded (see the
    ``Loader`` protocol in :mod:`exitlab.data.run`)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, device: str | torch.device = "cpu",
                 shuffle: bool = False, drop_last: bool = False, length_buckets: int = 0,
                 shard: tuple[int, int] = (0, 1)):
        self.batching = Batching(batch_size, shuffle, drop_last, shard)
        self.x, self.y = x.to(device), y.to(device)
        self.lengths = lengths(x).cpu()  # [N], on the CPU: batches are cut on the host
        self.length_buckets, self.seed = length_buckets, 0
        self.device = self.x.device

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def _order(self) -> torch.Tensor:
        g = seeded(self.seed)
        order = self.batching.order(len(self.y), g)
        if order is None:
            return torch.arange(len(self.y))
        if self.length_buckets > 0:  # sort by length inside each bucket, then shuffle the batches
            size = self.length_buckets * self.batch_size
            parts = [b[torch.argsort(self.lengths[b], stable=True)] for b in order.split(size)]
            order = torch.cat(parts)
            batches = list(order.split(self.batch_size))
            keep = batches if not self.batching.drop_last or len(batches[-1]) == self.batch_size else batches[:-1]
            perm = torch.randperm(len(keep), generator=g).tolist()
            order = torch.cat([keep[i] for i in perm] + batches[len(keep):])
        return order

    def batch_indices(self) -> list[torch.Tensor]:
        """Positions in the split of every batch this rank gets in the next pass."""
        return self.batching.rank_batches(self._order())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx in self.batch_indices():
            width = int(self.lengths[idx].max())
            idx = idx.to(self.device)
            yield self.x[idx, :, :width], self.y[idx]

    def sample(self, n: int, seed: int = 0, batch_size: int = 500) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``n`` samples drawn once with ``seed``, in index order, in batches."""
        idx = draw_positions(len(self.y), n, seed).to(self.device)
        return list(TextLoader(self.x[idx], self.y[idx], batch_size, device=self.device))

    def unaugmented(self, batch_size: int | None = None) -> TextLoader:
        """The same split in order, unsharded."""
        return TextLoader(self.x, self.y, batch_size or self.batch_size, device=self.device)
