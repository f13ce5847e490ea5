"""Exit policies: scores against their formulas, threshold ranges, monotonicity, serialisation, ZTW fitting."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from exitlab.errors import ConfigError
from exitlab.evaluation.policies import (
    POLICIES,
    ZTW,
    Confidence,
    Entropy,
    Patience,
    Policy,
    Step,
    make_policy,
    policy_from_dict,
)
from exitlab.evaluation.sweep import exit_indices
from exitlab.evaluation.ztw import ensemble_log_probs, fit_ensemble

E, N, C = 4, 50, 7


def _logits(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(E, N, C, generator=g) * 2  # [E, N, C]


def _random_ztw(seed: int = 0) -> ZTW:
    g = torch.Generator().manual_seed(seed)
    return ZTW(torch.rand(E - 1, E - 1, generator=g) + 0.2, torch.randn(E - 1, C, generator=g) * 0.3)


def test_confidence_is_max_softmax():
    lg = _logits()
    s, p = Confidence().scores(lg)
    assert torch.equal(s, lg.softmax(-1).max(-1).values)
    assert torch.equal(p, lg.argmax(-1))


def test_entropy_matches_formula_and_range():
    lg = _logits()
    s, _ = Entropy().scores(lg)
    prob = lg.double().softmax(-1)
    assert torch.allclose(s.double(), -(prob * prob.log()).sum(-1), atol=1e-5)
    lo, hi = Entropy().valid_range(E, C)
    assert lo == 0 and hi == pytest.approx(math.log(C))
    assert (s >= lo).all() and (s <= hi + 1e-6).all()
    uniform, _ = Entropy().scores(torch.zeros(1, 1, C))
    assert uniform.item() == pytest.approx(math.log(C), abs=1e-6)


def test_patience_counts_runs_of_agreeing_predictions():
    preds = torch.tensor([[1, 2, 3], [1, 2, 4], [1, 0, 4], [1, 2, 4], [0, 2, 4]])  # [E=5, N=3]
    lg = F.one_hot(preds, 5).float()  # argmax = preds
    s, p = Patience().scores(lg)
    assert torch.equal(p, preds)
    assert s.T.tolist() == [[1, 2, 3, 4, 1], [1, 2, 1, 1, 2], [1, 1, 2, 3, 4]]
    idx = exit_indices(s, torch.tensor([2.0, 3.0]), "above")  # exit once t consecutive exits agree
    assert idx.tolist() == [[1, 1, 2], [2, 4, 3]]


def test_ztw_with_identity_weights_is_plain_confidence():
    lg = _logits()
    z = ZTW(torch.eye(E - 1), torch.zeros(E - 1, C))
    s, p = z.scores(lg)
    s0, p0 = Confidence().scores(lg)
    assert torch.allclose(s, s0, atol=1e-6) and torch.equal(p, p0)


def test_ztw_step_by_step_equals_the_ensemble_formula():
    lg = _logits()
    z = _random_ztw()
    s, p = z.scores(lg)
    logq = ensemble_log_probs(lg, z.weight, z.bias)  # [E, N, C]
    assert torch.allclose(s, logq.exp().max(-1).values, atol=1e-5)
    assert torch.equal(p, logq.argmax(-1))
    # by hand, IC 1: softmax(w10 log p0 + w11 log p1 + b1)
    lp = F.log_softmax(lg, -1)
    q1 = (z.weight[1, 0] * lp[0] + z.weight[1, 1] * lp[1] + z.bias[1]).softmax(-1)
    assert torch.allclose(s[1], q1.max(-1).values, atol=1e-5)
    # no ensemble on the final exit (as in the reference code): it predicts with its own softmax
    assert torch.allclose(s[-1], lg[-1].softmax(-1).max(-1).values, atol=1e-6) and torch.equal(p[-1], lg[-1].argmax(-1))
    with pytest.raises(ConfigError, match="weight"):
        ZTW(torch.eye(E - 1), torch.zeros(E, C))
    with pytest.raises(ConfigError, match=">= 0"):
        ZTW(-torch.eye(E - 1), torch.zeros(E - 1, C))


def test_fit_ensemble_lowers_the_nll_and_keeps_weights_causal_and_non_negative():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, C, (400,), generator=g)
    noise = torch.randn(E, 400, C, generator=g)
    lg = noise * 2 + F.one_hot(y, C) * torch.tensor([0.5, 1.0, 1.5, 2.0])[:, None, None]  # weak, independent exits
    K = E - 1
    before = F.nll_loss(ensemble_log_probs(lg, torch.eye(K), torch.zeros(K, C))[:K].reshape(-1, C), y.repeat(K))
    z = fit_ensemble(lg, y, steps=100)
    after = F.nll_loss(ensemble_log_probs(lg, z.weight, z.bias)[:K].reshape(-1, C), y.repeat(K))
    assert after < before - 0.05
    assert z.weight.shape == (K, K) and z.bias.shape == (K, C)
    assert torch.equal(z.weight, z.weight.tril())  # IC m never looks at later exits
    assert (z.weight >= 0).all()  # exp-parameterised, as in the reference
    assert z.weight[-1, :-1].sum() > 0  # the last IC does use earlier ones


@pytest.mark.parametrize("name,bad", [("confidence", 1.5), ("confidence", -0.1), ("entropy", 2.5),
                                      ("patience", 0), ("patience", E + 1), ("patience", 2.5),
                                      ("confidence", float("nan"))])
def test_thresholds_outside_the_range_are_refused(name, bad):
    pol = make_policy(name)
    with pytest.raises(ConfigError, match=name):
        pol.check_thresholds([0.5 if name != "patience" else 1, bad], E, C)
    with pytest.raises(ConfigError, match=name):
        pol.check_threshold(bad, E, C)


def test_default_thresholds_cover_the_range():
    for name in ("confidence", "entropy"):
        t = make_policy(name).default_thresholds(E, C)
        assert len(t) == 100
        lo, hi = make_policy(name).valid_range(E, C)
        assert t[0] == lo and t[-1] == pytest.approx(hi)
    assert Patience().default_thresholds(E, C).tolist() == [1.0, 2.0, 3.0, 4.0]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["confidence", "entropy", "patience", "ztw"]))
def test_stricter_thresholds_never_exit_earlier(seed, name):
    pol = _random_ztw(seed) if name == "ztw" else make_policy(name)
    s, _ = pol.scores(_logits(seed))
    t = pol.default_thresholds(E, C, 25)
    idx = exit_indices(s, t, pol.exit_when)  # [T, N]; t sorted ascending
    step = 1 if pol.exit_when == "above" else -1  # "below": a larger threshold lets more samples leave
    assert (idx[1:] - idx[:-1] >= 0).all() if step == 1 else (idx[1:] - idx[:-1] <= 0).all()


def test_compact_keeps_the_rows_of_the_samples_that_go_on():
    state = {"a": torch.arange(5), "b": torch.arange(10).view(5, 2)}
    keep = torch.tensor([True, False, True, False, True])
    out = Policy().compact(state, keep)
    assert out["a"].tolist() == [0, 2, 4] and out["b"].tolist() == [[0, 1], [4, 5], [8, 9]]


def test_decide_compares_in_the_score_dtype():
    score = torch.tensor([0.7], dtype=torch.float32)  # 0.699999988...
    assert Confidence().decide(score, 0.7).item()  # float32(0.7) >= float32(0.7)
    assert Confidence().decide(score, torch.tensor(0.7, dtype=torch.float64)).item()
    assert Entropy().decide(torch.tensor([0.3]), 0.3).item()


@pytest.mark.parametrize("pol", [Confidence(0.8), Entropy(0.5), Patience(3), _random_ztw()])
def test_policies_round_trip_through_dicts(pol):
    import json

    back = policy_from_dict(json.loads(json.dumps(pol.to_dict())))
    assert type(back) is type(pol) and back.threshold == pol.threshold
    lg = _logits(3)
    assert all(torch.equal(a, b) for a, b in zip(back.scores(lg), pol.scores(lg)))


def test_unknown_policies_and_bad_dicts_are_refused():
    with pytest.raises(ConfigError, match="unknown policy 'nope'"):
        make_policy("nope")
    with pytest.raises(ConfigError, match="name"):
        policy_from_dict({"threshold": 0.5})
    with pytest.raises(ConfigError, match="confidence"):
        make_policy("confidence", weight=1)


def test_a_user_written_policy_plugs_into_the_sweep():
    class Margin(Policy):
        name = "margin"

        def step(self, j, logits, state):
            top2 = logits.softmax(-1).topk(2, dim=-1).values  # [B, 2]
            return Step(top2[:, 0] - top2[:, 1], logits.argmax(-1), state)

    lg = _logits()
    s, p = Margin().scores(lg)
    idx = exit_indices(s, torch.tensor([0.3]), "above")[0]
    naive = [next((j for j in range(E - 1) if s[j, n] >= 0.3), E - 1) for n in range(N)]
    assert idx.tolist() == naive
    assert set(POLICIES.names()) >= {"confidence", "entropy", "patience", "ztw"}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "0.9", True])
def test_a_threshold_that_is_not_a_finite_number_is_refused_when_the_policy_is_made(bad):
    with pytest.raises(ConfigError, match=r"policy 'confidence': threshold .* is not a finite number; give a number "
                                          r"in the policy's range, or None to sweep thresholds"):
        make_policy("confidence", threshold=bad)
    assert make_policy("confidence", threshold=0.9).threshold == 0.9
