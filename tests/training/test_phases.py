import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from exitlab.errors import ConfigError
from exitlab.runs.components import REGIMES, sdn_weights, uniform_weights
from exitlab.training.loop import lr_at
from exitlab.training.objective import exit_losses
from exitlab.training.phases import explicit_weights, loss_weights, split_budget


def test_regimes_are_the_papers():
    assert REGIMES.get("joint") == (2,) and REGIMES.get("disjoint") == (1, 3) and REGIMES.get("mixed") == (1, 2)
    with pytest.raises(ConfigError, match="unknown regime 'mixd'; choose one of: disjoint, joint, layerskip, mixed"):
        REGIMES.get("mixd")
    with pytest.raises(ValueError, match="already registered"):
        REGIMES.register("joint", (2,))


@given(st.integers(1, 64))
def test_named_weights_sum_to_one(n):
    for fn in (uniform_weights, sdn_weights):
        w = fn(n)
        assert w.shape == (n,) and (w > 0).all()
        assert abs(float(w.sum()) - 1) < 1e-6
    assert (sdn_weights(n).diff() > 0).all() if n > 1 else True


@given(st.lists(st.floats(0.01, 100), min_size=1, max_size=20))
def test_explicit_weights_are_normalised(ws):
    w = explicit_weights(ws, len(ws))
    assert abs(float(w.sum()) - 1) < 1e-5
    with pytest.raises(ConfigError, match="weights given but this phase trains"):
        loss_weights(ws, len(ws) + 1)


@given(st.integers(2, 40), st.floats(0.05, 0.95))
def test_budget_split_sums_to_the_budget(budget, share):
    for kinds in ((2,), (1, 3), (1, 2), (1, 2, 3), (2, 3)):
        parts = split_budget(kinds, budget, share)
        assert sum(parts) == budget and len(parts) == len(kinds)


def test_vectorised_loss_equals_a_loop_over_exits():
    torch.manual_seed(0)
    outs = [torch.randn(9, 7) for _ in range(4)]
    y = torch.randint(0, 7, (9,))
    loop = torch.stack([F.cross_entropy(o, y) for o in outs])
    torch.testing.assert_close(exit_losses(outs, y), loop)


def test_cosine_schedule_ends_at_zero_and_starts_at_peak(tiny_cfg):
    from exitlab.training.phases import plan_phases

    phase = plan_phases(tiny_cfg(regime="joint"))[0]
    assert lr_at(phase, 0, 10) == pytest.approx(phase.options.lr)
    assert lr_at(phase, 10, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(phase, 3, 10) > lr_at(phase, 4, 10)
