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
    spec = dict(backbone=backbone, num_classes=num_classes, in_chans=in_chans, img_size=img_size, exits=blocks,
                head=head, head_kwargs=dict(head_kwargs or {}), backbone_kwargs=dict(backbone_kwargs or {}))
    return MultiExitModel(net, blocks, head, head_kwargs={**own, **(head_kwargs or {})}, spec=spec)


def model_from_spec(spec: dict, module=None) -> MultiExitModel:
    """Rebuild a model from the ``spec`` saved with it (weights are loaded separately). A model adapted from a user
    module without a factory needs that ``module`` back."""
    if "adapter" not in spec:
        return build_model(**spec)
    if spec["adapter"] == "hf":
        return model_from_hf_spec(spec)
    if spec["adapter"] == "hf-causal":
        return model_from_causal_spec(spec)
    source = spec.get("source") or spec.get("factory")
    if module is None and source:
        return build_foreign(source, num_classes=spec["num_classes"], exits=spec["exits"], head=spec["head"],
                             head_kwargs=spec.get("head_kwargs"), kwargs=spec.get("factory_kwargs"),
                             input_shape=tuple(spec["input_shape"]))
    if module is None:
        raise ConfigError("this model wraps a user module that exitlab cannot build again (from_module without "
                          "factory=); pass it back: exitlab.load(path, module=my_module)")
    return from_module(module, spec["exits"], num_classes=spec["num_classes"], input_shape=tuple(spec["input_shape"]),
                       head=spec["head"], head_kwargs=spec.get("head_kwargs"), factory=spec.get("factory"),
                       factory_kwargs=spec.get("factory_kwargs"))


def rebuildable(model: MultiExitModel) -> bool:
    """Whether :func:`model_from_spec` can build ``model`` again from its spec alone."""
    spec = model.spec
    return bool(spec) and ("adapter" not in spec or spec["adapter"] in ("hf", "hf-causal") or
                           bool(spec.get("source") or spec.get("factory")))


__all__ = ["BACKBONES", "HEADS", "BlocksBackbone", "ExitPoint", "HookedBackbone", "MultiExitModel",
           "build_backbone", "build_head", "build_model", "from_hf", "from_hf_causal", "from_module", "from_timm",
           "from_torchvision", "model_from_spec", "rebuildable", "tap_candidates"]
