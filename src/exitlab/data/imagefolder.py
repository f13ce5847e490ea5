"""Image folders in the ImageNet / Imagenette / Tiny ImageNet layouts: listed once, then decoded all into memory at a
fixed size, or decoded per sample in the streaming loader (``data.stream``).

Extensions match case-insensitively. A class folder without images and a folder with a single class are refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .datasets import Dataset
from .stream import Samples, worker_error
from .transforms import Recipe, file_view, sample_rng

_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")  # compared with the lower-cased suffix


def _images(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.suffix.lower() in _EXTS and p.is_file())


class FileSamples(torch.utils.data.Dataset):
    """Image files under ``root``: sample ``i`` is (path, label). Paths are kept as one bytes array, which forked
    workers share without copying (a list of Path objects would be copied page by page as it is touched)."""

    def __init__(self, root: Path, paths: list[Path], labels: list[int]):
        self.root = os.fsencode(root)
        self.rel = np.array([os.fsencode(p.relative_to(root)) for p in paths], dtype=bytes)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rel)

    def describe(self, i: int) -> str:
        return os.fsdecode(os.path.join(self.root, self.rel[i]))

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.describe(i), int(self.labels[i])


class _Decode(torch.utils.data.Dataset):
    """Decodes one image file to ``[3, size, size]`` uint8, the evaluation view of the crop_flip recipe."""

    def __init__(self, files: FileSamples, size: int):
        self.files, self.recipe = files, Recipe("crop_flip", size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return file_view(self.files.describe(i), self.recipe, sample_rng(0, i))


def decode_workers(n_images: int) -> int:
    """DataLoader workers for decoding: one per CPU core (at most 16), none for small folders."""
    return 0 if n_images < 2048 else min(16, os.cpu_count() or 1)


def _decode(files: FileSamples, size: int) -> torch.Tensor:
    """Decode every image once, in parallel DataLoader workers sized to the machine; ``[N, 3, size, size]`` uint8."""
    loader = torch.utils.data.DataLoader(_Decode(files, size), batch_size=256, num_workers=decode_workers(len(files)))
    out = torch.empty(len(files), 3, size, size, dtype=torch.uint8)
    i = 0
    try:
        for batch in loader:
            out[i : i + len(batch)] = batch
            i += len(batch)
    except DataError as e:  # a worker's DataError arrives with the worker's traceback in its text
        raise worker_error(e) from None
    return out


@dataclass
class Listing:
    """An image folder's files: the training split, the held-out split (val/ or test/) and the class names."""

    root: Path
    classes: list[str]
    train: tuple[list[Path], list[int]]
    test: tuple[list[Path], list[int]]

    def files(self, split: str) -> FileSamples:
        paths, labels = getattr(self, split)
        return FileSamples(self.root, paths, labels)

    def samples(self, split: str) -> Samples:
        """One split for the streaming loader."""
        f = self.files(split)
        return Samples(f, torch.from_numpy(f.labels))


def _annotated(d: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """Tiny ImageNet: val/images/*.JPEG listed with their class in val_annotations.txt."""
    index = {c: i for i, c in enumerate(classes)}
    rows = [line.split("\t")[:2] for line in (d / "val_annotations.txt").read_text().splitlines() if line.strip()]
    unknown = sorted({c for _, c in rows if c not in index})
    if unknown:
        raise DataError(f"{d}/val_annotations.txt names classes that train/ lacks: {', '.join(unknown[:5])}; add "
                        "their train/ folders or remove those lines")
    return [d / "images" / f for f, _ in rows], [index[c] for _, c in rows]


def _split(root: Path, split: str, classes: list[str]) -> tuple[list[Path], list[int]]:
    d = root / split
    if (d / "val_annotations.txt").exists():
        return _annotated(d, classes)
    extra = sorted(p.name for p in d.iterdir() if p.is_dir() and p.name not in classes)
    if extra:
        raise DataError(f"{d / extra[0]} is not a class of {root}/train; a held-out split may only use the training "
                        "classes: rename or remove it")
    paths, labels = [], []
    for i, c in enumerate(classes):
        found = _images(d / c)
        if not found and (d / c).is_dir():
            raise DataError(f"{d / c} is an empty class folder (no {'/'.join(_EXTS)} images); add images or remove it")
        paths += found
        labels += [i] * len(found)
    return paths, labels


def list_folder(root: str | None) -> Listing:
    """List ``root/train/<class>/*`` and ``root/val/<class>/*`` (or ``test/``, or Tiny ImageNet's
    ``val_annotations.txt``)."""
    if not root:
        raise DataError("data.name 'imagefolder' needs data.root: a folder with train/<class>/ and val/<class>/")
    r = Path(root).expanduser()
    if not (r / "train").is_dir():
        raise DataError(f"{r}/train not found; an image folder needs train/<class>/ and val/<class>/ subfolders")
    classes = sorted(p.name for p in (r / "train").iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{r}/train has no class subfolders")
    if len(classes) == 1:
        raise DataError(f"{r}/train has a single class folder ({classes[0]}); a classifier needs at least two: add "
                        "one folder per class")
    held_out = "val" if (r / "val").is_dir() else "test"
    if not (r / held_out).is_dir():
        raise DataError(f"{r} has no val/ or test/ folder")
    listing = Listing(r, classes, _split(r, "train", classes), _split(r, held_out, classes))
    if not listing.test[0]:
        raise DataError(f"{r}: no images found under {held_out}/ (looked for {', '.join(_EXTS)}, any case)")
    return listing


def load_image_folder(root: str | None, size: int = 32) -> Dataset:
    """An image folder decoded once into memory: every image resized to ``size`` x ``size`` (bilinear)."""
    f = list_folder(root)
    train, test = f.files("train"), f.files("test")
    return Dataset(f.root.name, _decode(train, size), torch.from_numpy(train.labels), _decode(test, size),
                   torch.from_numpy(test.labels), f.classes)
