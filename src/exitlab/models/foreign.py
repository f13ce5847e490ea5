"""Models from elsewhere: a factory by import path, timm and torchvision models, with exits on their stages.

Each builder records in the model's ``spec`` how to build it again (an import path or a timm/torchvision name,
with keyword arguments), so a run can be reloaded without pickle. timm and torchvision are optional extras,
imported only here, when asked for.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .adapter import HookedBackbone, from_module
from .core import MultiExitModel
from .placement import nearest_distinct

STAGE_LISTS = ("layers", "blocks", "stages", "features", "encoder.layers", "encoder.layer", "layer")  # in this order
RESNET_STAGES = ("layer1", "layer2", "layer3", "layer4")


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
    """The natural exit points of a network: its stage or block list (the children of the first of
    ``layers``, ``blocks``, ``stages``, ``features``, ``encoder.layers`` it has), or ResNet-style ``layer1..4``."""
    names = dict(module.named_modules())
    if all(n in names for n in RESNET_STAGES):
        return list(RESNET_STAGES)
    for prefix in STAGE_LISTS:
        seq = names.get(prefix)
        if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq) > 1:
            return [f"{prefix}.{k}" for k, _ in seq.named_children()]
    raise ConfigError(f"{type(module).__name__} has no stage list exitlab recognises ({', '.join(STAGE_LISTS)}); "
                      "name the modules to exit after, e.g. exits=['features.3', 'features.6']")


def choose_taps(module: nn.Module, exits, input_shape: tuple[int, ...], num_classes: int) -> list[str]:
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


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a local state dict (safetensors, or a torch file read with ``weights_only=True``) into ``module``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"model.pretrained {p} not found; give a local .safetensors or .pth file of the weights")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p))
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for unreadable files
            raise ConfigError(f"model.pretrained {p} is not a readable weights file ({type(e).__name__})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        module.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ConfigError(f"model.pretrained {p} does not fit this model ({str(e).splitlines()[0]})") from None


def _import(extra: str, module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{extra} models need the {extra} package; install it with pip install 'exitlab[{extra}]'"
                          ) from None


def build_timm(name: str, num_classes: int, kwargs: dict, pretrained) -> tuple[nn.Module, tuple[int, ...]]:
    """A timm model with ``num_classes`` outputs, and its default input shape."""
    timm = _import("timm", "timm")
    if name not in timm.list_models():
        close = timm.list_models(f"*{re.sub(r'[^a-z0-9]', '', name.lower())[:6]}*")[:5]
        raise ConfigError(f"timm has no model {name!r}" + (f"; close names: {', '.join(close)}" if close else ""))
    model = timm.create_model(name, num_classes=num_classes, pretrained=pretrained is True, **kwargs)
    if isinstance(pretrained, str):
        load_weights(model, pretrained)
    shape = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
    return model, shape


def build_torchvision(name: str, num_classes: int, kwargs: dict, pretrained) -> tuple[nn.Module, tuple[int, ...]]:
    """A torchvision model with ``num_classes`` outputs (weights from a local file only), and its input shape."""
    models = _import("torchvision", "torchvision.models")
    if name not in models.list_models():
        raise ConfigError(f"torchvision has no model {name!r}; see torchvision.models.list_models()")
    model = models.get_model(name, num_classes=num_classes, weights=None, **kwargs)
    if pretrained is True:
        raise ConfigError("model.pretrained: true downloads torchvision weights; give a local file path instead")
    if isinstance(pretrained, str):
        load_weights(model, pretrained)
    return model, (3, 299, 299) if name == "inception_v3" else (3, 224, 224)


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
            load_weights(module, pretrained)
    shape = tuple(input_shape or shape or ())
    if not shape:
        raise ConfigError(f"{source}: give the input shape of one sample, e.g. input_shape=(3, 32, 32)")
    taps = choose_taps(module, exits, shape, num_classes)
    model = from_module(module, taps, num_classes=num_classes, input_shape=shape, head=head, head_kwargs=head_kwargs)
    model.spec.update(adapter=kind if kind in ("timm", "torchvision") else "module", source=source,
                      factory=source if kind not in ("timm", "torchvision") else None, factory_kwargs=kwargs)
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
