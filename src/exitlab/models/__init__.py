"""Backbones, heads and the multi-exit model."""

from __future__ import annotations

import functools
from collections.abc import Callable

from ..errors import ConfigError
from ..registry import Registry
from .adapter import HookedBackbone, from_module
from .causal import from_hf_causal, model_from_causal_spec
from .contract import BlocksBackbone, ExitPoint
from .core import MultiExitModel
from .foreign import build_foreign, from_timm, from_torchvision, tap_candidates
from .heads import HEADS, build_head
from .hf import from_hf, model_from_hf_spec
from .msdnet import MSDNet, MSDNetHead
from .placement import resolve_exits
from .resnet import WideResNet, cifar_resnet, imagenet_style_resnet
from .spec import BuiltinSpec, CausalSpec, HFSpec, LibrarySpec, ModelSpec, ModuleSpec, SpecError, spec_from_json
from .vgg_mobilenet import VGG, MobileNetV2
from .vit import ViT

BACKBONES: Registry[Callable[..., BlocksBackbone]] = Registry("backbone")

for _d in (8, 20, 32, 56, 110):
    BACKBONES.register(f"resnet{_d}", functools.partial(cifar_resnet, _d))
for _d in (18, 34, 50):
    BACKBONES.register(f"resnet{_d}_cifar", functools.partial(imagenet_style_resnet, _d))
BACKBONES.register("wrn28", functools.partial(WideResNet, 28))
BACKBONES.register("vgg16_bn", VGG)
BACKBONES.register("mobilenetv2", MobileNetV2)
BACKBONES.register("vit_tiny", functools.partial(ViT, dim=192, depth=12, heads=3))
BACKBONES.register("vit_small", functools.partial(ViT, dim=384, depth=12, heads=6))
BACKBONES.register("vit", ViT)  # fully configurable: dim, depth, heads, patch_size
BACKBONES.register("msdnet", MSDNet)  # CIFAR configuration by default; blocks, base, step, channels, growth, ...
HEADS.register("msdnet", MSDNetHead)

_SIZED = {"vit", "vit_tiny", "vit_small"}  # builders that need the image size


def build_backbone(name: str, *, num_classes: int, in_chans: int = 3, img_size: int = 32, **kwargs) -> BlocksBackbone:
    """Build a registered backbone by name. ``kwargs`` are the backbone's own options (``width``, ``k``, ...)."""
    builder = BACKBONES.get(name)
    if name in _SIZED:
        kwargs["img_size"] = img_size
    try:
        return builder(num_classes=num_classes, in_chans=in_chans, **kwargs)
    except TypeError as e:
        raise ConfigError(f"model.backbone_kwargs: {e}; check the options of backbone {name!r}") from None
    except ValueError as e:
        raise ConfigError(f"model.backbone_kwargs: {e}") from None


def build_model(backbone: str, *, num_classes: int, in_chans: int = 3, img_size: int = 32, exits="every:1",
                head: str | None = None, head_kwargs: dict | None = None, backbone_kwargs: dict | None = None,
                factory: str | None = None, pretrained: bool | str = False) -> MultiExitModel:
    """Build a backbone and attach ICs. ``backbone``: a registered name, ``"timm:NAME"`` or ``"torchvision:NAME"``;
    or ``factory="package.module:function"`` (called with ``backbone_kwargs``). ``exits``: block indices (or module
    names for foreign models), ``"every:K"`` or ``"flops:N"``. ``pretrained``: a local weights file (foreign
    models; ``True`` lets timm load from its cache)."""
    if factory or backbone.startswith(("timm:", "torchvision:")):
        head = head or "sdn"
        shape = (in_chans, img_size, img_size)
        return build_foreign(factory or backbone, num_classes=num_classes, exits=exits, head=head,
                             head_kwargs=head_kwargs, kwargs=backbone_kwargs, input_shape=shape, pretrained=pretrained)
    if pretrained:
        raise ConfigError("model.pretrained applies to timm:, torchvision: and factory models; built-in backbones "
                          "start from random weights (use --phase1-from or load a checkpoint instead)")
    net = build_backbone(backbone, num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                         **dict(backbone_kwargs or {}))
    blocks = resolve_exits(exits, net, (in_chans, img_size, img_size))
    head = head or getattr(net, "default_head", "sdn")
    own = getattr(net, "default_head_kwargs", {}) if head == getattr(net, "default_head", None) else {}
    spec = BuiltinSpec(backbone=backbone, num_classes=num_classes, exits=tuple(blocks), head=head, in_chans=in_chans,
                       img_size=img_size, head_kwargs=dict(head_kwargs or {}),
                       backbone_kwargs=dict(backbone_kwargs or {}))
    return MultiExitModel(net, blocks, head, head_kwargs={**own, **(head_kwargs or {})}, spec=spec)


def model_from_spec(spec: ModelSpec, module=None) -> MultiExitModel:
    """Build the model ``spec`` describes again (weights are loaded separately). A model adapted from a user module
    without a factory needs that ``module`` back."""
    if isinstance(spec, BuiltinSpec):
        return build_model(spec.backbone, num_classes=spec.num_classes, in_chans=spec.in_chans,
                           img_size=spec.img_size, exits=list(spec.exits), head=spec.head,
                           head_kwargs=spec.head_kwargs, backbone_kwargs=spec.backbone_kwargs)
    if isinstance(spec, HFSpec):
        return model_from_hf_spec(spec)
    if isinstance(spec, CausalSpec):
        return model_from_causal_spec(spec)
    source = spec.source if isinstance(spec, LibrarySpec) else spec.factory
    kwargs = spec.kwargs if isinstance(spec, LibrarySpec) else spec.factory_kwargs
    if module is None and source:
        return build_foreign(source, num_classes=spec.num_classes, exits=list(spec.exits), head=spec.head,
                             head_kwargs=spec.head_kwargs, kwargs=kwargs, input_shape=spec.input_shape)
    if module is None:
        raise ConfigError("this model wraps a user module that exitlab cannot build again (from_module without "
                          "factory=); pass it back: exitlab.load(path, module=my_module)")
    return from_module(module, list(spec.exits), num_classes=spec.num_classes, input_shape=spec.input_shape,
                       head=spec.head, head_kwargs=spec.head_kwargs, factory=spec.factory,
                       factory_kwargs=spec.factory_kwargs)


def rebuildable(model: MultiExitModel) -> bool:
    """Whether :func:`model_from_spec` can build ``model`` again from its spec alone."""
    return model.spec is not None and model.spec.rebuildable


__all__ = ["BACKBONES", "HEADS", "BlocksBackbone", "ExitPoint", "HookedBackbone", "MultiExitModel",
           "build_backbone", "build_head", "build_model", "from_hf", "from_hf_causal", "from_module", "from_timm",
           "from_torchvision", "BuiltinSpec", "CausalSpec", "HFSpec", "LibrarySpec", "ModelSpec", "ModuleSpec",
           "SpecError", "model_from_spec", "rebuildable", "spec_from_json", "tap_candidates"]
