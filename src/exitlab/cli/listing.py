"""``exitlab ls``: the registered components, data sources and augmentations."""

from __future__ import annotations

import argparse

from ..data.catalog import AUGMENTS, DATASETS
from ..evaluation.policies import POLICIES
from ..models import BACKBONES, HEADS
from ..runs.components import LOSS_WEIGHTS, OPTIMIZERS, REGIME_PRESETS, REGIMES, SCHEDULES


def _preset(regime: str) -> str:
    """A regime's preset phase options, as ``exitlab ls`` shows them."""
    preset = REGIME_PRESETS.get(regime, {})
    items = [item for k, opts in preset.items() for item in _dotted(f"phase{k}.", opts)]
    return f" with {', '.join(items)}" if items else ""


def _dotted(prefix: str, opts: dict) -> list[str]:
    """``{"layerskip": {"rate": 0.2}}`` as ``["PREFIXlayerskip.rate=0.2"]``, as ``--set`` would take it."""
    return [item for k, v in opts.items()
            for item in (_dotted(f"{prefix}{k}.", v) if isinstance(v, dict) else [f"{prefix}{k}={v}"])]


def _described(names: list[str], describe) -> list[str]:
    width = max(map(len, names), default=0)
    return [f"{n:<{width}}  {describe(n)}" for n in names]


def tables() -> dict[str, list[str]]:
    """Every listing ``exitlab ls`` knows: its name and one line per entry."""
    return {"backbones": BACKBONES.names(), "heads": HEADS.names(),
            "regimes": [f"{n} = phases {list(REGIMES.get(n))}{_preset(n)}" for n in REGIMES.names()],
            "policies": POLICIES.names(), "optimizers": OPTIMIZERS.names(), "schedules": SCHEDULES.names(),
            "loss-weights": LOSS_WEIGHTS.names(),
            "datasets": _described(DATASETS.names(), lambda n: DATASETS.get(n).description),
            "augmentations": _described(AUGMENTS.names(), AUGMENTS.get)}


LISTS = ("backbones", "heads", "regimes", "policies", "optimizers", "schedules", "loss-weights", "datasets",
         "augmentations")


def cmd_ls(args: argparse.Namespace) -> int:
    listed = tables()
    for kind in [args.kind] if args.kind else LISTS:
        print(f"{kind}:")
        for line in listed[kind]:
            print(f"  {line}")
    return 0


def add_ls(sub) -> None:
    p = sub.add_parser("ls", help="list the registered backbones, heads, regimes, policies, optimizers, schedules, "
                       "loss weightings, data sets (data.name) and augmentations (data.augment)")
    p.add_argument("kind", nargs="?", choices=LISTS)
