"""The named data sources (``data.name``) and augmentation recipes (``data.augment``): registries with a one-line
description each, listed by ``exitlab ls datasets`` and ``exitlab ls augmentations`` and read by the config's
validation. :func:`~exitlab.data.sources.load_source` and :func:`~exitlab.data.textfiles.text_source` open them."""

from __future__ import annotations

from dataclasses import dataclass

from ..registry import Registry


@dataclass(frozen=True)
class DataSourceInfo:
    """A named data source: how it is read (``memory``: tensors on the device, ``stream``: one sample at a time,
    ``text``: tokenised text) and what it is."""

    kind: str
    description: str


DATASETS: Registry[DataSourceInfo] = Registry("dataset")
for _name, _kind, _text in (
    ("fashion_mnist", "memory", "Fashion-MNIST, 28x28 grey clothing images, 10 classes (IDX files; download)"),
    ("mnist", "memory", "MNIST, 28x28 grey digits, 10 classes (IDX files; download)"),
    ("cifar10", "memory", "CIFAR-10, 32x32 colour images, 10 classes (python batches; download)"),
    ("cifar100", "memory", "CIFAR-100, 32x32 colour images, 100 classes (python batches; download)"),
    ("imagefolder", "memory", "your images in data.root/train/<class>/ and val/<class>/ (streamed with data.stream)"),
    ("synthetic", "memory", "seeded random images of learnable class patterns (data.synthetic options); no files"),
    ("webdataset", "stream", "WebDataset .tar shards in data.root/train/ and val/ (or test/), streamed"),
    ("text", "text", "your text files (.csv, .tsv, .jsonl or a save_to_disk folder) under data.text"),
    ("spam_assassin", "text", "the SpamAssassin public corpus, ham vs spam mails (Debian path or data.root)"),
):
    DATASETS.register(_name, DataSourceInfo(_kind, _text))

AUGMENTS: Registry[str] = Registry("augmentation")
AUGMENTS.register("crop_flip", "pad, random crop and horizontal flip (batched tensor ops in memory, per sample when "
                               "streamed)")
AUGMENTS.register("imagenet", "random resized crop to data.img_size and horizontal flip, per sample (streamed data)")


def is_text_data(name: str) -> bool:
    """Whether ``data.name`` is tokenised text (read by :mod:`exitlab.data.textfiles`, trained by a text encoder)."""
    return name in DATASETS and DATASETS.get(name).kind == "text"


def unknown_name_message(registry: Registry, key: str, name: str) -> str:
    """The one line that refuses an unknown ``name`` for config key ``key``, listing the known ones."""
    return f"{key}: unknown {registry.kind} {name!r}; choose one of: {', '.join(registry.names())}"
