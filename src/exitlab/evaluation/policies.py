"""Exit policies: small objects that decide, exit by exit, which samples stop.

The contract (stable; the ONNX router and the simulator both build on it)
-----------------------------------------------------------------------
A policy turns the logits of exit ``j`` into a **score** and a **prediction** per sample, possibly carrying a
**state** from the exits before. The threshold enters only through :meth:`Policy.decide`:

- ``exit_when == "above"``: a sample exits at ``j`` when ``score >= threshold``;
- ``exit_when == "below"``: a sample exits at ``j`` when ``score <= threshold``;
- every sample still running exits at the final exit, whatever its score.

Because score, prediction and state never depend on the threshold, one pass over cached per-exit logits gives the
scores of every sample at every exit, and any number of thresholds is then a comparison (see
:mod:`exitlab.sweep`). Real early exit (:func:`exitlab.inference.early_exit`) calls the very same :meth:`step` on
the samples still in the batch, so both make the same decisions.

``State`` is a plain ``dict[str, Tensor]`` whose tensors have the batch as their first dimension; when samples
leave, :meth:`Policy.compact` keeps the rows of those that go on (override it for any other layout). The state
starts as ``{}`` at exit 0. Logits are ``[B, C]`` torch tensors; a numpy caller converts with ``torch.from_numpy``.

Writing your own policy::

    class Margin(Policy):
        name = "margin"                       # register with POLICIES.register("margin", Margin) to use by name
        def step(self, j, logits, state):
            top2 = logits.softmax(-1).topk(2, dim=-1).values  # [B, 2]
            return Step(top2[:, 0] - top2[:, 1], logits.argmax(-1), state)

Policies serialise with :meth:`Policy.to_dict` and :func:`policy_from_dict` (JSON-able; used by export manifests).
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F

from ..errors import ConfigError, ExitlabError
from ..registry import Registry

State = dict[str, torch.Tensor]  # every tensor [B, ...]: rows follow the samples


class Step(NamedTuple):
    """What a policy says about the samples at one exit."""

    score: torch.Tensor  # [B] float; compared with the threshold by Policy.decide
    pred: torch.Tensor  # [B] int64; the class predicted if the sample exits here (regression: the float value)
    state: State  # carried to the next exit (rows = samples)


class Policy:
    """Base class of exit policies. Subclasses set ``name`` and ``exit_when`` and implement :meth:`step`.

    ``threshold`` is optional: the simulator sweeps many thresholds, while real early exit and export use the
    one stored here (or one passed explicitly).
    """

    name: ClassVar[str] = "policy"
    exit_when: ClassVar[str] = "above"  # "above": exit when score >= threshold; "below": when score <= threshold
    integer: ClassVar[bool] = False  # thresholds are whole numbers (patience)
    task: ClassVar[str] = "classification"  # or "regression": one output per exit (a model with num_classes 1)

    def __init__(self, threshold: float | None = None):
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                      or not math.isfinite(threshold)):
            raise ConfigError(f"policy {self.name!r}: threshold {threshold!r} is not a finite number; give a number "
                              "in the policy's range, or None to sweep thresholds")
        self.threshold = threshold

    # ---------------------------------------------------------------- the decision, exit by exit
    def step(self, j: int, logits: torch.Tensor, state: State) -> Step:
        """Score and predict the samples at exit ``j`` from their logits ``[B, C]`` and the state so far."""
        raise NotImplementedError

    def decide(self, score: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
        """Boolean mask of the samples that exit. The threshold is compared in the score's dtype (a Python number
        is, by torch's promotion rules), so a float32 score meets the same float32 threshold in simulation and in
        real early exit."""
        if not isinstance(threshold, (int, float)):
            threshold = torch.as_tensor(threshold, dtype=score.dtype, device=score.device)
        return score >= threshold if self.exit_when == "above" else score <= threshold

    def compact(self, state: State, keep: torch.Tensor) -> State:
        """The state of the samples that go on: ``keep`` is a ``[B]`` bool mask or an index tensor."""
        return {k: v[keep] for k, v in state.items()}

    # ---------------------------------------------------------------- thresholds
    def valid_range(self, num_exits: int, num_classes: int) -> tuple[float, float]:
        """Inclusive range of meaningful thresholds for a model with this many exits and classes."""
        return 0.0, 1.0

    def default_thresholds(self, num_exits: int, num_classes: int, n: int = 100) -> torch.Tensor:
        """``n`` thresholds evenly spaced over :meth:`valid_range` (every whole number for integer policies)."""
        lo, hi = self.valid_range(num_exits, num_classes)
        if self.integer:
            return torch.arange(int(lo), int(hi) + 1, dtype=torch.float64)
        return torch.linspace(lo, hi, n, dtype=torch.float64)

    def check_threshold(self, threshold: float, num_exits: int, num_classes: int) -> float:
        """One threshold as a float, or a ConfigError naming the valid range (plain Python: cheap per call)."""
        lo, hi = self.valid_range(num_exits, num_classes)
        t = float(threshold)
        if not lo <= t <= hi or (self.integer and t != round(t)) or (self.task == "regression") != (num_classes == 1):
            self.check_thresholds([t], num_exits, num_classes)  # raises with the full message
        return t

    def check_thresholds(self, thresholds, num_exits: int, num_classes: int) -> torch.Tensor:
        """Thresholds as a float64 tensor, or a ConfigError naming the policy's valid range."""
        if (self.task == "regression") != (num_classes == 1):
            model = "a regression model (one output)" if num_classes == 1 else f"a {num_classes}-class classifier"
            raise ConfigError(f"policy {self.name!r} is a {self.task} policy but this is {model}; use "
                              f"{'regression_patience' if num_classes == 1 else 'confidence, entropy or patience'}")
        t = torch.as_tensor(thresholds, dtype=torch.float64).reshape(-1)
        lo, hi = self.valid_range(num_exits, num_classes)
        bad = t[~((t >= lo) & (t <= hi))]  # also catches NaN
        if len(bad):
            raise ConfigError(f"policy {self.name!r}: threshold {bad[0].item():g} is outside its range "
                              f"[{lo:g}, {hi:g}] for {num_exits} exits and {num_classes} classes")
        if self.integer and not torch.equal(t, t.round()):
            raise ConfigError(f"policy {self.name!r}: thresholds must be whole numbers, got {t.tolist()[:5]}")
        return t

    # ---------------------------------------------------------------- whole-split scores and serialisation
    @torch.no_grad()
    def scores(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and predictions of every sample at every exit from stacked logits ``[E, N, C]``: ``[E, N]`` each.
        Calls :meth:`step` exit by exit on all samples: exactly what real early exit computes per sample.
        Non-finite logits are refused: one NaN would otherwise corrupt the sorted sweep of other samples."""
        check_finite(logits)
        state: State = {}
        scores, preds = [], []
        for j in range(logits.shape[0]):
            score, pred, state = self.step(j, logits[j], state)
            scores.append(score)
            preds.append(pred)
        return torch.stack(scores), torch.stack(preds)

    def params(self) -> dict:
        """JSON-able constructor arguments other than the threshold (override when a policy has any)."""
        return {}

    def to_dict(self) -> dict:
        """``{"name", "threshold", **params}``; :func:`policy_from_dict` rebuilds the policy from it."""
        return {"name": self.name, "threshold": self.threshold, **self.params()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threshold={self.threshold})"


def check_finite(logits: torch.Tensor) -> None:
    """Raise an ExitlabError naming the exits and the number of samples whose logits ``[E, N, C]`` are not finite."""
    bad = ~torch.isfinite(logits).all(-1)  # [E, N]
    if bool(bad.any()):
        exits = torch.nonzero(bad.any(1)).flatten().tolist()
        raise ExitlabError(f"the logits of exit(s) {exits} are NaN or infinite for {int(bad.any(0).sum())} "
                           "sample(s); the model diverged or was fed bad inputs, so no exit can be simulated")


class Confidence(Policy):
    """SDN: exit when the maximum softmax probability reaches the threshold (range [0, 1])."""

    name = "confidence"

    def step(self, j: int, logits: torch.Tensor, state: State) -> Step:
        conf, pred = logits.float().softmax(-1).max(-1)  # [B], [B]
        return Step(conf, pred, state)


class Entropy(Policy):
    """Exit when the entropy (nats) of the softmax falls to the threshold or below (range [0, ln C])."""

    name = "entropy"
    exit_when = "below"

    def valid_range(self, num_exits: int, num_classes: int) -> tuple[float, float]:
        return 0.0, math.log(num_classes)

    def step(self, j: int, logits: torch.Tensor, state: State) -> Step:
        logp = F.log_softmax(logits.float(), -1)  # [B, C]
        ent = (-(logp.exp() * logp).sum(-1)).clamp_min(0)  # [B], >= 0 despite rounding
        return Step(ent, logits.argmax(-1), state)


class Patience(Policy):
    """PBEE: exit once ``t`` consecutive exits (this one included) predict the same class (range [1, E]).

    The score is the length of the current run of agreeing predictions. ``t = 1`` exits at the first exit;
    with ``t = E`` a run can only be complete at the final exit, so nothing leaves early. PABEE's "patience p"
    counts agreements after the first prediction, so it equals ``t = p + 1`` here.
    """

    name = "patience"
    integer = True

    def valid_range(self, num_exits: int, num_classes: int) -> tuple[float, float]:
        return 1.0, float(num_exits)

    def step(self, j: int, logits: torch.Tensor, state: State) -> Step:
        pred = logits.argmax(-1)  # [B]
        if j == 0 or "pred" not in state:
            run = torch.ones_like(pred)
        else:
            run = torch.where(pred == state["pred"], state["run"] + 1, torch.ones_like(pred))
        return Step(run.float(), pred, {"pred": pred, "run": run})


class ZTW(Policy):
    """Zero Time Waste: confidence of a geometric ensemble of the internal classifiers so far, learned weights.

    With ``K`` internal classifiers (the exits before the final one), IC ``m``'s prediction is

        q_m = softmax( sum_{i<=m} weight[m, i] * log_softmax(z_i) + bias[m] )

    with ``weight`` ``[K, K]`` (lower triangular, non-negative) and ``bias`` ``[K, C]``. As in ZTW's reference
    code, there is no ensemble on the final exit: it predicts with its own softmax. Fit the ensemble with
    :func:`exitlab.ztw.fit_ensemble` on the frozen model; the cascading head connection is the head option
    ``cascade: true``. The state holds the running sums of every later ensemble: ``[B, K, C]``.
    """

    name = "ztw"

    def __init__(self, weight, bias, threshold: float | None = None):
        super().__init__(threshold)
        self.weight = torch.as_tensor(weight, dtype=torch.float32)  # [K, K]
        self.bias = torch.as_tensor(bias, dtype=torch.float32)  # [K, C]
        K = self.weight.shape[0] if self.weight.dim() == 2 else -1
        if self.weight.shape != (K, K) or self.bias.dim() != 2 or self.bias.shape[0] != K:
            raise ConfigError(f"ztw: weight must be [K, K] and bias [K, C] for K internal classifiers, got "
                              f"{tuple(self.weight.shape)} and {tuple(self.bias.shape)}")
        if not bool(torch.isfinite(self.weight).all() and torch.isfinite(self.bias).all()):
            raise ConfigError("ztw: weight and bias must be finite; refit the ensemble")
        if bool((self.weight < 0).any()):
            raise ConfigError("ztw: ensemble weights must be >= 0 (the reference parameterises them as exp(w))")
        self.weight = self.weight.tril()

    def step(self, j: int, logits: torch.Tensor, state: State) -> Step:
        K = self.weight.shape[0]
        if j >= K:  # the final exit (or any exit past the ensembles) predicts alone
            conf, pred = logits.float().softmax(-1).max(-1)
            return Step(conf, pred, state)
        w = self.weight.to(logits.device)[:, j]  # [K]: IC j's weight in every ensemble
        logp = F.log_softmax(logits.float(), -1)  # [B, C]
        term = w[None, :, None] * logp[:, None, :]  # [B, K, C]
        acc = term + self.bias.to(logits.device)[None] if j == 0 or "acc" not in state else state["acc"] + term
        q = F.log_softmax(acc[:, j], -1)  # [B, C]
        conf, pred = q.exp().max(-1)
        return Step(conf, pred, {"acc": acc})

    def params(self) -> dict:
        return {"weight": self.weight.tolist(), "bias": self.bias.tolist()}


class RegressionPatience(Policy):
    """PABEE's regression rule: exit once ``t`` consecutive exits (this one included) predict values that differ
    from the previous exit's by less than ``tolerance`` (range [1, E]). For models with one output per exit.

    The score is the length of the current run of close predictions, and the prediction is the exit's value (a
    float, not a class). As for :class:`Patience`, PABEE's patience ``p`` is ``t = p + 1`` here.
    """

    name = "regression_patience"
    integer = True
    task = "regression"

    def __init__(self, threshold: float | None = None, tolerance: float = 0.1):
        super().__init__(threshold)
        if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not tolerance > 0:
            raise ConfigError(f"policy 'regression_patience': tolerance must be a number > 0, got {tolerance!r}")
        self.tolerance = float(tolerance)

    def valid_range(self, num_exits: int, num_classes: int) -> tuple[float, float]:
        return 1.0, float(num_exits)

    def step(self, j: int, logits: torch.Tensor, state: State) -> Step:
        value = logits[:, 0].float()  # [B]
        if j == 0 or "value" not in state:
            run = torch.ones_like(value, dtype=torch.long)
        else:
            close = (value - state["value"]).abs() < self.tolerance
            run = torch.where(close, state["run"] + 1, torch.ones_like(state["run"]))
        return Step(run.float(), value, {"value": value, "run": run})

    def params(self) -> dict:
        return {"tolerance": self.tolerance}


POLICIES: Registry[type[Policy]] = Registry("policy")
for _cls in (Confidence, Entropy, Patience, ZTW, RegressionPatience):
    POLICIES.register(_cls.name, _cls)


def make_policy(name: str, **kwargs) -> Policy:
    """Build a registered policy by name, e.g. ``make_policy("confidence", threshold=0.9)``."""
    cls = POLICIES.get(name)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"policy {name!r}: {e}") from None


def policy_from_dict(d: dict) -> Policy:
    """Rebuild a policy written by :meth:`Policy.to_dict`."""
    if not isinstance(d, dict) or "name" not in d:
        raise ConfigError(f"a policy must be a mapping with a 'name', got {d!r}")
    kwargs = {k: v for k, v in d.items() if k != "name"}
    return make_policy(d["name"], **kwargs)
