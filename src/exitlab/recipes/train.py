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
from ..models import MultiExitModel, rebuildable
from ..runs.config import RunConfig, from_dict, to_dict
from ..training.engine import Probes
from ..training.engine import train as run_training

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
    if "adapter" not in spec:
        keys = ("backbone", "exits", "head", "head_kwargs", "backbone_kwargs")
        return {k: spec[k] for k in keys if k in spec}
    if spec["adapter"] == "hf-causal":
        return {"backbone": "hf-causal", "exits": list(spec["exits"]), "head": spec["head"], "head_kwargs": {}}
    if spec["adapter"] == "hf":
        return {"backbone": "hf", "exits": list(spec["exits"]), "head": spec.get("head", "text"),
                "head_kwargs": spec["head_kwargs"]}
    source = spec.get("source") or ""
    section = {"exits": list(spec["exits"]), "head": spec["head"], "head_kwargs": spec.get("head_kwargs") or {},
               "backbone_kwargs": spec.get("factory_kwargs") or {}}
    if source.startswith(("timm:", "torchvision:")):
        return {"backbone": source, **section}
    return {"backbone": "module", "factory": spec.get("factory"), **section}


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
        cfg, model = _component_config(what, config, options), what
    else:
        raise ConfigError(f"exitlab.train takes a RunConfig or a MultiExitModel, got {type(what).__name__}; wrap a "
                          "plain nn.Module with exitlab.from_module first")
    if model is not None and not rebuildable(model):
        log.warning(
            "this model wraps a module exitlab cannot build again (from_module without factory=): load the run with "
            "exitlab.load(dir, module=...); the CLI cannot load it")
    return run_training(cfg, out, resume=resume, phase1_from=phase1_from, model=model, source=data,
                        probes=probes_for(cfg))


def _component_config(model: MultiExitModel, base: RunConfig | None, options: dict) -> RunConfig:
    """The run config of a component run: the base (or defaults), the options, and the model's own description."""
    d = to_dict(base) if base is not None else to_dict(RunConfig())
    for key, value in options.items():
        if isinstance(value, dict) and isinstance(d.get(key), dict):
            d[key] = {**d[key], **value}
        else:
            d[key] = value
    d["model"] = {**to_dict(RunConfig().model), **model_section(model)}
    return from_dict(RunConfig, d)
