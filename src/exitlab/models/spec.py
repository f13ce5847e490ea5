"""A model's description: how to build it again, one small frozen dataclass per adapter kind.

A model saved with its weights carries its description as the ``spec`` object of ``model.json``. :meth:`to_json`
writes the same keys as exitlab always has (so older versions still read new files), and :func:`spec_from_json`
reads every file exitlab has written, checking each field: a damaged one is a :class:`SpecError` naming it.

- :class:`BuiltinSpec`: a registered backbone (ResNets, VGG, MobileNetV2, ViT, MSDNet); no ``adapter`` key.
- :class:`ModuleSpec`: ``from_module`` (with a ``factory`` to build the module again, or without one).
- :class:`LibrarySpec`: a timm or torchvision model, by name.
- :class:`HFSpec`: a Hugging Face encoder, rebuilt from its saved configuration.
- :class:`CausalSpec`: a Hugging Face causal LM (decoder), rebuilt from its saved configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

CLASSIFICATION = "classification"


class SpecError(ValueError):
    """A field of a saved model description is missing or has the wrong type; the message names the field."""


@dataclass(frozen=True)
class BuiltinSpec:
    """A registered backbone (``exitlab ls backbones``) with ICs after the blocks in ``exits``."""

    backbone: str  # registered name
    num_classes: int
    exits: tuple[int, ...]  # block indices
    head: str  # head kind of the ICs
    in_chans: int = 3
    img_size: int = 32
    head_kwargs: dict = field(default_factory=dict)  # the head options given (not the backbone's own defaults)
    backbone_kwargs: dict = field(default_factory=dict)  # the backbone's own options (width, depth, ...)
    kind: ClassVar[str] = "builtin"
    task: ClassVar[str] = CLASSIFICATION
    rebuildable: ClassVar[bool] = True

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_chans, self.img_size, self.img_size)

    def to_json(self) -> dict:
        return {"backbone": self.backbone, "num_classes": self.num_classes, "in_chans": self.in_chans,
                "img_size": self.img_size, "exits": list(self.exits), "head": self.head,
                "head_kwargs": dict(self.head_kwargs), "backbone_kwargs": dict(self.backbone_kwargs)}


@dataclass(frozen=True)
class ModuleSpec:
    """A user module adapted by ``from_module``: exits after the named submodules. With ``factory``
    (``"package.module:function"``, called with ``factory_kwargs``) exitlab can build the module again."""

    exits: tuple[str, ...]  # submodule names
    num_classes: int
    input_shape: tuple[int, ...]  # one sample
    head: str
    head_kwargs: dict = field(default_factory=dict)
    factory: str | None = None
    factory_kwargs: dict = field(default_factory=dict)
    kind: ClassVar[str] = "module"
    task: ClassVar[str] = CLASSIFICATION

    @property
    def rebuildable(self) -> bool:
        return self.factory is not None

    def to_json(self) -> dict:
        return {"adapter": "module", "source": self.factory, "factory": self.factory,
                "factory_kwargs": dict(self.factory_kwargs), **_adapted_json(self)}


@dataclass(frozen=True)
class LibrarySpec:
    """A timm or torchvision model by name, built with ``kwargs``, exits after the named submodules."""

    library: str  # "timm" or "torchvision"
    name: str
    exits: tuple[str, ...]
    num_classes: int
    input_shape: tuple[int, ...]
    head: str
    head_kwargs: dict = field(default_factory=dict)
    kwargs: dict = field(default_factory=dict)
    task: ClassVar[str] = CLASSIFICATION
    rebuildable: ClassVar[bool] = True

    @property
    def kind(self) -> str:
        return self.library

    @property
    def source(self) -> str:
        return f"{self.library}:{self.name}"

    def to_json(self) -> dict:
        return {"adapter": self.library, "source": self.source, "factory": None, "factory_kwargs": dict(self.kwargs),
                **_adapted_json(self)}


@dataclass(frozen=True)
class HFSpec:
    """A Hugging Face encoder with ICs after the layers in ``exits``, rebuilt from its configuration ``config``."""

    config: dict  # the encoder's configuration (PretrainedConfig.to_dict())
    num_classes: int  # 1 for regression
    exits: tuple[int, ...]  # layer indices
    head: str = "text"  # "text" or "gpf"
    head_kwargs: dict = field(default_factory=dict)
    task: str = CLASSIFICATION  # or "regression"
    with_head: bool = True  # whether the encoder's own classifier is the final exit
    source: str | None = None  # the folder or cached name it came from, if any
    kind: ClassVar[str] = "hf"
    input_shape: ClassVar[None] = None  # token ids of any length
    rebuildable: ClassVar[bool] = True

    def to_json(self) -> dict:
        return {"adapter": "hf", "task": self.task, "config": dict(self.config), "with_head": self.with_head,
                "num_classes": self.num_classes, "exits": list(self.exits), "head": self.head,
                "head_kwargs": dict(self.head_kwargs), "source": self.source}


@dataclass(frozen=True)
class CausalSpec:
    """A Hugging Face causal LM with exits after the layers in ``exits``, rebuilt from its configuration."""

    config: dict  # the LM's configuration (PretrainedConfig.to_dict())
    num_classes: int  # the vocabulary size
    exits: tuple[int, ...]  # layer indices
    head: str = "shared"  # "shared" (LayerSkip) or "lm" (a norm and LM head per exit)
    init: str = "copy"  # how per-exit heads started: "copy" of the final ones or "random"
    source: str | None = None  # the folder it came from, if any
    head_kwargs: dict = field(default_factory=dict)
    kind: ClassVar[str] = "hf-causal"
    task: ClassVar[str] = "language-model"
    input_shape: ClassVar[None] = None  # token ids of any length
    rebuildable: ClassVar[bool] = True

    def to_json(self) -> dict:
        return {"adapter": "hf-causal", "config": dict(self.config), "num_classes": self.num_classes,
                "exits": list(self.exits), "head": self.head, "init": self.init, "source": self.source,
                "head_kwargs": dict(self.head_kwargs)}


ModelSpec = BuiltinSpec | ModuleSpec | LibrarySpec | HFSpec | CausalSpec


def _adapted_json(spec: ModuleSpec | LibrarySpec) -> dict:
    return {"exits": list(spec.exits), "num_classes": spec.num_classes, "input_shape": list(spec.input_shape),
            "head": spec.head, "head_kwargs": dict(spec.head_kwargs)}


# ---------------------------------------------------------------- reading a saved description, field by field

_MISSING = object()


class _Fields:
    """The fields of one saved description, each taken once and checked; leftovers are refused."""

    def __init__(self, raw: dict):
        self.raw, self.taken = raw, set()

    def get(self, key: str, check, what: str, default=_MISSING):
        self.taken.add(key)
        if key not in self.raw or (self.raw[key] is None and default is None):
            if default is _MISSING:
                raise SpecError(f"spec.{key} is missing")
            return default
        value = self.raw[key]
        if not check(value):
            raise SpecError(f"spec.{key} must be {what}, got {_show(value)}")
        return value

    def done(self) -> None:
        extra = sorted(set(self.raw) - self.taken)
        if extra:
            raise SpecError(f"spec.{extra[0]} is not a field of this model kind")


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _index(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _text(v) -> bool:
    return isinstance(v, str) and bool(v)


def _mapping(v) -> bool:
    return isinstance(v, dict)


def _list_of(ok):
    return lambda v: isinstance(v, list) and all(ok(e) for e in v)


def _read_builtin(f: _Fields) -> BuiltinSpec:
    return BuiltinSpec(backbone=f.get("backbone", _text, "a backbone name"),
                       num_classes=f.get("num_classes", _count, "a positive integer"),
                       exits=tuple(f.get("exits", _list_of(_index), "a list of block indices")),
                       head=f.get("head", _text, "a head kind"),
                       in_chans=f.get("in_chans", _count, "a positive integer", 3),
                       img_size=f.get("img_size", _count, "a positive integer", 32),
                       head_kwargs=dict(f.get("head_kwargs", _mapping, "an object", None) or {}),
                       backbone_kwargs=dict(f.get("backbone_kwargs", _mapping, "an object", None) or {}))


def _read_adapted(f: _Fields) -> dict:
    return {"exits": tuple(f.get("exits", _list_of(_text), "a list of submodule names")),
            "num_classes": f.get("num_classes", _count, "a positive integer"),
            "input_shape": tuple(f.get("input_shape", _list_of(_count), "a list of positive integers (C, H, W)")),
            "head": f.get("head", _text, "a head kind"),
            "head_kwargs": dict(f.get("head_kwargs", _mapping, "an object", None) or {})}


def _read_module(f: _Fields) -> ModuleSpec:
    factory = f.get("factory", lambda v: _text(v) and ":" in v, "'package.module:function'", None)
    source = f.get("source", _text, "'package.module:function'", None)
    if source is not None and factory is not None and source != factory:
        raise SpecError(f"spec.source {source!r} differs from spec.factory {factory!r}")
    return ModuleSpec(factory=factory or source, **_read_adapted(f),
                      factory_kwargs=dict(f.get("factory_kwargs", _mapping, "an object", None) or {}))


def _read_library(f: _Fields, library: str) -> LibrarySpec:
    source = f.get("source", lambda v: _text(v) and v.startswith(f"{library}:") and len(v) > len(library) + 1,
                   f"'{library}:NAME'")
    f.get("factory", lambda v: v is None, "null", None)
    return LibrarySpec(library=library, name=source.partition(":")[2], **_read_adapted(f),
                       kwargs=dict(f.get("factory_kwargs", _mapping, "an object", None) or {}))


def _read_hf(f: _Fields) -> HFSpec:
    return HFSpec(config=f.get("config", _mapping, "an object (the encoder's configuration)"),
                  num_classes=f.get("num_classes", _count, "a positive integer"),
                  exits=tuple(f.get("exits", _list_of(_index), "a list of layer indices")),
                  head=f.get("head", lambda v: v in ("text", "gpf"), "'text' or 'gpf'", "text"),
                  head_kwargs=dict(f.get("head_kwargs", _mapping, "an object", None) or {}),
                  task=f.get("task", lambda v: v in (CLASSIFICATION, "regression"), "'classification' or 'regression'",
                             CLASSIFICATION),
                  with_head=f.get("with_head", lambda v: isinstance(v, bool), "true or false", True),
                  source=f.get("source", _text, "a folder or model name", None))


def _read_causal(f: _Fields) -> CausalSpec:
    return CausalSpec(config=f.get("config", _mapping, "an object (the LM's configuration)"),
                      num_classes=f.get("num_classes", _count, "a positive integer"),
                      exits=tuple(f.get("exits", _list_of(_index), "a list of layer indices")),
                      head=f.get("head", lambda v: v in ("shared", "lm"), "'shared' or 'lm'", "shared"),
                      init=f.get("init", lambda v: v in ("copy", "random"), "'copy' or 'random'", "copy"),
                      source=f.get("source", _text, "a folder", None),
                      head_kwargs=dict(f.get("head_kwargs", _mapping, "an object", None) or {}))


def spec_from_json(raw) -> ModelSpec:
    """The description saved as ``raw`` (a ``to_json()`` dict, from this version or an older one). Raises
    :class:`SpecError` naming the first missing, mistyped or unknown field."""
    if not isinstance(raw, dict):
        raise SpecError(f"spec must be an object, got {_show(raw)}")
    f = _Fields(raw)
    adapter = f.get("adapter", lambda v: v in ("module", "timm", "torchvision", "hf", "hf-causal"),
                    "one of module, timm, torchvision, hf, hf-causal", None)
    if adapter is None:
        spec = _read_builtin(f)
    elif adapter == "module":
        spec = _read_module(f)
    elif adapter == "hf":
        spec = _read_hf(f)
    elif adapter == "hf-causal":
        spec = _read_causal(f)
    else:
        spec = _read_library(f, adapter)
    f.done()
    return spec
