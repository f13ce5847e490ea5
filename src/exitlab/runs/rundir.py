"""Run directories: the one owner of their layout.

A run directory holds ``config.yaml`` (the resolved config), ``env.json`` (versions and code identity),
``run.json`` (status, phases, where phase 1 came from), ``metrics.jsonl`` (one record per epoch),
``checkpoints/``, and once finished ``model.safetensors`` with ``model.json``; evaluation adds
``logits_<split>.safetensors`` (cached per-exit logits), ``eval.json`` and ``bench.json``. :class:`RunDir` is the only
code that spells these names; everything else asks it for the config, status, metrics, model, data or logits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..data import RunData, build_run_data
from ..errors import CheckpointError, ConfigError, DataError
from ..models.core import MultiExitModel, eval_mode
from .checkpoint import load
from .config import RunConfig, load_saved_config
from .files import atomic_write, read_jsonl, read_status
from .typed import to_dict
from .version import __version__

log = logging.getLogger("exitlab")


def code_identity() -> dict:
    """The git commit of the exitlab source tree and whether it has uncommitted changes (when it is a checkout)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(dirty) if commit else None}


def environment() -> dict:
    """Versions, platform, threads and the code identity: what a run records in env.json."""
    return {
        "exitlab": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "numpy": numpy.__version__, "platform": platform.platform(), "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(), "code": code_identity(),
    }


def signature(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files, oldest first (names sort by phase index, then epoch, with phase ends last)."""
    d = directory / "checkpoints"
    return sorted(d.glob("*.safetensors")) if d.is_dir() else []


def remove_partial_writes(directory: Path) -> list[Path]:
    """Delete temporary files left by writes that a crash interrupted (``.<name>.tmp-<pid>``)."""
    gone = []
    for d in (directory, directory / "checkpoints"):
        for p in d.glob(".*.tmp-*") if d.is_dir() else []:
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def newest_valid(directory: Path, loader) -> tuple[Path, object] | None:
    """Load the newest checkpoint that verifies, falling back past corrupt ones (and saying so)."""
    for path in reversed(checkpoints(directory)):
        try:
            return path, loader(path)
        except CheckpointError as e:
            log.warning("%s; falling back to the previous checkpoint", e)
    return None


SPLITS = ("train", "val", "test")
MEMORY = "memory"  # run.json's data_source when the data was passed to exitlab.train as an object


class RunDir:
    """One run directory: its file names, and the config, status, metrics, model, data and logits cache in it.

    The model and the data are built once per object and kept. ``data`` may be given (the data source a run was
    trained on, when it was passed in memory and cannot be rebuilt from the config)."""

    CONFIG, STATUS, ENV, METRICS = "config.yaml", "run.json", "env.json", "metrics.jsonl"
    MODEL, MODEL_INFO, CHECKPOINTS, GRADIENTS = "model.safetensors", "model.json", "checkpoints", "gradients.jsonl"
    EVAL, BENCH, ZTW = "eval.json", "bench.json", "ztw.safetensors"
    TOKENIZER = "tokenizer"  # text runs: the tokenizer that made the ids (save_pretrained folder)

    def __init__(self, path: str | Path, *, data: RunData | None = None, module=None):
        self.path = Path(path)
        self._data, self._model, self._module = data, None, module

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------ what is in it
    def require_model(self) -> RunDir:
        """This run, or a CheckpointError when it holds no trained model."""
        if not self.path.is_dir():
            raise CheckpointError(f"run directory {self.path} does not exist; pass a directory written by `exitlab "
                                  "train`")
        if not (self / self.MODEL).is_file() or not (self / self.MODEL_INFO).is_file():
            raise CheckpointError(f"{self.path} holds no trained model (model.safetensors / model.json missing); "
                                  f"finish the run with `exitlab train CONFIG --out {self.path} --resume`, or point "
                                  "at a finished run")
        return self

    def status(self) -> dict:
        return read_status(self.path)

    def config(self) -> RunConfig:
        """The run's resolved config (one written by an older exitlab is read in today's layout)."""
        if not (self / self.CONFIG).is_file():
            raise CheckpointError(f"{self.path} has no config.yaml, so its data and split are unknown; pass a "
                                  "directory written by `exitlab train`")
        return load_saved_config(self / self.CONFIG)

    def metrics(self) -> list[dict]:
        return read_jsonl(self / self.METRICS)

    def model(self) -> MultiExitModel:
        """The trained model, on the CPU, in eval mode."""
        if self._model is None:
            self.require_model()
            self._model = load(self.path, module=self._module).eval()
        return self._model

    def model_digest(self) -> str:
        """The checksum stored in ``model.safetensors`` (changes whenever the weights do)."""
        path = self / self.MODEL
        try:
            with safe_open(str(path), framework="pt") as f:
                return (f.metadata() or {}).get("sha256", "")
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path} is unreadable ({e}); retrain or restore the run") from None

    def data(self) -> RunData:
        """The run's data, rebuilt from its config on the CPU (the same seeded split as in training; text with the
        run's own saved tokenizer)."""
        if self._data is None:
            if self.status().get("data_source") == MEMORY:
                raise DataError(f"{self.path} was trained on data passed in memory, which its directory cannot "
                                "rebuild; evaluate it from Python, passing the data: RunDir(path, data=...)")
            cfg = self.config()
            d = cfg.data
            if (self / self.TOKENIZER).is_dir():
                d = dataclasses.replace(d, text=dataclasses.replace(d.text, tokenizer=str(self / self.TOKENIZER)))
            self._data = build_run_data(d, cfg.seed_split, torch.device("cpu"))
        return self._data

    def save_tokenizer(self, tokenizer) -> None:
        """Keep a text run's tokenizer beside its model (once: a resumed run keeps the first)."""
        dest = self / self.TOKENIZER
        if dest.is_dir():
            return
        tmp = self / f".{self.TOKENIZER}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, dest)

    def tokenizer(self):
        """A text run's tokenizer (``transformers.AutoTokenizer`` from the saved folder)."""
        if not (self / self.TOKENIZER).is_dir():
            raise CheckpointError(f"{self.path} holds no tokenizer (only runs trained from a config save one); use "
                                  "the tokenizer you trained it with")
        from transformers import AutoTokenizer  # the nlp extra: only text runs get here

        return AutoTokenizer.from_pretrained(str(self / self.TOKENIZER))

    def loader(self, split: str):
        """An in-order, unaugmented loader over one split."""
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        loader = self.data().split(split)
        if loader.num_samples == 0:
            raise DataError(f"the {split} split is empty; check data.val_fraction / the dataset, or pick another "
                            "--split")
        return loader.unaugmented(self.data().val.batch_size)

    def lengths(self, split: str) -> torch.Tensor:
        """Text runs: every sample's token count on ``split`` ``[N]``, in the order of the logits cache."""
        x = getattr(self.data().split(split), "x", None)
        if x is None or x.ndim != 3:
            raise ConfigError(f"{self.path} is not a text run: its samples have no token lengths")
        return x[:, 1].sum(1).cpu()

    # ------------------------------------------------------------ the logits cache
    def logits(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-exit logits ``[E, N, C]`` and labels ``[N]`` on ``split``: from ``logits_<split>.safetensors`` when it
        matches the current model and data settings, otherwise computed (one pass of the model) and cached."""
        self.require_model()
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
        tag = {"model_sha256": self.model_digest(), "data": self._data_signature(), "split": split}
        path = self / f"logits_{split}.safetensors"
        cached = _read_cache(path, tag)
        if cached is not None:
            return cached
        logits, labels = compute_logits(self.model(), self.loader(split))
        atomic_write(path, lambda p: save_file({"logits": logits.contiguous(), "labels": labels.contiguous()},
                                               str(p), metadata=tag))
        return logits, labels

    def _data_signature(self) -> str:
        if self._data is not None and self.status().get("data_source") == MEMORY:
            return MEMORY
        cfg = self.config()
        data = to_dict(cfg.data)
        data.pop("eval_batch_size", None)
        data.pop("batch_size", None)
        data.pop("workers", None)
        return signature({"data": data, "seed": cfg.seed_split})


def _read_cache(path: Path, tag: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if all(meta.get(k) == v for k, v in tag.items()):
            t = load_file(str(path))
            return t["logits"], t["labels"]
        log.info("%s is stale (model or data changed); recomputing", path.name)
    except (SafetensorError, OSError, KeyError):
        log.warning("%s is unreadable; recomputing", path)
    return None


@torch.no_grad()
def compute_logits(model: MultiExitModel, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Every exit's logits over a loader, in eval mode: ``[E, N, C]`` float32 and labels ``[N]``."""
    outs, labels = [], []
    with eval_mode(model):
        for x, y in loader:
            outs.append(torch.stack(model(x)).float().cpu())  # [E, B, C]
            labels.append(y.cpu())
    if not outs:
        raise DataError("the split is empty: no samples to evaluate")
    return torch.cat(outs, 1), torch.cat(labels)
