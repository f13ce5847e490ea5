"""The comparison config: a base run config plus the grid (regimes x seeds x variants) and what to report."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import yaml

from ...errors import ConfigError
from ...runs.components import REGIMES
from ...runs.config import RunConfig, upgrade_config, upgrade_key
from ...runs.typed import apply_overrides, check_range, from_dict, read_yaml, to_dict

# Named variants: a few overrides each. A config may also define its own as {name: {dotted.key: value}}.
VARIANTS: dict[str, dict] = {
    "uniform-weights": {"phase2.loss_weights": "uniform", "phase3.loss_weights": "uniform"},
    "sdn-weights": {"phase2.loss_weights": "sdn", "phase3.loss_weights": "sdn"},
    "grad-equilibrium": {"phase2.grad_equilibrium": True},
    "distill": {"phase2.distill": 1.0, "phase3.distill": 1.0},
    "head-pooled": {"model.head": "pooled"},
    "head-mlp2": {"model.head": "mlp2"},
    "head-sdn": {"model.head": "sdn"},
    "exits-every2": {"model.exits": "every:2"},
}
ANALYSES = ("gradients", "rank", "mi", "landscape", "connectivity")


@dataclass
class CompareConfig:
    """A regime comparison: every regime x seed x variant is trained under the same budget, then evaluated."""

    base: RunConfig = field(default_factory=RunConfig)  # the run config every grid cell starts from
    regimes: list[Union[str, list[int]]] = field(default_factory=lambda: ["joint", "disjoint", "mixed"])  # noqa: UP007
    seeds: list[int] = field(default_factory=lambda: [0])  # one run per seed and regime
    variants: list[Union[str, dict]] = field(default_factory=list)  # named variants or {name: {key: value}}  # noqa: UP007
    workers: int = 2  # parallel training processes (1 thread each by default)
    threads: int = 1  # torch threads per process
    policy: Union[str, None] = None  # exit policy of the tables and curves; null: confidence (regression_patience)  # noqa: UP007
    distribution_budget: float = 0.5  # budget (fraction of backbone FLOPs) at which the exit distribution is drawn
    analyses: list[str] = field(default_factory=list)  # analysis plots to add: gradients, rank, mi, landscape, ...
    regime_overrides: dict = field(default_factory=dict)  # per regime, {dotted.key: value}: e.g. phase2.lr for joint

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("seeds: the seed list is empty; give at least one seed, e.g. seeds: [0, 1, 2]")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: {self.seeds} has duplicates")
        if not self.regimes:
            raise ConfigError("regimes: the regime list is empty; e.g. regimes: [joint, disjoint, mixed]")
        for r in self.regimes:
            if isinstance(r, str) and r not in REGIMES:
                raise ConfigError(f"regimes: unknown regime {r!r}; choose from {', '.join(REGIMES.names())} or give "
                                  "a phase list such as [1, 2, 3]")
            if isinstance(r, list) and (not r or any(p not in (1, 2, 3) for p in r)):
                raise ConfigError(f"regimes: phase list {r} must be non-empty and use only phases 1, 2 and 3")
        check_range("workers", self.workers, lo=1)
        check_range("threads", self.threads, lo=1)
        if not 0 < self.distribution_budget <= 1.5:
            raise ConfigError(f"distribution_budget must be in (0, 1.5], got {self.distribution_budget}")
        bad = [a for a in self.analyses if a not in ANALYSES]
        if bad:
            raise ConfigError(f"analyses: unknown analysis {bad[0]!r}; choose from {', '.join(ANALYSES)}")
        for variant in self.variant_overrides():  # unknown variants and bad override keys fail here
            self.run_config(variant)
        labels = [r if isinstance(r, str) else "phases" + "".join(map(str, r)) for r in self.regimes]
        for regime, changes in self.regime_overrides.items():
            if regime not in labels:
                raise ConfigError(f"regime_overrides: {regime!r} is not one of the regimes {labels}")
            if not isinstance(changes, dict):
                raise ConfigError(f"regime_overrides: {regime!r} must map dotted config keys to values")
            try:
                from_dict(RunConfig, apply_overrides(to_dict(self.base), self.overrides_for(regime)))
            except ConfigError as e:
                raise ConfigError(f"regime_overrides: {regime!r}: {e}") from None

    def variant_overrides(self) -> dict[str, dict]:
        """Variant name -> overrides; the empty name is the base config itself (when no variants are listed)."""
        if not self.variants:
            return {"": {}}
        out: dict[str, dict] = {}
        for v in self.variants:
            if isinstance(v, str):
                if v not in VARIANTS:
                    raise ConfigError(f"variants: unknown variant {v!r}; choose from {', '.join(sorted(VARIANTS))} "
                                      "or define one as {name: {dotted.key: value}}")
                out[v] = VARIANTS[v]
            else:
                for name, overrides in v.items():
                    if not isinstance(overrides, dict):
                        raise ConfigError(f"variants: {name!r} must map dotted config keys to values")
                    out[str(name)] = overrides
        return out

    def run_config(self, variant: str) -> RunConfig:
        """The base config with a variant's overrides applied (and validated)."""
        overrides = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                     for k, v in self.variant_overrides()[variant].items()]
        try:
            return from_dict(RunConfig, apply_overrides(to_dict(self.base), overrides))
        except ConfigError as e:
            raise ConfigError(f"variants: {variant!r}: {e}") from None

    def overrides_for(self, regime_label: str) -> list[str]:
        """A regime's overrides as ``--set`` strings."""
        return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                for k, v in self.regime_overrides.get(regime_label, {}).items()]

    def signature_dict(self) -> dict:
        """What decides the results (not how many processes ran them)."""
        d = dataclasses.asdict(self)
        for k in ("workers", "threads", "analyses", "distribution_budget", "policy"):
            d.pop(k)
        for k in ("progress", "threads", "device", "checkpoint_every", "keep_checkpoints"):
            d["base"].pop(k)
        return d


def upgrade_compare(data: dict) -> dict:
    """A comparison config as an older exitlab saved it (compare.yaml), in today's layout: the base's and the
    overrides' flat method keys moved into their sections (see :func:`exitlab.runs.config.upgrade_config`)."""
    def keys(overrides):
        return {upgrade_key(k): v for k, v in overrides.items()} if isinstance(overrides, dict) else overrides

    out = dict(data)
    if isinstance(out.get("base"), dict):
        out["base"] = upgrade_config(out["base"])
    if isinstance(out.get("variants"), list):
        out["variants"] = [{n: keys(o) for n, o in v.items()} if isinstance(v, dict) else v for v in out["variants"]]
    if isinstance(out.get("regime_overrides"), dict):
        out["regime_overrides"] = {r: keys(o) for r, o in out["regime_overrides"].items()}
    return out


def load_compare_config(path: str | Path | None, overrides: list[str] | None = None) -> CompareConfig:
    """Load a comparison YAML; ``--set`` overrides address it by dotted name (``base.budget=6``, ``seeds=[0,1]``)."""
    data = read_yaml(path, "configs/fashion_mnist_compare.yaml") if path is not None else {}
    return from_dict(CompareConfig, apply_overrides(data, overrides or []))
