"""Loss landscapes: the origin is the model itself, directions are filter-normalised, the model is restored."""

import json

import pytest
import torch

from exitlab.analysis.common import exit_metrics
from exitlab.analysis.landscape import (
    filter_normalized_direction,
    grid_coords,
    landscape_1d,
    landscape_2d,
    select_params,
)
from exitlab.errors import ExitlabError
from exitlab.models import build_model
from exitlab.training.objective import exit_losses


def _trained_ish_model():
    """A small model whose BatchNorm running statistics are not the initial ones."""
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=7, in_chans=1, img_size=16, exits=[0, 1])
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 1, 16, 16) * 2 + 0.5)
    return model.eval()


def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(40, 1, 16, 16, generator=g), torch.randint(0, 7, (40,), generator=g))]


@pytest.mark.parametrize("params", ["all", "backbone", "heads"])
def test_origin_of_the_plane_is_the_models_own_loss(params):
    model = _trained_ish_model()
    (x, y), = _batches()
    with torch.no_grad():
        own = exit_losses(model(x), y)  # [E]
        own_acc = (torch.stack(model(x)).argmax(-1) == y).double().mean(1)
    w = torch.tensor([0.2, 0.3, 0.5])
    out = landscape_2d(model, _batches(), steps=3, span=0.5, params=params, weights=w)
    assert out["coords"][1] == 0.0
    centre = [out["loss"][k][1][1] for k in range(3)]
    assert centre == pytest.approx(own.tolist(), abs=1e-5)
    assert [out["accuracy"][k][1][1] for k in range(3)] == pytest.approx(own_acc.tolist())
    assert out["objective"][1][1] == pytest.approx(float((w * own).sum()), abs=1e-5)
    assert out["loss"][0][0][0] != pytest.approx(centre[0], abs=1e-4)  # and away from it the loss moves
    json.dumps(out, allow_nan=False)


def test_origin_of_a_line_is_the_models_own_loss_and_the_model_is_restored():
    model = _trained_ish_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (x, y), = _batches()
    out = landscape_1d(model, _batches(), steps=5, span=1.0)
    own = exit_losses(model(x), y).tolist()
    assert [row[2] for row in out["loss"]] == pytest.approx(own, abs=1e-5)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_directions_are_filter_normalised_and_skip_1d_parameters():
    model = _trained_ish_model()
    params = select_params(model, "all")
    dirs = filter_normalized_direction(params, torch.Generator().manual_seed(0))
    for p, d in zip(params, dirs):
        if p.dim() <= 1:
            assert torch.count_nonzero(d) == 0
        else:
            assert torch.allclose(d.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1), rtol=1e-4, atol=1e-6)


def test_heads_plane_leaves_the_final_exit_alone_and_matches_a_manual_move():
    model = _trained_ish_model()
    out = landscape_2d(model, _batches(), steps=3, span=0.5, params="heads", seed=4)
    final = torch.tensor(out["loss"][-1])
    assert torch.allclose(final, final[1, 1].expand_as(final))  # heads do not touch the backbone's classifier
    heads = select_params(model, "heads")
    g = torch.Generator().manual_seed(4)
    d1, d2 = filter_normalized_direction(heads, g), filter_normalized_direction(heads, g)
    with torch.no_grad():
        for p, a, b in zip(heads, d1, d2):
            p.add_(a, alpha=-0.5).add_(b, alpha=-0.5)  # the corner coords[0], coords[0]
    loss, _ = exit_metrics(model, _batches())
    assert [out["loss"][k][0][0] for k in range(3)] == pytest.approx(loss.tolist(), abs=1e-5)


def test_reestimated_batchnorm_buffers_are_restored():
    model = _trained_ish_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    landscape_1d(model, _batches(), steps=3, bn="reestimate", bn_batches=_batches())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_landscape_bad_input():
    model = _trained_ish_model()
    with pytest.raises(ExitlabError, match="params must be one of"):
        landscape_1d(model, _batches(), params="ics")
    with pytest.raises(ExitlabError, match="at least 2 steps"):
        grid_coords(1, 1.0)
    with pytest.raises(ExitlabError, match="needs batches"):
        landscape_1d(model, _batches(), steps=3, bn="reestimate")


def test_landscape_figure_shares_colour_levels_and_labels_the_direction_axes():
    from exitlab.analysis.plots import draw

    model = _trained_ish_model()
    a = landscape_2d(model, _batches(), steps=3, span=0.5)
    b = landscape_2d(model, _batches(), steps=3, span=0.5, seed=1)
    b["objective"] = [[v * 3 for v in row] for row in b["objective"]]  # a panel with another range of values
    fig = draw({"analysis": "landscape", "runs": [{"label": "a", **a}, {"label": "b", **b}]})
    sets = [c.levels.tolist() for ax in fig.axes for c in ax.collections if getattr(c, "filled", False)]
    assert len(sets) == 2 * 4 and all(s == sets[0] for s in sets)  # 3 exits + objective per run, one scale
    lo, hi = sets[0][0], sets[0][-1]
    for run in (a, b):
        for z in [*run["loss"], run["objective"]]:
            vals = torch.tensor(z).log()
            assert lo <= float(vals.min()) + 1e-9 and float(vals.max()) <= hi + 1e-9
    labels = {ax.get_xlabel() for ax in fig.axes} | {ax.get_ylabel() for ax in fig.axes}
    assert "alpha along d1" in labels and "beta along d2" in labels
    assert "filter-normalised" in fig.get_suptitle()
