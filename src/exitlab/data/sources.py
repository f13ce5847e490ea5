"""Sources: where a run's samples come from. In memory (:class:`~exitlab.data.datasets.Dataset`: tensors from a
named data set or :func:`from_tensors`), or read one sample at a time (:class:`StreamSource`: :func:`from_datasets`,
image folders with ``data.stream``, WebDataset shards). :func:`load_source` opens the one a config names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .catalog import DATASETS, is_text_data, unknown_name_message
from .datasets import Dataset, load_cifar, load_idx, synthetic
from .imagefolder import list_folder, load_image_folder
from .shards import webdataset_splits
from .stream import Samples


@dataclass
class StreamSource:
    """Splits read one sample at a time by the streaming loader. Without ``val``, a seeded stratified share of
    ``train`` is held out for validation (``data.val_fraction``)."""

    name: str
    train: Samples
    test: Samples
    classes: list[str]
    val: Samples | None = None


def _integers(y: torch.Tensor, what: str) -> None:
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise DataError(f"{what}: labels must be integers 0..C-1, got {y.dtype}; convert them (e.g. y.astype(int))")


def _shown(values: list[int]) -> str:
    return ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")


def check_labels(y: torch.Tensor, num_classes: int, what: str) -> None:
    """Labels must be integers in 0..C-1: one DataError naming the bad labels and the fix."""
    _integers(y, what)
    bad = torch.unique(y[(y < 0) | (y >= num_classes)]).tolist()
    if bad:
        raise DataError(f"{what}: labels must be 0..{num_classes - 1} (one per class), found {_shown(bad)}; map them "
                        "to 0..C-1 first (e.g. numpy.unique(y, return_inverse=True)) or pass one class name per label")


def resolve_classes(classes: list[str] | None, train: tuple[torch.Tensor, str],
                    *others: tuple[torch.Tensor, str]) -> list[str]:
    """The class names: as given, or "0".."C-1" when the training labels are exactly 0..C-1; labels checked."""
    if classes is None:
        y, what = train
        _integers(y, what)
        seen = torch.unique(y).tolist()
        if seen != list(range(len(seen))):
            missing = sorted(set(range(max(seen) + 1)) - set(seen)) if seen and max(seen) >= 0 else []
            raise DataError(f"{what}: labels must be 0..C-1 with every class present, found {_shown(seen)}"
                            f"{f' (no {_shown(missing)})' if missing else ''}; map them to 0..C-1 (e.g. "
                            "numpy.unique(y, return_inverse=True)) or pass classes= (one name per label)")
        classes = [str(i) for i in range(len(seen))]
    classes = [str(c) for c in classes]
    if len(classes) < 2:
        raise DataError(f"a classifier needs at least two classes, got {len(classes)}; check the labels")
    for y, what in (train, *others):
        check_labels(y, len(classes), what)
    return classes


def _image_tensor(a, layout: str, what: str) -> torch.Tensor:
    """Images as ``[N, C, H, W]``: uint8 kept, floats as float32 (used as given); ``[N, H, W]`` is one channel."""
    x = torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else torch.as_tensor(a)
    if x.dtype != torch.uint8 and not x.dtype.is_floating_point:
        raise DataError(f"{what}: images must be uint8 (0..255) or float, got {x.dtype}; convert them first")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[0] == 0:
        raise DataError(f"{what}: expected images [N, C, H, W] or [N, H, W, C] with N > 0, got {tuple(x.shape)}")
    hwc = layout == "NHWC" or (layout == "auto" and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3))
    x = x.permute(0, 3, 1, 2).contiguous() if hwc else x
    if x.dtype.is_floating_point:
        x = x.float()
        if not bool(torch.isfinite(x).all()):
            raise DataError(f"{what} holds NaN or infinite values; clean the images first")
    return x


def _label_tensor(a, n: int, what: str) -> torch.Tensor:
    y = torch.from_numpy(np.asarray(a)) if not isinstance(a, torch.Tensor) else a
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{what}: expected {n} labels (one per image) as a 1-D array, got shape {tuple(y.shape)}")
    _integers(y, what)  # the range is checked against the classes
    return y.long()


def from_tensors(train_x, train_y, test_x, test_y, classes: list[str] | None = None, *,
                 layout: str = "auto") -> Dataset:
    """An in-memory source from torch tensors or numpy arrays.

    Images are ``[N, C, H, W]`` or ``[N, H, W, C]`` (``layout``: NCHW, NHWC or auto, which reads NHWC when the last
    axis has 1 or 3 entries and axis 1 does not); ``[N, H, W]`` is one channel. uint8 images are pixels (divided by
    255, then normalised); float images are used as given (normalised by their own training mean and std, not
    divided by 255). Labels are integers 0..C-1; ``classes`` names them (default "0".."C-1").
    """
    if layout not in ("auto", "NCHW", "NHWC"):
        raise ConfigError(f"layout must be auto, NCHW or NHWC, got {layout!r}")
    tx, vx = _image_tensor(train_x, layout, "train_x"), _image_tensor(test_x, layout, "test_x")
    if tx.shape[1:] != vx.shape[1:] or tx.dtype != vx.dtype:
        raise DataError(f"train_x is {tx.dtype} {tuple(tx.shape[1:])} but test_x is {vx.dtype} {tuple(vx.shape[1:])};"
                        " give both splits the same image shape and type")
    ty, vy = _label_tensor(train_y, len(tx), "train_y"), _label_tensor(test_y, len(vx), "test_y")
    return Dataset("tensors", tx, ty, vx, vy, resolve_classes(classes, (ty, "train_y"), (vy, "test_y")))


def dataset_labels(ds: torch.utils.data.Dataset, what: str) -> torch.Tensor:
    """A map-style dataset's labels: its ``targets`` attribute when it has one, else each sample's label, read once."""
    if not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__"):
        raise DataError(f"{what}: from_datasets takes map-style datasets (with __len__ and __getitem__), got "
                        f"{type(ds).__name__}; for tar shards use data.name=webdataset")
    targets = getattr(ds, "targets", None)
    labels = targets if targets is not None else [ds[i][1] for i in range(len(ds))]
    y = torch.as_tensor(np.asarray([int(t) if isinstance(t, torch.Tensor) else t for t in labels]))
    if y.ndim != 1 or len(y) != len(ds):
        raise DataError(f"{what}: {len(y)} labels (targets) for {len(ds)} samples; give one integer label per sample")
    if len(y) == 0:
        raise DataError(f"{what} is empty")
    _integers(y, what)  # the range is checked against the classes
    return y.long()


def from_datasets(train: torch.utils.data.Dataset, test: torch.utils.data.Dataset,
                  val: torch.utils.data.Dataset | None = None, classes: list[str] | None = None) -> StreamSource:
    """A streamed source from map-style datasets whose samples are (image, label); images are CHW tensors (uint8
    pixels, or float used as given), numpy arrays (HWC, or CHW by the rule of :func:`from_tensors`) or PIL images.

    The split is stratified on the labels: a dataset's ``targets`` attribute when it has one, else every sample is
    read once up front to learn its label. Without ``val``, a share of ``train`` is held out (``data.val_fraction``).
    """
    parts = {"train": train, "test": test, **({"val": val} if val is not None else {})}
    samples = {k: Samples(ds, dataset_labels(ds, k)) for k, ds in parts.items()}
    others = [(s.labels, k) for k, s in samples.items() if k != "train"]
    names = resolve_classes(classes, (samples["train"].labels, "train"), *others)
    return StreamSource("datasets", samples["train"], samples["test"], names, samples.get("val"))


class TensorSamples(torch.utils.data.Dataset):
    """In-memory images read one at a time (the ImageNet recipe on tensors goes through the streaming loader)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


def as_stream(ds: Dataset) -> StreamSource:
    """An in-memory source seen by the streaming loader."""
    return StreamSource(ds.name, Samples(TensorSamples(ds.train_x, ds.train_y), ds.train_y),
                        Samples(TensorSamples(ds.test_x, ds.test_y), ds.test_y), ds.classes)


def load_dataset(name: str, root: str | None = None, *, download: bool = True, img_size: int = 32,
                 synthetic_kwargs: dict | None = None) -> Dataset:
    """Load an in-memory dataset by name. Search order: ``root``, the Debian package path, the cache, a download."""
    if name in ("fashion_mnist", "mnist"):
        return load_idx(name, root, download)
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, root, download)
    if name == "imagefolder":
        return load_image_folder(root, img_size)
    if name == "synthetic":
        return synthetic(**dict(synthetic_kwargs or {}))
    if name == "webdataset":
        raise ConfigError("data.name webdataset is streamed, not loaded into memory; use load_source")
    if is_text_data(name):
        raise ConfigError(f"data.name {name} is text; it is read by exitlab.data.textfiles.text_source")
    raise ConfigError(unknown_name_message(DATASETS, "data.name", name))


def load_source(d) -> Dataset | StreamSource:
    """The source a config's ``data`` section names: image folders (streamed with ``data.stream``), WebDataset
    shards, or an in-memory data set."""
    if d.name == "imagefolder" and d.stream:
        f = list_folder(d.root)
        return StreamSource(f.root.name, f.samples("train"), f.samples("test"), f.classes)
    if d.name == "webdataset":
        train, test, classes = webdataset_splits(d.root, d.wds_shards, d.wds_image, d.wds_label, d.shuffle_buffer)
        names = resolve_classes(classes, (train.labels, "train shards"), (test.labels, "held-out shards"))
        return StreamSource(Path(d.root).expanduser().name, train, test, names)
    return load_dataset(d.name, d.root, download=d.download, img_size=d.img_size, synthetic_kwargs=d.synthetic)
