"""Typed run configuration: dataclasses loaded from YAML, with dotted ``--set a.b=c`` overrides checked by type."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import yaml

from ..data.catalog import AUGMENTS, DATASETS, is_text_data, unknown_name_message
from ..errors import ConfigError
from .components import REGIMES
from .phase_config import PhaseConfig, flat_phase, upgrade_phase
from .typed import apply_overrides, check_range, from_dict, read_yaml, to_dict


@dataclass
class ModelConfig:
    """Which backbone, where the exits go, and which head they use."""

    backbone: str = "resnet8"  # a name from `exitlab ls backbones`, or "timm:NAME" / "torchvision:NAME"
    factory: Union[str, None] = None  # or "package.module:function" building the network (backbone_kwargs)  # noqa: UP007
    pretrained: Union[bool, str] = False  # foreign models: a local weights file (true: timm's cache)  # noqa: UP007
    exits: Union[list[int], list[str], str] = "every:1"  # block indices or module names, "every:K", "flops:N"  # noqa: UP007
    head: Union[str, None] = None  # a name from `exitlab ls heads`; null: the backbone's own (msdnet, text, sdn)  # noqa: UP007
    head_kwargs: dict = field(default_factory=dict)  # options of the head, e.g. {grid: 4} or {cascade: true}
    backbone_kwargs: dict = field(default_factory=dict)  # options of the backbone or factory, e.g. {width: 16}


@dataclass
class TextConfig:
    """Text data (``data.name`` text or spam_assassin): files, columns, tokenizer and length (docs/text.md)."""

    train: Union[str, None] = None  # text: the training file (.csv, .tsv, .jsonl) or save_to_disk folder; under root  # noqa: UP007
    test: Union[str, None] = None  # text: the test file; unset: a seeded stratified test_fraction of train  # noqa: UP007
    test_fraction: float = 0.2  # without a test file: the share of texts held out for testing (split seed 0)
    column: str = "text"  # the text column
    pair: Union[str, None] = None  # a second text column (sentence pairs, as in STS-B)  # noqa: UP007
    label: str = "label"  # the label column: class names or integers, or numbers for regression
    task: str = "classification"  # classification, or regression (float targets, MSE per exit)
    tokenizer: str = "wordpiece"  # a local tokenizer folder or cached name, or wordpiece: trained on the train texts
    vocab_size: int = 4000  # wordpiece: the vocabulary size
    max_length: int = 128  # tokens per text; longer texts are truncated, with one warning
    length_buckets: int = 0  # > 0: training batches sorted by length within seeded buckets of this many batches


@dataclass
class DataConfig:
    """Dataset, split and batching."""

    name: str = "fashion_mnist"  # fashion_mnist, cifar10, imagefolder, webdataset, text, ... (`exitlab ls`)
    root: Union[str, None] = None  # directory holding the files; searched before the Debian path  # noqa: UP007
    download: bool = True  # try the official source (checksum-verified) when the files are not found
    img_size: int = 32  # output size of streamed and image-folder images; in-memory IDX/CIFAR keep their own size
    val_fraction: float = 0.1  # stratified, seeded share of the training set held out for validation, in (0, 1)
    batch_size: int = 128  # training batch size (global, across all ranks)
    eval_batch_size: int = 1000  # batch size for validation and test passes
    crop_padding: int = 2  # random-crop padding in pixels; 0 turns cropping off
    flip: bool = True  # random horizontal flips
    train_subset: int = 0  # use only N training samples after the split, keeping every class's share (0 = all)
    synthetic: dict = field(default_factory=dict)  # options of the synthetic dataset (tests)
    augment: str = "crop_flip"  # crop_flip (pad, crop, flip) or imagenet (random resized crop, flip; per sample)
    crop_fraction: float = 0.875  # imagenet evaluation: centre crop of the image resized to img_size / this, (0, 1]
    stream: bool = False  # image folders: decode each image per sample in DataLoader workers, not all into memory
    workers: int = -1  # DataLoader worker processes per rank for streamed data; -1 = CPU cores / local ranks, <= 8
    wds_shards: str = "*.tar"  # webdataset: shard files in root/train, root/val (or test): a glob or {000..099} pattern
    wds_image: str = "jpg;jpeg;png;webp;bmp"  # webdataset: image extensions of a sample, first found wins
    wds_label: str = "cls"  # webdataset: extension of the label member (an integer 0..C-1 as text)
    shuffle_buffer: int = 2000  # webdataset: samples in the seeded shuffle buffer of a training pass (1 = none)
    text: TextConfig = field(default_factory=TextConfig)  # text and spam_assassin: files, columns, tokenizer


@dataclass
class RunConfig:
    """A training run: model, data, regime, per-phase options and the runtime."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    regime: Union[str, list[int]] = "mixed"  # joint, disjoint, mixed, or a list of phases like [1, 2, 3]  # noqa: UP007
    budget: int = 0  # > 0: total epochs, split between the regime's phases (matched-budget comparisons)
    budget_flops: float = 0.0  # > 0: total training FLOPs (measured), split like budget: compute-matched comparisons
    phase1_share: float = 0.5  # with a budget: the share of it that phase 1 gets, when the regime has one
    phase1: PhaseConfig = field(default_factory=PhaseConfig)  # backbone only
    phase2: PhaseConfig = field(default_factory=PhaseConfig)  # backbone and all ICs
    phase3: PhaseConfig = field(default_factory=PhaseConfig)  # ICs only, backbone frozen
    seed: int = 0  # seeds the split, the initial weights, the batch order and augmentation (unless set apart below)
    init_seed: Union[int, None] = None  # the initial weights only (default: seed)  # noqa: UP007
    order_seed: Union[int, None] = None  # batch order, augmentation and dropout only (default: seed)  # noqa: UP007
    split_seed: Union[int, None] = None  # the train/validation split only (default: seed)  # noqa: UP007
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    amp: str = "none"  # none or bf16 (autocast)
    channels_last: bool = False  # channels_last memory format for CNNs
    compile: bool = False  # torch.compile the backbone
    threads: int = 0  # torch CPU threads (0 = leave torch's default)
    checkpoint_every: int = 1  # write a checkpoint every N epochs (and always at the end of each phase)
    keep_checkpoints: int = 2  # how many periodic checkpoints to keep
    progress: bool = True  # progress bars (shown only on a terminal)
    grad_log_every: int = 0  # > 0: log per-exit gradient contributions every N steps to gradients.jsonl
    grad_log_samples: int = 256  # validation samples (fixed) used for that logging

    def __post_init__(self) -> None:
        validate(self)

    @property
    def seed_init(self) -> int:
        return self.seed if self.init_seed is None else self.init_seed

    @property
    def seed_data_order(self) -> int:
        return self.seed if self.order_seed is None else self.order_seed

    @property
    def seed_split(self) -> int:
        return self.seed if self.split_seed is None else self.split_seed


def validate(cfg: RunConfig) -> None:
    """Range and name checks that need no data or model. Each error names the key and what is valid.

    Checks that need the model (exit placement, per-exit weights, whether a phase has ICs to train) run in
    :func:`exitlab.planning.preflight`, still before any data is read.
    """
    if isinstance(cfg.regime, str) and cfg.regime not in REGIMES:
        raise ConfigError(f"regime: unknown regime {cfg.regime!r}; choose one of: {', '.join(REGIMES.names())}, "
                          "or a list of phases such as [1, 2, 3]")
    if isinstance(cfg.regime, list):
        if not cfg.regime or any(p not in (1, 2, 3) for p in cfg.regime):
            raise ConfigError(f"regime: phase list {cfg.regime} must be non-empty and use only phases 1, 2 and 3")
    check_range("budget", cfg.budget, lo=0, unit="epochs")
    check_range("budget_flops", cfg.budget_flops, lo=0, unit="FLOPs")
    if cfg.budget and cfg.budget_flops:
        raise ConfigError("budget and budget_flops are both set; match epochs (budget) or training compute "
                          "(budget_flops), not both")
    check_range("phase1_share", cfg.phase1_share, lo=0, hi=1, lo_open=True, hi_open=True)
    if cfg.amp not in ("none", "bf16"):
        raise ConfigError(f"amp: {cfg.amp!r} is not supported; choose none or bf16")
    if not DEVICE.fullmatch(cfg.device):
        raise ConfigError(f"device: {cfg.device!r} is not a device name; choose auto, cpu, cuda, cuda:N or mps")
    for key, val, lo in (("checkpoint_every", cfg.checkpoint_every, 1), ("keep_checkpoints", cfg.keep_checkpoints, 1),
                         ("threads", cfg.threads, 0), ("grad_log_every", cfg.grad_log_every, 0),
                         ("grad_log_samples", cfg.grad_log_samples, 1)):
        check_range(key, val, lo=lo)
    _validate_data(cfg.data)


DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
SYNTHETIC = {"num_classes": 2, "n_train": 1, "n_test": 0, "size": 4, "channels": 1, "seed": None}  # key: minimum
DATA_DEFAULTS = {"wds_shards": "*.tar", "wds_image": "jpg;jpeg;png;webp;bmp", "wds_label": "cls"}


def _validate_data(d: DataConfig) -> None:
    if d.name not in DATASETS:
        raise ConfigError(unknown_name_message(DATASETS, "data.name", d.name))
    check_range("data.val_fraction", d.val_fraction, lo=0, hi=1, lo_open=True, hi_open=True)
    for key, val, lo in (("data.batch_size", d.batch_size, 1), ("data.eval_batch_size", d.eval_batch_size, 1),
                         ("data.crop_padding", d.crop_padding, 0), ("data.train_subset", d.train_subset, 0),
                         ("data.img_size", d.img_size, 1), ("data.workers", d.workers, -1),
                         ("data.shuffle_buffer", d.shuffle_buffer, 1)):
        check_range(key, val, lo=lo)
    check_range("data.crop_fraction", d.crop_fraction, lo=0, hi=1, lo_open=True)
    if d.augment not in AUGMENTS:
        raise ConfigError(unknown_name_message(AUGMENTS, "data.augment", d.augment))
    if d.stream and d.name != "imagefolder":
        raise ConfigError(f"data.stream applies to image folders (data.name imagefolder), not {d.name!r}; webdataset "
                          "always streams and the other data sets are held in memory")
    if d.augment == "imagenet" and d.name == "imagefolder" and not d.stream:
        raise ConfigError("data.augment=imagenet crops the full-size images, so image folders need data.stream=true "
                          "(in memory they are decoded once at data.img_size)")
    for key in ("wds_shards", "wds_image", "wds_label"):
        if not getattr(d, key).strip(" ;"):
            raise ConfigError(f"data.{key} is empty; give a shard pattern or extensions, e.g. {DATA_DEFAULTS[key]!r}")
    if d.synthetic and d.name != "synthetic":
        raise ConfigError(f"data.synthetic is set but data.name is {d.name!r}; drop data.synthetic or use "
                          "data.name=synthetic")
    for key, value in d.synthetic.items():
        if key not in SYNTHETIC:
            raise ConfigError(f"data.synthetic.{key}: unknown option; valid options: {', '.join(SYNTHETIC)}")
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"data.synthetic.{key}: expected int, got {value!r}")
        if SYNTHETIC[key] is not None:
            check_range(f"data.synthetic.{key}", value, lo=SYNTHETIC[key])
    _validate_text(d)
    n_cls = d.synthetic.get("num_classes", 7)
    if d.synthetic.get("n_train", 700) < 2 * n_cls:
        raise ConfigError(f"data.synthetic.n_train must be >= 2 x num_classes ({2 * n_cls}) so that every class is "
                          "in both the train and the validation split")


def _validate_text(d: DataConfig) -> None:
    t = d.text
    if not is_text_data(d.name):
        if t != TextConfig():
            raise ConfigError(f"data.text is set but data.name is {d.name!r}; drop data.text or use data.name=text")
        return
    if d.name == "text" and not t.train:
        raise ConfigError("data.text.train: text data needs a training file (.csv, .tsv, .jsonl or a save_to_disk "
                          "folder), e.g. --set data.text.train=train.csv")
    if d.name == "spam_assassin" and (t.train or t.test or t.task != "classification"):
        raise ConfigError("data.text.train/test/task do not apply to spam_assassin (its mails and labels are fixed); "
                          "drop them, or use data.name=text for your own files")
    if t.task not in ("classification", "regression"):
        raise ConfigError(f"data.text.task: {t.task!r}; choose classification or regression")
    check_range("data.text.test_fraction", t.test_fraction, lo=0, hi=1, lo_open=True, hi_open=True)
    for key, val, lo in (("vocab_size", t.vocab_size, 8), ("max_length", t.max_length, 2),
                         ("length_buckets", t.length_buckets, 0)):
        check_range(f"data.text.{key}", val, lo=lo)
    if not t.tokenizer.strip():
        raise ConfigError("data.text.tokenizer is empty; give a tokenizer folder or name, or wordpiece")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    data = read_yaml(path, "configs/fashion_mnist.yaml") if path is not None else {}
    return from_dict(RunConfig, apply_overrides(data, overrides or []))


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (a run directory's config.yaml)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


PHASES = ("phase1", "phase2", "phase3")


def upgrade_config(data: dict) -> dict:
    """A run config dict as an older exitlab saved it, in today's layout: the phases' flat method keys
    (``layer_drop``, ``l2w_epsilon``, ...) moved into their sections. Only for what exitlab wrote itself; user input
    with an old key is refused."""
    return {k: upgrade_phase(v) if k in PHASES and isinstance(v, dict) else v for k, v in data.items()}


def upgrade_key(key: str) -> str:
    """A dotted key as an older exitlab wrote it (``phase2.layer_drop``), in today's layout (``phase2.layerskip.rate``).
    """
    phase, _, rest = key.partition(".")
    return f"{phase}.{PhaseConfig.MOVED[rest]}" if phase in PHASES and rest in PhaseConfig.MOVED else key


def load_saved_config(path: str | Path) -> RunConfig:
    """The resolved config a run directory holds (``config.yaml``), written by this or an older exitlab."""
    return from_dict(RunConfig, upgrade_config(read_yaml(path, "a run directory's config.yaml")))


def signature_dict(cfg: RunConfig) -> dict:
    """The config as run signatures hash it: the phases' method keys flat, under their names from before the method
    sections, so that the signatures of runs started before them still match (they resume and share phase 1)."""
    d = to_dict(cfg)
    return {k: flat_phase(v) if k in PHASES else v for k, v in d.items()}
