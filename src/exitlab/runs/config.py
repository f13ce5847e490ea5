"""Typed run configuration: dataclasses loaded from YAML, with dotted ``--set a.b=c`` overrides checked by type."""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from ..data.catalog import AUGMENTS, DATASETS, is_text_data, unknown_name_message
from ..errors import ConfigError
from .components import LOSS_WEIGHTS, OPTIMIZERS, REGIMES, SCHEDULES


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
class PhaseConfig:
    """How one phase trains. Every phase starts a fresh optimizer and schedule."""

    epochs: int = 2  # epochs of this phase (the maximum, when patience > 0); overridden by `budget`
    optimizer: str = "sgd"  # sgd or adamw
    lr: float = 0.05  # peak learning rate
    momentum: float = 0.9  # SGD momentum, in [0, 1)
    weight_decay: float = 5e-4  # weight decay
    decay_params: str = "all"  # all, or weights: no decay on norm layers, biases, position embeddings, CLS tokens
    schedule: str = "cosine"  # cosine (per step, to zero), constant, or plateau (constant, cut on plateaus)
    warmup_epochs: float = 0.0  # linear learning-rate warm-up from 0 over this many epochs, then the schedule
    grad_clip: float = 0.0  # > 0: clip the global gradient norm of the trained parameters to this value
    label_smoothing: float = 0.0  # label smoothing of every exit's cross-entropy, in [0, 1)
    patience: int = 0  # > 0: stop after this many epochs without a better validation score, restore the best
    stop_rule: str = "mean"  # mean: the mean accuracy of the trained exits stalls; every: every trained exit stalls
    plateau_patience: int = 2  # schedule plateau: epochs without a better score before the lr is cut
    plateau_factor: float = 0.1  # schedule plateau: the cut, in (0, 1)
    loss_weights: Union[str, list[float]] = "uniform"  # uniform, sdn, or one weight per trained exit  # noqa: UP007
    grad_equilibrium: bool = False  # gradient equilibrium of Li et al. 2019 (phase 2 only)
    distill: float = 0.0  # weight of self-distillation from the final exit into the ICs (phase 2 and 3)
    distill_temperature: float = 3.0  # softmax temperature for self-distillation
    layer_drop: float = 0.0  # LayerSkip layer dropout: the largest rate p_max, in [0, 1) (phases 1 and 2)
    layer_drop_scale: str = "exp"  # its growth over depth: exp (LayerSkip), linear (stochastic depth) or uniform
    layer_drop_time: str = "constant"  # its growth over the phase's steps: constant, exp (LayerSkip) or linear
    layer_drop_per: str = "sample"  # skip blocks per sample (stochastic depth) or per batch
    exit_curriculum: str = "none"  # which exits get a loss at each step: none (all), rotational, gradual (phase 2)
    curriculum_rotation: int = 2  # rotational: every R-th IC gets a loss, shifted by one exit at every step
    curriculum_fraction: float = 0.5  # gradual: every IC is on from this fraction of the phase's steps, in (0, 1]
    gpf_imitation: float = 0.0  # GPF: weight of the imitation loss of future states (needs model.head gpf)
    l2w_epsilon: float = 0.0  # > 0: L2W sample weighting (phase 2), weights 1 + eps (u - mean u) from a meta-learnt net
    l2w_meta_lr: float = 1e-4  # L2W: Adam learning rate of the weight net
    l2w_meta_interval: int = 1  # L2W: a meta step every N training steps
    l2w_target: int = 20  # L2W: target exit shares q_j proportional to (index / 20)^j, index in 1..39
    l2w_hidden: int = 100  # L2W: hidden units of the weight net
    l2w_constraint: str = "mat"  # L2W: centre the weights over the whole matrix (mat), per exit (row), per sample (col)
    l2w_meta_subsets: str = "disjoint"  # L2W: disjoint (the reference) or overlapping (the paper code base)


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
    for k in ("phase1", "phase2", "phase3"):
        _validate_phase(k, getattr(cfg, k))
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


def _validate_phase(key: str, p: PhaseConfig) -> None:
    if p.optimizer not in OPTIMIZERS:
        raise ConfigError(f"{key}.optimizer: unknown optimizer {p.optimizer!r}; choose {_either(OPTIMIZERS)}")
    if p.schedule not in SCHEDULES:
        raise ConfigError(f"{key}.schedule: unknown schedule {p.schedule!r}; choose {_either(SCHEDULES)}")
    if p.decay_params not in ("all", "weights"):
        raise ConfigError(f"{key}.decay_params: {p.decay_params!r}; choose all or weights (no decay on norm layers, "
                          "biases, position embeddings and CLS tokens)")
    check_range(f"{key}.epochs", p.epochs, lo=0)
    check_range(f"{key}.lr", p.lr, lo=0, lo_open=True)
    check_range(f"{key}.momentum", p.momentum, lo=0, hi=1, hi_open=True)
    for name in ("weight_decay", "warmup_epochs", "grad_clip", "patience", "distill"):
        check_range(f"{key}.{name}", getattr(p, name), lo=0)
    check_range(f"{key}.label_smoothing", p.label_smoothing, lo=0, hi=1, hi_open=True)
    check_range(f"{key}.plateau_patience", p.plateau_patience, lo=1)
    check_range(f"{key}.plateau_factor", p.plateau_factor, lo=0, hi=1, lo_open=True, hi_open=True)
    if p.stop_rule not in ("mean", "every"):
        raise ConfigError(f"{key}.stop_rule: {p.stop_rule!r}; choose mean (the trained exits' mean accuracy stalls) "
                          "or every (every trained exit stalls, as in the paper's code)")
    check_range(f"{key}.distill_temperature", p.distill_temperature, lo=0, lo_open=True)
    _validate_layerskip(key, p)
    if isinstance(p.loss_weights, str) and p.loss_weights not in LOSS_WEIGHTS:
        raise ConfigError(f"{key}.loss_weights: unknown weighting {p.loss_weights!r}; choose "
                          f"{', '.join(LOSS_WEIGHTS.names())}, or a list of one weight per trained exit")
    if isinstance(p.loss_weights, list) and (not p.loss_weights or any(w < 0 for w in p.loss_weights)
                                             or sum(p.loss_weights) <= 0):
        raise ConfigError(f"{key}.loss_weights: {p.loss_weights} must be non-negative with a positive sum")


LAYERSKIP_CHOICES = {"layer_drop_scale": ("exp", "linear", "uniform"), "layer_drop_time": ("constant", "exp", "linear"),
                     "layer_drop_per": ("sample", "batch"), "exit_curriculum": ("none", "rotational", "gradual"),
                     "l2w_constraint": ("mat", "row", "col"), "l2w_meta_subsets": ("disjoint", "overlapping")}


def _validate_layerskip(key: str, p: PhaseConfig) -> None:
    check_range(f"{key}.layer_drop", p.layer_drop, lo=0, hi=1, hi_open=True)
    check_range(f"{key}.curriculum_rotation", p.curriculum_rotation, lo=1)
    check_range(f"{key}.curriculum_fraction", p.curriculum_fraction, lo=0, hi=1, lo_open=True)
    check_range(f"{key}.gpf_imitation", p.gpf_imitation, lo=0)
    check_range(f"{key}.l2w_epsilon", p.l2w_epsilon, lo=0)
    check_range(f"{key}.l2w_meta_lr", p.l2w_meta_lr, lo=0, lo_open=True)
    for name, lo in (("l2w_meta_interval", 1), ("l2w_target", 1), ("l2w_hidden", 1)):
        check_range(f"{key}.{name}", getattr(p, name), lo=lo)
    check_range(f"{key}.l2w_target", p.l2w_target, hi=39)
    for name, choices in LAYERSKIP_CHOICES.items():
        if getattr(p, name) not in choices:
            raise ConfigError(f"{key}.{name}: {getattr(p, name)!r}; choose {', '.join(choices[:-1])} or {choices[-1]}")


def _either(reg) -> str:
    names = reg.names()
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else names[0]


def check_range(key: str, value: float, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                hi_open: bool = False, unit: str = "") -> None:
    """Raise a ConfigError naming ``key`` unless ``value`` is a finite number in the range (closed by default)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo is None or (value > lo if lo_open else value >= lo))
    ok = ok and (hi is None or (value < hi if hi_open else value <= hi))
    if ok:
        return
    if lo is not None and hi is not None:
        want = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        want = f"{'>' if lo_open else '>='} {lo:g}"
    elif hi is not None:
        want = f"{'<' if hi_open else '<='} {hi:g}"
    else:
        want = "a finite number"
    raise ConfigError(f"{key} must be {want}{' ' + unit if unit else ''}, got {value!r}")


# ---------------------------------------------------------------- loading and overrides

_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _matches(value: Any, tp: Any) -> Any:
    """Return ``value`` coerced to ``tp`` or raise TypeError. Ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _matches(value, arm)
            except TypeError:
                continue
        raise TypeError
    if tp is type(None):
        if value is None:
            return None
        raise TypeError
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise TypeError
        return [_matches(v, item) for v in value]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise TypeError
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):  # YAML 1.1 reads 1e-3 as a string
            return float(value)
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    raise TypeError


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "").replace("NoneType", "null")


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types by dotted name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; valid keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, f"{prefix}{key}.")
            continue
        try:
            kwargs[key] = _matches(value, tp)
        except TypeError:
            raise ConfigError(f"{prefix}{key}: expected {_type_name(tp)}, got {value!r}") from None
        if not _finite(kwargs[key]):
            what = "is not a finite number" if isinstance(value, float) else "holds NaN or infinity"
            raise ConfigError(f"{prefix}{key}: {value!r} {what}; give a real number")
    return cls(**kwargs)


def _finite(value: Any) -> bool:
    """False when a float anywhere inside ``value`` (lists and dicts included) is NaN or infinite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` strings to a nested dict; values are parsed as YAML (``3``, ``[1, 2]``, ``true``)."""
    out = _deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set phase2.lr=0.1")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def read_yaml(path: str | Path, example: str) -> dict:
    """A YAML file's top-level mapping, or a ConfigError naming the file and the problem."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found; pass a YAML file such as {example}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    data = read_yaml(path, "configs/fashion_mnist.yaml") if path is not None else {}
    return from_dict(RunConfig, apply_overrides(data, overrides or []))


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
