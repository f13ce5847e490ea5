"""WebDataset tar shards (``data.name: webdataset``), read by an exact index built once at start-up.

Shards are plain tar files in the WebDataset layout: the members of one sample share a key (the path up to the
first dot of the file name) and differ by extension, e.g. ``00042.jpg`` and ``00042.cls``. At start-up every shard
of a split is scanned once (tar headers and the small label files, not the images) into an index of each sample's
image offset, size and label. A shuffled pass then visits the shards in a seeded order, reads each shard's samples in
file order through a seeded shuffle buffer, and cuts that order into global batches like every other loader, so
ranks get equal batch counts and no sample twice, and the order does not depend on the number of workers or ranks.
"""

from __future__ import annotations

import logging
import os
import random
import re
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .stream import Samples

log = logging.getLogger("exitlab")
_KEY = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext: (key, every extension)
_BRACE = re.compile(r"\{([^{}]*)\}")
_OPEN_FILES = 16  # shard files each worker keeps open


def expand_braces(pattern: str) -> list[str]:
    """``a{0..2}b`` -> a0b, a1b, a2b (zero padding kept: ``{000..099}``); ``{x,y}`` -> x, y; nested in order."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end() :]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.groups()
        items = [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    else:
        items = body.split(",")
    return [x for item in items for x in expand_braces(head + item + tail)]


def shard_paths(split_dir: Path, pattern: str) -> list[Path]:
    """The shard files of one split: ``pattern`` (brace pattern, glob, or both) inside ``split_dir``."""
    out: list[Path] = []
    for name in expand_braces(pattern):
        if any(c in name for c in "*?["):
            out += sorted(p for p in split_dir.glob(name) if p.is_file())
        elif (split_dir / name).is_file():
            out.append(split_dir / name)
        else:
            raise DataError(f"shard {split_dir / name} not found (data.wds_shards is {pattern!r}); fix the pattern "
                            "or restore the shard")
    return out


@dataclass
class ShardIndex:
    """Every sample of a split's shards: where its image is and its label (numpy arrays, cheap to share)."""

    shards: list[str]
    shard: np.ndarray  # [N] int32 shard of each sample
    offset: np.ndarray  # [N] int64 byte offset of the image in its shard
    size: np.ndarray  # [N] int64 image bytes
    label: np.ndarray  # [N] int64
    key: np.ndarray  # [N] bytes, the sample key


def _members(tar: tarfile.TarFile) -> list[tuple[str, dict[str, tarfile.TarInfo]]]:
    """Samples in file order as (key, {extension: member}); consecutive members with one key form a sample."""
    samples: list[tuple[str, dict[str, tarfile.TarInfo]]] = []
    for m in tar:
        hit = _KEY.match(m.name) if m.isfile() else None
        if hit is None or os.path.basename(m.name).startswith("__"):
            continue
        key, ext = hit.groups()
        if not samples or samples[-1][0] != key:
            samples.append((key, {}))
        samples[-1][1][ext.lower()] = m
    return samples


def _pick(path: Path, key: str, members: dict, wanted: list[str], what: str, option: str) -> tarfile.TarInfo:
    found = next((members[e] for e in wanted if e in members), None)
    if found is None:
        raise DataError(f"{path}: sample {key!r} has no {what} ({'/'.join('.' + e for e in wanted)}; it has "
                        f"{', '.join('.' + e for e in sorted(members))}); set {option} to the extension your shards "
                        "use")
    return found


def index_shard(path: Path, image_exts: list[str], label_ext: str) -> list[tuple[str, int, int, int]]:
    """(key, image offset, image size, label) of every sample of one uncompressed shard, in file order."""
    try:
        tar = tarfile.open(path, "r:")
    except tarfile.ReadError as e:
        raise DataError(f"{path} is not an uncompressed tar shard ({e}); exitlab reads shards by offset, so store "
                        "them as plain .tar (gunzip a .tar.gz)") from None
    rows = []
    with tar:
        try:
            samples = _members(tar)
        except tarfile.ReadError as e:  # a cut inside a member's data, seen while skipping over it
            raise DataError(f"{path} is truncated: {e} ({path.stat().st_size} bytes); copy the shard again or "
                            "rebuild it") from None
        check_complete(path, tar, samples)
        for key, members in samples:
            img = _pick(path, key, members, image_exts, "image", "data.wds_image")
            cls = _pick(path, key, members, [label_ext], "label", "data.wds_label")
            text = tar.extractfile(cls).read().decode("utf-8", "replace").strip()
            if not re.fullmatch(r"-?\d+", text):
                raise DataError(f"{path}: sample {key!r} has label {text[:20]!r} in .{label_ext}; labels must be "
                                "integers 0..C-1 written as text")
            rows.append((key, img.offset_data, img.size, int(text)))
    return rows


def check_complete(path: Path, tar: tarfile.TarFile, samples: list) -> None:
    """Refuse a truncated shard. Python's tarfile stops reading silently where a copy was cut, so check that every
    member's data lies inside the file and that the archive ends with its end-of-archive block (512 zero bytes)."""
    size = path.stat().st_size
    complete = [k for k, members in samples if all(m.offset_data + m.size <= size for m in members.values())]
    with open(path, "rb") as f:
        f.seek(tar.offset)
        end = f.read(tarfile.BLOCKSIZE)
    if len(complete) < len(samples) or len(end) < tarfile.BLOCKSIZE or end.count(0) != tarfile.BLOCKSIZE:
        last = f" after sample {complete[-1]!r}" if complete else ""
        raise DataError(f"{path} is truncated: it ends inside a tar member{last} ({len(complete)} complete samples "
                        f"read, {size} bytes); copy the shard again or rebuild it")


def build_index(paths: list[Path], image_exts: list[str], label_ext: str) -> ShardIndex:
    """Index every shard (in parallel threads) into one :class:`ShardIndex`."""
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(paths)))) as pool:
        per_shard = list(pool.map(lambda p: index_shard(p, image_exts, label_ext), paths))
    rows = [r for rs in per_shard for r in rs]
    shard = np.concatenate([np.full(len(rs), i, dtype=np.int32) for i, rs in enumerate(per_shard)] or [[]])
    column = [np.array([r[i] for r in rows], dtype=np.int64) for i in (1, 2, 3)]
    keys = np.array([r[0].encode() for r in rows], dtype=bytes)
    return ShardIndex([str(p) for p in paths], shard.astype(np.int32), *column, keys)


def buffer_shuffle(n: int, size: int, rng: random.Random) -> np.ndarray:
    """A shuffle buffer as a permutation of ``range(n)``: fill ``size`` slots, then for each new item emit a random
    slot's item and put the new one there; finally emit the rest shuffled (WebDataset's ``shuffle`` stage)."""
    buf, out = [], []
    for i in range(n):
        if len(buf) < size:
            buf.append(i)
            continue
        j = rng.randrange(size)
        out.append(buf[j])
        buf[j] = i
    rng.shuffle(buf)
    return np.array(out + buf, dtype=np.int64)


class TarSamples(torch.utils.data.Dataset):
    """The samples of an index: sample ``i`` is (encoded image bytes, label), read by offset."""

    def __init__(self, index: ShardIndex, buffer: int = 2000):
        self.index, self.buffer = index, buffer
        self._files: dict[int, object] = {}
        self._pid = -1

    def __len__(self) -> int:
        return len(self.index.label)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}, "_pid": -1}  # open files stay with their process

    def describe(self, i: int) -> str:
        return f"{self.index.shards[self.index.shard[i]]}: sample {self.index.key[i].decode()!r}"

    def _file(self, s: int):
        if self._pid != os.getpid():  # a fresh worker: never share a parent's file offsets
            self._files, self._pid = {}, os.getpid()
        if s not in self._files:
            if len(self._files) >= _OPEN_FILES:
                self._files.pop(next(iter(self._files))).close()
            self._files[s] = open(self.index.shards[s], "rb")  # noqa: SIM115 (kept open across samples)
        return self._files[s]

    def __getitem__(self, i: int) -> tuple[bytes, int]:
        f = self._file(int(self.index.shard[i]))
        f.seek(int(self.index.offset[i]))
        return f.read(int(self.index.size[i])), int(self.index.label[i])

    def epoch_order(self, indices: torch.Tensor, seed: int) -> np.ndarray:
        """Positions of ``indices`` in a shuffled pass: shards in a seeded order, each in file order, through a
        seeded shuffle buffer of ``buffer`` samples."""
        base = indices.numpy()
        perm = torch.randperm(len(self.index.shards), generator=torch.Generator().manual_seed(seed)).numpy()
        rank = np.empty_like(perm)
        rank[perm] = np.arange(len(perm))
        stream = np.lexsort((base, rank[self.index.shard[base]]))  # positions, shard by shard in file order
        return stream[buffer_shuffle(len(stream), self.buffer, random.Random(seed))]


def read_split(root: Path, split: str, pattern: str, image_exts: list[str], label_ext: str, buffer: int) -> Samples:
    """One split's shards under ``root/split`` as :class:`Samples`."""
    paths = shard_paths(root / split, pattern)
    if not paths:
        raise DataError(f"{root / split} holds no shards matching {pattern!r}; write the {split} shards there or set "
                        "data.wds_shards")
    index = build_index(paths, image_exts, label_ext)
    log.info("%s: %d samples in %d shards", root / split, len(index.label), len(paths))
    return Samples(TarSamples(index, buffer), torch.from_numpy(index.label))


def webdataset_splits(root: str | None, pattern: str, image: str, label: str,
                      buffer: int) -> tuple[Samples, Samples, list[str] | None]:
    """The training shards (``root/train``), the held-out shards (``root/val``, else ``root/test``) and the class
    names from ``root/classes.txt`` (one per line) when it exists."""
    if not root:
        raise DataError("data.name 'webdataset' needs data.root: a folder with train/ and val/ (or test/) shards")
    r = Path(root).expanduser()
    exts = [e.strip().lower().lstrip(".") for e in image.split(";") if e.strip()]
    held_out = "val" if (r / "val").is_dir() else "test"
    for d in ("train", held_out):
        if not (r / d).is_dir():
            raise DataError(f"{r / d} not found; WebDataset shards go in {r}/train/ and {r}/val/ (or test/)")
    train = read_split(r, "train", pattern, exts, label.strip().lstrip("."), buffer)
    test = read_split(r, held_out, pattern, exts, label.strip().lstrip("."), buffer)
    names = r / "classes.txt"
    classes = [c.strip() for c in names.read_text().splitlines() if c.strip()] if names.is_file() else None
    top = max(int(s.labels.max()) for s in (train, test) if len(s.labels))
    if classes is not None and top >= len(classes):
        raise DataError(f"{names} names {len(classes)} classes but the shards hold label {top}; add the missing class "
                        f"names to classes.txt (one per line, label 0 first) or fix the shards' labels")
    return train, test, classes
