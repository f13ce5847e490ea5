"""The optional parts of ``exitlab eval``: risk-controlled thresholds, the per-exit extras, OOD detection.

:func:`add_extras` fills an ``evaluate_run`` result (``eval.json``) with

- ``extras``: overthinking, hindsight improvability, top-5 accuracy and per-class exit statistics
  (:mod:`exitlab.exitstats`), always;
- ``risk_control``: per policy, the threshold chosen on validation with a guarantee on the accuracy drop
  (:mod:`exitlab.risk`), when a risk level is given;
- ``ood``: AUROC of ID against OOD samples per exit and per threshold (:mod:`exitlab.ood`), when OOD data is named.

:func:`format_extras_report` gives their lines of the printed report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..runs.rundir import RunDir
from .exit_stats import exit_extras, format_extras
from .ood import ood_detection, ood_logits_for_run
from .policies import Policy
from .risk import check_risk_args, format_risk, risk_controlled


@dataclass
class ExtraOptions:
    """What ``exitlab eval`` adds beyond the sweep (CLI flags in brackets)."""

    risk: float | None = None  # risk level alpha: the accuracy drop to guarantee [--risk]; None = no risk control
    confidence: float = 0.9  # 1 - delta: the probability that the guarantee holds [--confidence]
    risk_kind: str = "gap"  # gap, disagree or drop (exitlab.risk) [--risk-kind]
    risk_bound: str = "binomial"  # binomial, hoeffding_bentkus or hoeffding [--risk-bound]
    class_budget: float = 0.5  # FLOPs budget (share of the backbone) of the per-class statistics [--class-budget]
    ood: list[str] = field(default_factory=list)  # "noise" or data.KEY=VALUE overrides [--ood]; empty = none
    ood_split: str = "test"  # the OOD data set's split [--ood-split]

    @classmethod
    def from_args(cls, args) -> ExtraOptions:
        """The options of an ``exitlab eval`` command line (see :func:`add_extra_arguments`)."""
        return cls(risk=args.risk, confidence=args.confidence, risk_kind=args.risk_kind, risk_bound=args.risk_bound,
                   class_budget=args.class_budget, ood=args.ood or [], ood_split=args.ood_split)

    def check(self) -> None:
        """ConfigError for options that cannot work, before any logits are computed."""
        if self.risk is not None:
            check_risk_args(self.risk, self.confidence, self.risk_kind, self.risk_bound)
        if not (0 < self.class_budget and math.isfinite(self.class_budget)):
            raise ConfigError(f"--class-budget must be > 0 (a share of the backbone's FLOPs), got {self.class_budget}")


def add_extra_arguments(p) -> None:
    """The ``exitlab eval`` flags of :class:`ExtraOptions` on an argparse parser (values checked by ``check``)."""
    p.add_argument("--risk", type=float, help="risk control: choose every policy's threshold on val so that the "
                   "accuracy drop against the final exit is at most this (e.g. 0.01), with --confidence")
    p.add_argument("--confidence", type=float, default=0.9, help="probability that the risk guarantee holds "
                   "(default: 0.9)")
    p.add_argument("--risk-kind", default="gap", choices=["gap", "disagree", "drop"],
                   help="the controlled risk: gap = P(early wrong, final right) (default), disagree = P(early "
                   "prediction != final), drop = the accuracy drop itself (Hoeffding only)")
    p.add_argument("--risk-bound", default="binomial", choices=["binomial", "hoeffding_bentkus", "hoeffding"],
                   help="p-values of the fixed-sequence test (default: binomial, exact for 0/1 losses)")
    p.add_argument("--class-budget", type=float, default=0.5,
                   help="FLOPs budget (share of the backbone) of the per-class exit statistics (default: 0.5)")
    p.add_argument("--ood", nargs="+", metavar="SPEC", help="OOD detection against 'noise' (uniform pixel noise) or "
                   "another in-memory data set named by data.KEY=VALUE overrides, e.g. --ood data.name=cifar10")
    p.add_argument("--ood-split", default="test", choices=["train", "test"],
                   help="split of the OOD data set (default: test)")


def add_extras(result: dict, run: RunDir, policies: dict[str, Policy], main: str, logits, labels, val, costs,
               options: ExtraOptions, val_costs=None) -> dict:
    """Add ``extras`` (for policy ``main``), ``risk_control`` (every policy) and ``ood`` (``main``) to ``result``.
    ``costs``: the evaluated split's :class:`exitlab.costs.ExitCosts`; ``val_costs``: the validation split's where
    they differ per sample (text), else ``costs``."""
    vc = val_costs or costs
    regression = policies[main].task != "classification"
    if regression:
        result["extras"] = {"note": "overthinking, improvability, top-5 and per-class statistics need classes; "
                                    "this is a regression model"}
    else:
        selected = result["policies"][main].get("selected") or {}
        key = f"budget_{round(options.class_budget * 100)}"
        threshold = (selected[key] or {}).get("threshold") if key in selected else ...  # the budget table's choice
        result["extras"] = exit_extras(policies[main], logits, labels, val, vc, budget=options.class_budget,
                                       classes=(getattr(run.model(), "info", None) or {}).get("classes"),
                                       threshold=threshold)
    if options.risk is not None:
        result["risk_control"] = {}
        for name, pol in policies.items():
            if pol.task != "classification":
                result["risk_control"][name] = "refused: risk control is defined for classification only"
                continue
            result["risk_control"][name] = risk_controlled(pol, val, (logits, labels), costs, options.risk,
                                                           options.confidence, kind=options.risk_kind,
                                                           bound=options.risk_bound, val_costs=vc)
    if options.ood:
        if regression:
            raise ConfigError("--ood scores samples by their class confidence; a regression model has none")
        ood = ood_logits_for_run(run, options.ood, options.ood_split)
        result["ood"] = {"source": list(options.ood), "split": options.ood_split,
                         **ood_detection(policies[main], logits, ood, costs)}
    return result


def format_extras_report(result: dict) -> list[str]:
    """The extras' lines of the printed eval report."""
    lines = format_extras(result["extras"]) if "overthinking" in result.get("extras", {}) else []
    if result.get("risk_control"):
        lines += format_risk(result["risk_control"])
        if result.get("split") == "val":
            lines.append("  (reported on val, the calibration split itself: not an independent check)")
    if result.get("ood"):
        o = result["ood"]
        lines.append(f"\nOOD detection ({' '.join(o['source'])}, {o['ood_samples']} OOD vs {o['id_samples']} ID "
                     f"samples): AUROC per exit")
        for e in o["per_exit"]:
            lines.append(f"  exit {e['exit']}  {e['fraction']:>6.1%} of backbone FLOPs  max-softmax "
                         f"{e['auroc_msp']:.4f}  {o['policy']} score {e['auroc_score']:.4f}")
        c = o["curve"]
        best = max(range(len(c["auroc_msp"])), key=lambda i: (c["auroc_msp"][i], -c["flops"][i]))
        lines.append(f"  early exit along {len(c['flops'])} {o['policy']} thresholds: best max-softmax AUROC "
                     f"{c['auroc_msp'][best]:.4f} at {c['fraction'][best]:.1%} of backbone FLOPs (ood.curve)")
    return lines


__all__ = ["ExtraOptions", "add_extra_arguments", "add_extras", "format_extras_report"]
