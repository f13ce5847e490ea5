"""Image folders in the ImageNet / Imagenette / Tiny ImageNet layouts, decoded once into memory at a fixed size."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .datasets import Dataset

_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG"}


def _images(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.suffix in _EXTS)


class _Images(torch.utils.data.Dataset):
    """Decodes one image file to ``[size, size, 3]`` uint8 (run inside DataLoader workers)."""

    def __init__(self, paths: list[Path], size: int):
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError  # Pillow comes with matplotlib

        p = self.paths[i]
        try:
            with Image.open(p) as im:
                return torch.from_numpy(np.array(im.convert("RGB").resize((self.size, self.size), Image.BILINEAR)))
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{p} is not a readable image ({e}); remove or replace it") from None


def decode_workers(n_images: int) -> int:
    """DataLoader workers for decoding: one per CPU core (at most 16), none for small folders."""
    return 0 if n_images < 2048 else min(16, os.cpu_count() or 1)


def _decode(paths: list[Path], size: int) -> torch.Tensor:
    """Decode every image once, in parallel DataLoader workers sized to the machine; ``[N, 3, size, size]`` uint8."""
    loader = torch.utils.data.DataLoader(_Images(paths, size), batch_size=256, num_workers=decode_workers(len(paths)))
    out = torch.empty(len(paths), size, size, 3, dtype=torch.uint8)
    i = 0
    try:
        for batch in loader:
            out[i : i + len(batch)] = batch
            i += len(batch)
    except (RuntimeError, DataError) as e:  # a worker's DataError arrives with the worker's traceback in its text
        lines = [x for x in str(e).splitlines() if "is not a readable image" in x and "raise" not in x]
        if lines:
            raise DataError(lines[-1].split("DataError: ")[-1]) from None
        raise
    return out.permute(0, 3, 1, 2).contiguous()


def _split(root: Path, split: str, classes: list[str]) -> tuple[list[Path], list[int]]:
    d = root / split
    ann = d / "val_annotations.txt"  # Tiny ImageNet: val/images/*.JPEG listed with their class
    if ann.exists():
        index = {c: i for i, c in enumerate(classes)}
        rows = [line.split("\t")[:2] for line in ann.read_text().splitlines() if line.strip()]
        return [d / "images" / f for f, _ in rows], [index[c] for _, c in rows]
    paths, labels = [], []
    for i, c in enumerate(classes):
        found = _images(d / c)
        paths += found
        labels += [i] * len(found)
    return paths, labels


def load_image_folder(root: str | None, size: int = 32) -> Dataset:
    """``root/train/<class>/*`` and ``root/val/<class>/*`` (or Tiny ImageNet's ``val_annotations.txt``)."""
    if not root:
        raise DataError("data.name 'imagefolder' needs data.root: a folder with train/<class>/ and val/<class>/")
    r = Path(root).expanduser()
    if not (r / "train").is_dir():
        raise DataError(f"{r}/train not found; an image folder needs train/<class>/ and val/<class>/ subfolders")
    classes = sorted(p.name for p in (r / "train").iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{r}/train has no class subfolders")
    val = "val" if (r / "val").is_dir() else "test"
    if not (r / val).is_dir():
        raise DataError(f"{r} has no val/ or test/ folder")
    tp, tl = _split(r, "train", classes)
    vp, vl = _split(r, val, classes)
    if not tp or not vp:
        raise DataError(f"{r}: no images found under train/ or {val}/ (looked for {sorted(_EXTS)})")
    return Dataset(r.name, _decode(tp, size), torch.tensor(tl), _decode(vp, size), torch.tensor(vl), classes)
