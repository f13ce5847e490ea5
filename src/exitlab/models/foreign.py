"""Models from elsewhere: a factory by import path, timm and torchvision models, with exits on their stages.

Each builder records in the model's ``spec`` how to build it again (an import path or a timm/torchvision name,
with keyword arguments), so a run can be reloaded without pickle. timm and torchvision are optional extras,
imported only here, when asked for.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .adapter import HookedBackbone, from_module
from .core import MultiExitModel
from .placement import nearest_distinct
from .spec import LibrarySpec

log = logging.getLogger("exitlab")
STAGE_LISTS = ("layers", "blocks", "stages", "features", "encoder.layers", "encoder.layer", "layer")  # in this order
NAMED_STAGES = (  # stages a model names one by one, in call order
    ("layer1", "layer2", "layer3", "layer4"),  # ResNet, ResNeXt, Wide ResNet
    tuple(f"trunk_output.block{i}" for i in range(1, 5)),  # torchvision RegNet
    ("stage2", "stage3", "stage4", "conv5"),  # torchvision ShuffleNetV2
)


def resolve_factory(path: str) -> Callable[..., nn.Module]:
    """``"package.module:function"`` -> the function, or a ConfigError naming what failed."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"model.factory {path!r}: expected 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"model.factory {path!r}: cannot import {module_name!r} ({e}); install it or fix the "
                          "path (the module must be importable, e.g. on PYTHONPATH)") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ConfigError(f"model.factory {path!r}: {module_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise ConfigError(f"model.factory {path!r} is not callable")
    return fn


def call_factory(path: str, kwargs: dict) -> nn.Module:
    """Build a module with the factory at ``path``; it must return an ``nn.Module``."""
    try:
        module = resolve_factory(path)(**kwargs)
    except TypeError as e:
        raise ConfigError(f"model.factory {path!r} with {kwargs}: {e}") from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"model.factory {path!r} returned a {type(module).__name__}, not a torch.nn.Module")
    return module


def tap_candidates(module: nn.Module) -> list[str]:
    """The natural exit points of a network, in call order: the modules timm's ``feature_info`` names, else its
    stage or block list (the children of the first of ``layers``, ``blocks``, ``stages``, ``features``,
    ``encoder.layers`` it has), or stages named one by one (ResNet's ``layer1..4``, RegNet, ShuffleNetV2)."""
    names = dict(module.named_modules())
    listed = feature_modules(module, names)
    if len(listed) > 1:
        return listed
    for stages in NAMED_STAGES:
        if all(n in names for n in stages):
            return list(stages)
    for prefix in STAGE_LISTS:
        seq = names.get(prefix)
        if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq) > 1:
            return [f"{prefix}.{k}" for k, _ in seq.named_children()]
    raise ConfigError(f"{type(module).__name__} has no stage list exitlab recognises ({', '.join(STAGE_LISTS)}); "
                      "name the modules to exit after, e.g. exits=['features.3', 'features.6']")


def feature_modules(module: nn.Module, names: dict[str, nn.Module]) -> list[str]:
    """The module names of timm's ``feature_info`` (a list of ``{module, num_chs, reduction}``), when every one
    of them is a submodule; else ``[]``."""
    info = getattr(module, "feature_info", None)
    if not isinstance(info, list) or not all(isinstance(d, dict) and "module" in d for d in info):
        return []
    listed = [d["module"] for d in info]
    return listed if all(n in names for n in listed) else []


def choose_taps(module: nn.Module, exits, input_shape: tuple[int, ...], num_classes: int | None) -> list[str]:
    """Exit module names from ``exits``: names, indices into :func:`tap_candidates` (the last candidate feeds the
    final exit and takes no IC), ``"every:K"`` or ``"flops:N"`` (spread evenly by measured FLOPs)."""
    if isinstance(exits, (list, tuple)) and all(isinstance(e, str) for e in exits):
        return list(exits)
    places = tap_candidates(module)[:-1]
    if isinstance(exits, (list, tuple)):
        bad = [e for e in exits if not isinstance(e, int) or not 0 <= e < len(places)]
        if bad or list(exits) != sorted(set(exits)):
            raise ConfigError(f"model.exits {list(exits)}: give sorted, unique indices in 0..{len(places) - 1} into "
                              f"this model's stages {places}, or module names")
        return [places[i] for i in exits]
    kind, _, arg = str(exits).partition(":")
    if kind not in ("every", "flops") or not arg.isdigit() or int(arg) < 1:
        raise ConfigError(f"model.exits {exits!r}: use module names, stage indices, 'every:K' or 'flops:N'")
    k = int(arg)
    if kind == "every":
        picks = places[k - 1 :: k]
        if not picks:
            raise ConfigError(f"model.exits {exits!r} places no IC: this model has {len(places)} places "
                              f"({places}); use every:K with K <= {len(places)}")
        return picks
    if k > len(places):
        raise ConfigError(f"model.exits {exits!r} asks for {k} ICs, but this model has only {len(places)} places "
                          f"for them ({places})")
    cum = torch.tensor(HookedBackbone(module, places + tap_candidates(module)[-1:], num_classes,
                                      input_shape).tap_flops(), dtype=torch.float64)
    targets = cum[-1] * torch.arange(1, k + 1, dtype=torch.float64) / (k + 1)
    return [places[i] for i in nearest_distinct(cum[:-1], targets)]


def load_weights(module: nn.Module, path: str | Path, num_classes: int) -> None:
    """Load a local state dict (safetensors, or a torch file read with ``weights_only=True``) into ``module``.

    Every tensor must fit by name and shape, except the classifier's: weights trained for another number of
    classes load into everything else, and the classifier keeps its fresh initialisation."""
    p = Path(path).expanduser()
    state = read_state(p)
    own = module.state_dict()
    head = classifier_name(module, num_classes)
    in_head = (lambda k: k.startswith(f"{head}.")) if head else (lambda k: False)
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not in_head(k)]
    resized = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    resized_body = [k for k in resized if not in_head(k)]
    bad = missing + resized_body + unexpected
    if bad:
        raise ConfigError(f"model.pretrained {p} does not fit this {type(module).__name__}: {len(missing)} of its "
                          f"tensors missing, {len(resized_body)} of another shape, {len(unexpected)} unknown (e.g. "
                          f"{bad[0]!r}); give weights of the same architecture")
    kept = [k for k in own if in_head(k) and (k in resized or k not in state)]
    if kept:
        log.info("model.pretrained: the classifier %r keeps its fresh weights (%s)", head, ", ".join(kept))
    module.load_state_dict({k: v for k, v in state.items() if k not in resized}, strict=False)


def read_state(p: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a torch file (``weights_only``; a ``state_dict`` entry unwrapped)."""
    if not p.is_file():
        raise ConfigError(f"model.pretrained {p} not found; give a local .safetensors or .pth file of the weights")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p))
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch raise several types for unreadable files
        raise ConfigError(f"model.pretrained {p} is not a readable weights file ({type(e).__name__})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.pretrained {p} holds no state dict (a mapping of names to tensors)")
    return state


def classifier_name(module: nn.Module, num_classes: int) -> str | None:
    """The classifier's module name: timm's ``get_classifier()``, else the last Linear with ``num_classes`` outputs
    (torchvision's ``fc``, ``classifier.N``, ``heads.head``)."""
    get = getattr(module, "get_classifier", None)
    target = get() if callable(get) else None
    found = None
    for name, m in module.named_modules():
        if m is target or (target is None and isinstance(m, nn.Linear) and m.out_features == num_classes):
            found = name
    return found or None


def _import(extra: str, module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{extra} models need the {extra} package; install it with pip install 'exitlab[{extra}]'"
                          ) from None


def build_timm(name: str, num_classes: int, kwargs: dict, pretrained) -> tuple[nn.Module, tuple[int, ...]]:
    """A timm model with ``num_classes`` outputs, and its input shape (``in_chans``/``img_size`` when given)."""
    timm = _import("timm", "timm")
    if not timm.is_model(name):
        raise ConfigError(f"timm has no model {name!r}{close_names(name, timm.list_models())}; see timm.list_models()")
    try:
        model = timm.create_model(name, num_classes=num_classes, pretrained=pretrained is True, **kwargs)
    except TypeError as e:
        raise ConfigError(f"timm model {name!r} with {kwargs}: {e}") from None
    except OSError as e:  # pretrained=True and the weights are neither in timm's cache nor reachable
        raise ConfigError(f"timm model {name!r}: cannot load its pretrained weights ({type(e).__name__}); offline, "
                          "give a local weights file: pretrained=/path/to/weights.safetensors") from None
    if isinstance(pretrained, str):
        load_weights(model, pretrained, num_classes)
    cfg = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
    return model, sized(cfg, kwargs.get("in_chans"), kwargs.get("img_size"))


def build_torchvision(name: str, num_classes: int, kwargs: dict, pretrained) -> tuple[nn.Module, tuple[int, ...]]:
    """A torchvision model with ``num_classes`` outputs (weights from a local file only), and its input shape
    (``image_size`` when given)."""
    models = _import("torchvision", "torchvision.models")
    if name not in models.list_models():
        raise ConfigError(f"torchvision has no model {name!r}{close_names(name, models.list_models())}; see "
                          "torchvision.models.list_models()")
    if pretrained is True:
        raise ConfigError("model.pretrained: true downloads torchvision weights; give a local file path instead")
    try:
        model = models.get_model(name, num_classes=num_classes, weights=None, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"torchvision model {name!r} with {kwargs}: {e}") from None
    if isinstance(pretrained, str):
        load_weights(model, pretrained, num_classes)
    return model, sized((3, 299, 299) if name == "inception_v3" else (3, 224, 224), None, kwargs.get("image_size"))


def close_names(name: str, names: list[str]) -> str:
    """``"; close names: a, b"`` for the registered names nearest ``name``, or ``""``."""
    close = difflib.get_close_matches(name, names, n=4, cutoff=0.6)
    return f"; close names: {', '.join(close)}" if close else ""


def sized(shape: tuple[int, ...], chans, size) -> tuple[int, ...]:
    """``shape`` (C, H, W) with the channels and image size a model was built with, where given."""
    c, h, w = shape
    if isinstance(size, int):
        h = w = size
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        h, w = size
    return (chans or c, h, w)


def build_foreign(source: str, *, num_classes: int, exits, head: str = "pooled", head_kwargs: dict | None = None,
                  kwargs: dict | None = None, input_shape: tuple[int, ...] | None = None, pretrained=False
                  ) -> MultiExitModel:
    """``source``: ``"timm:NAME"``, ``"torchvision:NAME"`` or a factory ``"package.module:function"``."""
    kwargs = dict(kwargs or {})
    kind, _, name = source.partition(":")
    if kind == "timm":
        module, shape = build_timm(name, num_classes, kwargs, pretrained)
    elif kind == "torchvision":
        module, shape = build_torchvision(name, num_classes, kwargs, pretrained)
    else:
        module, shape = call_factory(source, kwargs), None
        if isinstance(pretrained, str):
            load_weights(module, pretrained, num_classes)
    # a user factory's network has as many classes as its output; the engine checks that against the data
    classes = num_classes if kind in ("timm", "torchvision") else None
    shape = tuple(input_shape or shape or ())
    if not shape:
        raise ConfigError(f"{source}: give the input shape of one sample, e.g. input_shape=(3, 32, 32)")
    try:
        taps = choose_taps(module, exits, shape, classes)
        model = from_module(module, taps, num_classes=classes, input_shape=shape, head=head,
                            head_kwargs=head_kwargs)
    except (RuntimeError, AssertionError, ValueError) as e:  # the model's own forward refused the dry run
        first = (str(e).splitlines() or [""])[0]
        raise ConfigError(f"{source}: a dry run on one sample of shape {list(shape)} failed ({type(e).__name__}: "
                          f"{first}); give the input shape the model was built for, or build it for yours (timm: "
                          "img_size=..., torchvision ViTs: image_size=...)") from None
    adapted = model.spec
    if kind in ("timm", "torchvision"):
        model.spec = LibrarySpec(library=kind, name=name, exits=adapted.exits, num_classes=num_classes,
                                 input_shape=adapted.input_shape, head=head, head_kwargs=adapted.head_kwargs,
                                 kwargs=kwargs)
    else:
        model.spec = dataclasses.replace(adapted, factory=source, factory_kwargs=kwargs)
    return model


def from_timm(name: str, *, num_classes: int, exits="every:1", head: str = "pooled", head_kwargs: dict | None = None,
              input_shape: tuple[int, ...] | None = None, pretrained=False, **kwargs) -> MultiExitModel:
    """A timm model with exits on its stages or blocks (by name, index, ``every:K`` or ``flops:N``).

    ``pretrained``: False, True (timm's own loading, from its cache when offline), or a local weights file."""
    return build_foreign(f"timm:{name}", num_classes=num_classes, exits=exits, head=head, head_kwargs=head_kwargs,
                         kwargs=kwargs, input_shape=input_shape, pretrained=pretrained)


def from_torchvision(name: str, *, num_classes: int, exits="every:1", head: str = "pooled",
                     head_kwargs: dict | None = None, input_shape: tuple[int, ...] | None = None, pretrained=False,
                     **kwargs) -> MultiExitModel:
    """A torchvision model with exits on its stages (``layer1..4``, ``features.*``, ``encoder.layers.*``).

    ``pretrained``: False, or a local weights file (torchvision's own download is not used)."""
    return build_foreign(f"torchvision:{name}", num_classes=num_classes, exits=exits, head=head,
                         head_kwargs=head_kwargs, kwargs=kwargs, input_shape=input_shape, pretrained=pretrained)
