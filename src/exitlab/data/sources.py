"""Data sets by name: where each reader is, and the names a config may use."""

from __future__ import annotations

from ..errors import ConfigError
from .datasets import Dataset, load_cifar, load_idx, synthetic
from .imagefolder import load_image_folder

DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100", "imagefolder", "synthetic")


def load_dataset(name: str, root: str | None = None, *, download: bool = True, img_size: int = 32,
                 synthetic_kwargs: dict | None = None) -> Dataset:
    """Load a dataset by name. Search order: ``root``, the Debian package path, the cache, then a download."""
    if name in ("fashion_mnist", "mnist"):
        return load_idx(name, root, download)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root, download)
    if name == "imagefolder":
        return load_image_folder(root, img_size)
    if name == "synthetic":
        return synthetic(**dict(synthetic_kwargs or {}))
    raise ConfigError(f"data.name: unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
