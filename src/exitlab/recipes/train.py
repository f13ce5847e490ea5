"""``exitlab.train``: the training recipe, from a config or from components.

Two front doors to one engine (:func:`exitlab.train.train`)::

    exitlab.train(cfg, "runs/a")                                  # a RunConfig: everything from the config
    exitlab.train(model, "runs/b", data=source, regime="mixed",   # components: your model and data,
                  budget=4, phase2={"lr": 0.01})                  # the regime and any config key as options

Options are the keys of :class:`exitlab.config.RunConfig` (nested sections as dicts), checked exactly as a YAML
config is. Probes the config asks for (``grad_log_every``) are added here, so training never imports the analyses.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..analysis.gradients import gradient_logger
from ..data import Source
from ..errors import ConfigError
from ..models import BuiltinSpec, CausalSpec, HFSpec, LibrarySpec, MultiExitModel, rebuildable
from ..runs.config import RunConfig
from ..runs.typed import from_dict, to_dict
from ..training import engine
from ..training.probes import Probes

log = logging.getLogger("exitlab")


def probes_for(cfg: RunConfig) -> Probes:
    """The probes a config asks for: the gradient logger when ``grad_log_every > 0``."""
    probes = Probes()
    if cfg.grad_log_every:
        probes.on_step.append(gradient_logger(cfg.grad_log_every, cfg.grad_log_samples))
    return probes


def model_section(model: MultiExitModel) -> dict:
    """A config ``model`` section describing ``model``, from its spec (what config.yaml records)."""
    spec = model.spec
    common = {"exits": list(spec.exits), "head": spec.head, "head_kwargs": dict(spec.head_kwargs)}
    if isinstance(spec, BuiltinSpec):
        return {"backbone": spec.backbone, **common, "backbone_kwargs": dict(spec.backbone_kwargs)}
    if isinstance(spec, HFSpec):
        return {"backbone": "hf", **common}
    if isinstance(spec, CausalSpec):
        return {"backbone": "hf-causal", **common}
    if isinstance(spec, LibrarySpec):
        return {"backbone": spec.source, **common, "backbone_kwargs": dict(spec.kwargs)}
    return {"backbone": "module", "factory": spec.factory, **common, "backbone_kwargs": dict(spec.factory_kwargs)}


def train(what: RunConfig | MultiExitModel, out: str | Path, *, data: Source | dict | None = None,
          config: RunConfig | None = None, resume: bool = False, phase1_from: str | Path | None = None,
          **options) -> Path:
    """Train into run directory ``out`` and return it.

    ``what`` is a :class:`RunConfig`, or a :class:`MultiExitModel` (built-in, ``from_module``, ``from_timm``,
    ``from_torchvision``) trained in place. ``data``: a data source (``exitlab.data.from_tensors``,
    ``from_datasets``, or a ``Dataset``) used instead of the data set the config names, or a dict of ``data``
    config keys (``{"name": "cifar10", "root": ...}``) naming one. ``config``: a base config
    for the component form; ``options`` override its keys (``regime="joint"``, ``budget=4``,
    ``phase2={"lr": 0.01}``, ``data={"batch_size": 64}``). ``resume`` and ``phase1_from`` as for ``exitlab train``.
    """
    if isinstance(data, dict):  # config keys, not a source
        options, data = {**options, "data": data}, None
    if isinstance(what, RunConfig):
        if options:
            raise ConfigError(f"exitlab.train(cfg, ...) takes no options ({', '.join(options)}); change the config, "
                              "or pass a model to train from components")
        cfg, model = what, None
    elif isinstance(what, MultiExitModel):
        if what.spec is None:  # its run could never be loaded: refuse before training, not after
            raise ConfigError("this model records no description to build it again (MultiExitModel built by hand); "
                              "build it with build_model, from_module, from_timm, from_torchvision or from_hf")
        cfg, model = _component_config(what, config, options), what
    else:
        raise ConfigError(f"exitlab.train takes a RunConfig or a MultiExitModel, got {type(what).__name__}; wrap a "
                          "plain nn.Module with exitlab.from_module first")
    if model is not None and not rebuildable(model):
        log.warning(
            "this model wraps a module exitlab cannot build again (from_module without factory=): load the run with "
            "exitlab.load(dir, module=...); the CLI cannot load it")
    return engine.train(cfg, out, resume=resume, phase1_from=phase1_from, model=model, data=data,
                        probes=probes_for(cfg))


def _component_config(model: MultiExitModel, base: RunConfig | None, options: dict) -> RunConfig:
    """The run config of a component run: the base (or defaults), the options, and the model's own description."""
    d = _merge(to_dict(base) if base is not None else to_dict(RunConfig()), options)
    d["model"] = {**to_dict(RunConfig().model), **model_section(model)}
    return from_dict(RunConfig, d)


def _merge(base: dict, options: dict) -> dict:
    """``base`` with ``options``' keys replaced; a dict option changes only the keys it names, in sections too
    (``phase2={"layerskip": {"rate": 0.1}}`` keeps the base's other ``layerskip`` keys)."""
    out = dict(base)
    for key, value in options.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out
