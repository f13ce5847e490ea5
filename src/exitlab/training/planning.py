"""Pre-flight: every check of a run that needs no data, made before any data is read or any work starts.

:func:`preflight` resolves the device (once: the run trains on the device it returns), checks the data options
that can be checked without reading the data, builds the model on the side (on the CPU) and runs it forward and
backward on a tiny batch, so bad names, head and backbone options and exit placements fail at once. Then it plans
the phases with their per-exit loss weights, so a weight list of the wrong length or a regime that needs ICs where
there are none fails before phase 1 trains.
"""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.catalog import is_text_data
from ..errors import ConfigError, ExitlabError
from ..models import MultiExitModel, build_model
from ..models.hf import build_hf, check_hf_source
from ..models.layerdrop import skippable_blocks
from ..runs.config import ModelConfig, RunConfig
from ..runs.typed import from_dict, to_dict
from .phases import Phase, plan_phases


def resolve_device(name: str) -> torch.device:
    """The torch device for a config's ``device`` (auto: CUDA when available), or a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r} requested but CUDA is not available; use device=cpu or auto")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device: {name!r} does not exist; this machine has CUDA devices "
                              f"0..{torch.cuda.device_count() - 1}")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError("device: 'mps' requested but Apple's MPS backend is not available; use device=cpu or auto")
    return torch.device(name)


def input_shape(cfg: RunConfig) -> tuple[int, int, int]:
    """The image shape a dataset yields, known without reading it (text: 3 rows of 8 tokens, for the check)."""
    d = cfg.data
    if is_text_data(d.name):
        return (3, 8, 8)
    if d.name in ("fashion_mnist", "mnist"):
        return (1, 28, 28)
    if d.name == "synthetic":
        size = d.synthetic.get("size", 16)
        return (d.synthetic.get("channels", 3), size, size)
    return (3, 32, 32) if d.name.startswith("cifar") else (3, d.img_size, d.img_size)


def check_data_options(cfg: RunConfig) -> None:
    """Data settings that can be checked without reading the data: a given ``data.root`` must exist."""
    root = cfg.data.root
    if cfg.data.name == "imagefolder" and not root:
        raise ConfigError("data.root: an image folder needs data.root, the folder holding train/ and val/")
    if cfg.data.name == "webdataset" and not root:
        raise ConfigError("data.root: WebDataset shards need data.root, the folder holding train/ and val/ (or test/) "
                          "with the .tar shards")
    if root and not Path(root).expanduser().is_dir():
        raise ConfigError(f"data.root {root} does not exist or is not a directory; point it at the folder holding "
                          f"the {cfg.data.name} files, or unset it to use the default locations")


def _model_facts(cfg: RunConfig) -> tuple[int, int]:
    """The number of exits and of skippable blocks (layer dropout) of the model ``cfg.model`` describes."""
    m = cfg.model
    text = is_text_data(cfg.data.name)
    if text != m.backbone.startswith("hf:"):
        raise ConfigError(f"model.backbone {m.backbone!r} with data.name {cfg.data.name!r}: text data needs a text "
                          "encoder (model.backbone hf:...) and an encoder needs text data (data.name text or "
                          "spam_assassin)")
    if text:
        check_hf_source(m.backbone, m.pretrained)
    if text and m.pretrained and cfg.data.text.tokenizer == "wordpiece":
        raise ConfigError("data.text.tokenizer: a pretrained encoder needs the tokenizer it was trained with, not a "
                          "new wordpiece one; set data.text.tokenizer to the model's folder or name")
    task = cfg.data.text.task if text else "classification"
    return _check_model(json.dumps({"model": to_dict(m), "shape": input_shape(cfg), "task": task}, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _check_model(key: str) -> tuple[int, int]:
    spec = json.loads(key)
    m, (c, h, _) = spec["model"], spec["shape"]
    with warnings.catch_warnings():  # e.g. "Initializing zero-element tensors": the error below says it better
        warnings.simplefilter("ignore")
        if m["backbone"].startswith("hf:"):
            return _build_and_run_text(m, spec["task"])
        return _build_and_run(m, c, h)


def model_from_config(m: ModelConfig, num_classes: int, shape: tuple[int, ...], *, task: str = "classification",
                      vocab_size: int | None = None) -> MultiExitModel:
    """The multi-exit model a config's ``model`` section describes, for inputs of ``shape`` (C, H, W); a text
    encoder (``hf:...``) is built for ``task`` with a vocabulary of ``vocab_size`` (the tokenizer's) when new."""
    if m.backbone.startswith("hf:"):
        return build_hf(m.backbone, num_labels=num_classes, exits=m.exits, head=m.head, head_kwargs=m.head_kwargs,
                        backbone_kwargs=m.backbone_kwargs, pretrained=m.pretrained, task=task, vocab_size=vocab_size)
    return build_model(m.backbone, num_classes=num_classes, in_chans=shape[0], img_size=shape[1], exits=m.exits,
                       head=m.head, head_kwargs=m.head_kwargs, backbone_kwargs=m.backbone_kwargs, factory=m.factory,
                       pretrained=m.pretrained)


def _build_and_run_text(m: dict, task: str) -> tuple[int, int]:
    """The encoder from its configuration only (no weights are read here), on two texts of 8 tokens."""
    model = model_from_config(from_dict(ModelConfig, {**m, "pretrained": False}, "model."),
                              1 if task == "regression" else 3, (3, 8), task=task, vocab_size=64)
    try:
        outs = model(torch.stack([torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long),
                                  torch.zeros(2, 8, dtype=torch.long)], 1))
        torch.stack([o.float().sum() for o in outs]).sum().backward()
    except (TypeError, ValueError, RuntimeError, IndexError) as e:
        raise ConfigError(f"model: {m['backbone']!r} fails on a batch of two 8-token texts ({_short(e)}); check "
                          "model.backbone_kwargs and model.head_kwargs") from None
    return model.num_exits, len(skippable_blocks(model.backbone))


def _build_and_run(m: dict, c: int, h: int) -> tuple[int, int]:
    try:
        model = model_from_config(from_dict(ModelConfig, m, "model."), 10, (c, h, h))
    except ExitlabError:
        raise
    except (TypeError, ValueError, RuntimeError, ZeroDivisionError) as e:
        raise ConfigError(f"model: cannot build {m['backbone']!r} with these settings ({_short(e)}); check "
                          "model.backbone_kwargs") from None
    try:
        outs = model(torch.zeros(2, c, h, h))
        torch.stack([o.float().sum() for o in outs]).sum().backward()
    except (TypeError, ValueError, RuntimeError, IndexError, ZeroDivisionError) as e:
        raise ConfigError(f"model: {m['backbone']!r} with head {model.head_name!r} fails on a {c}x{h}x{h} input "
                          f"({_short(e)}); check model.head_kwargs, model.backbone_kwargs and data.img_size") from None
    return model.num_exits, len(skippable_blocks(model.backbone))


def _short(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


@dataclass(frozen=True)
class Plan:
    """What :func:`preflight` found: the phases, planned with their per-exit loss weights, and the device."""

    phases: list[Phase]
    device: torch.device


def preflight(cfg: RunConfig, model: MultiExitModel | None = None) -> Plan:
    """Run every check that needs no data; returns the plan the run follows (the phases and the device).
    With ``model`` (a model passed in, not built from ``cfg.model``) its exits are planned for instead."""
    device = resolve_device(cfg.device)
    check_data_options(cfg)
    exits, skippable = _model_facts(cfg) if model is None else (model.num_exits, len(skippable_blocks(model.backbone)))
    regression = (model.task if model is not None else cfg.data.text.task) == "regression"
    for key in ("phase1", "phase2", "phase3") if regression else ():
        p = getattr(cfg, key)
        for opt in ("distill", "label_smoothing"):
            if getattr(p, opt):
                raise ConfigError(f"{key}.{opt}: a regression model has one output and no class distribution to "
                                  f"{'distil' if opt == 'distill' else 'smooth'}; set {key}.{opt}=0")
    phases = plan_phases(cfg, exits)
    for p in phases:
        if p.options.layerskip.rate and not skippable:
            raise ConfigError(f"{p.name}.layerskip.rate is set, but this backbone has no block that can be skipped "
                              "(no residual block with an identity shortcut: VGG and adapted models have none); drop "
                              "layerskip.rate, or use a ResNet, WRN, MobileNetV2, ViT or Hugging Face encoder")
    return Plan(phases, device)
