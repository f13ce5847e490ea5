"""Tiny generated data for the data tests: image folders of small JPEGs, WebDataset shards, data configs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

CLASSES = ("ant", "bee", "cat")


def image(rng: np.random.Generator, c: int, size: tuple[int, int]) -> np.ndarray:
    """An HWC uint8 image whose colour depends on its class, with noise (so decoding and crops are visible)."""
    h, w = size
    base = np.array([(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)][c % 4], dtype=np.float64)
    ramp = np.linspace(0, 50, w)[None, :, None]
    return np.clip(base + ramp + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def make_folder(root: Path, *, n_train: int = 8, n_val: int = 3, classes=CLASSES, ext: str = ".jpg",
                sizes: tuple[int, int] = (20, 32), seed: int = 0) -> Path:
    """``root/train/<class>/*`` and ``root/val/<class>/*`` of small images of random sizes in ``sizes``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(image(rng, c, tuple(rng.integers(*sizes, 2)))).save(d / f"{name}{i:03d}{ext}")
    return root


def jpeg_bytes(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG")
    return buf.getvalue()


def make_shards(d: Path, counts: list[int], *, num_classes: int = 3, seed: int = 0, start: int = 0,
                drop: dict | None = None) -> list[Path]:
    """Shards ``d/shard-000.tar``... holding ``counts[i]`` samples each (keys numbered from ``start``), written with
    webdataset's own TarWriter. ``drop`` maps a key to an extension to leave out of that sample."""
    import webdataset as wds

    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    paths, k = [], start
    for s, n in enumerate(counts):
        p = d / f"shard-{s:03d}.tar"
        with wds.TarWriter(str(p)) as w:
            for _ in range(n):
                label = k % num_classes
                sample = {"__key__": f"{k:06d}", "jpg": jpeg_bytes(image(rng, label, tuple(rng.integers(20, 32, 2)))),
                          "cls": str(label).encode()}
                sample.pop((drop or {}).get(f"{k:06d}", ""), None)
                w.write(sample)
                k += 1
        paths.append(p)
    return paths


def data_config(**overrides):
    """A DataConfig from ``data.<key>=<value>`` overrides, as the trainer would build it."""
    from exitlab.runs.config import load_config

    return load_config(None, [f"data.{k}={v}" for k, v in overrides.items()]).data
