"""Mode connectivity: endpoints are the models themselves, barriers follow their definition, bad input is refused."""

import json

import pytest
import torch

from exitlab.analysis.common import exit_metrics
from exitlab.analysis.connectivity import bezier_path, connectivity, linear_path
from exitlab.errors import ExitlabError
from exitlab.models import build_model


def _model(seed, exits=(0, 1)):
    torch.manual_seed(seed)
    model = build_model("resnet8", num_classes=5, in_chans=1, img_size=16, exits=list(exits))
    model.train()
    with torch.no_grad():  # give each model its own BatchNorm statistics
        for _ in range(2):
            model(torch.randn(32, 1, 16, 16) * (1 + seed))
    return model.eval()


def _batches(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(24, 1, 16, 16, generator=g), torch.randint(0, 5, (24,), generator=g)) for _ in range(n)]


def test_linear_path_endpoints_are_the_models_own_losses_and_accuracies():
    a, b = _model(0), _model(1)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    out = linear_path(a, b, _batches(), _batches(seed=2), points=4)
    assert out["t"] == [0.0, 1 / 3, 2 / 3, 1.0]
    for model, col in ((a, 0), (b, -1)):
        loss, acc = exit_metrics(model, _batches())
        assert [row[col] for row in out["loss"]] == pytest.approx(loss.tolist(), abs=1e-9)
        assert [row[col] for row in out["accuracy"]] == pytest.approx(acc.tolist(), abs=1e-12)
    loss = torch.tensor(out["loss"], dtype=torch.float64)
    assert out["barrier"]["loss"] == pytest.approx((loss.max(1).values - (loss[:, 0] + loss[:, -1]) / 2).tolist())
    obj = torch.tensor(out["objective"], dtype=torch.float64)
    assert out["objective"][0] == pytest.approx(float(loss[:, 0].mean()))  # uniform weights by default
    assert out["barrier"]["objective"] == pytest.approx(float(obj.max() - (obj[0] + obj[-1]) / 2))
    t = torch.tensor(out["t"], dtype=torch.float64)
    line = (1 - t) * obj[0] + t * obj[-1]
    assert out["above_line"]["objective"] == pytest.approx(float((obj - line).max()))
    assert out["above_line"]["objective"] >= 0  # the endpoints themselves are on the line
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in before.items())  # the inputs are not modified
    json.dumps(out, allow_nan=False)


def test_path_between_a_model_and_itself_has_no_barrier_without_batchnorm():
    torch.manual_seed(0)
    vit = build_model("vit", num_classes=5, in_chans=1, img_size=16, exits=[1], head="cls",
                      backbone_kwargs=dict(dim=32, depth=3, heads=2, patch_size=4)).eval()
    out = linear_path(vit, vit, _batches(1), _batches(1), points=5)
    loss = torch.tensor(out["loss"], dtype=torch.float64)
    assert torch.allclose(loss, loss[:, :1].expand_as(loss), atol=1e-6)
    assert max(abs(v) for v in out["barrier"]["loss"]) < 1e-6


def test_different_architectures_are_refused():
    with pytest.raises(ExitlabError, match="different architectures.*exits"):
        connectivity([_model(0), _model(1, exits=(1,))], ["joint", "mixed"], _batches(1), _batches(1))
    with pytest.raises(ExitlabError, match="2 or 3 models"):
        connectivity([_model(0)], ["joint"], _batches(1), _batches(1))


def test_three_models_give_three_paths_and_a_plane_with_true_geometry():
    models = [_model(s) for s in range(3)]
    out = connectivity(models, ["joint", "disjoint", "mixed"], _batches(1), _batches(1), points=3, plane_steps=3)
    assert [(p["from"], p["to"]) for p in out["paths"]] == [("joint", "disjoint"), ("joint", "mixed"),
                                                            ("disjoint", "mixed")]
    flat = [torch.cat([p.detach().double().flatten() for p in m.parameters()]) for m in models]
    pos = torch.tensor(out["plane"]["positions"], dtype=torch.float64)
    assert float(pos[1].norm()) == pytest.approx(float((flat[1] - flat[0]).norm()), rel=1e-9)
    assert float(pos[2].norm()) == pytest.approx(float((flat[2] - flat[0]).norm()), rel=1e-9)
    assert float((pos[2] - pos[1]).norm()) == pytest.approx(float((flat[2] - flat[1]).norm()), rel=1e-9)
    assert torch.tensor(out["plane"]["loss"]).shape == (3, 3, 3)


def test_bezier_curve_keeps_the_endpoints():
    a, b = _model(0), _model(1)
    out = bezier_path(a, b, _batches(), _batches(), _batches(seed=2), steps=3, points=3)
    loss, _ = exit_metrics(b, _batches())
    assert out["kind"] == "bezier" and [row[-1] for row in out["loss"]] == pytest.approx(loss.tolist(), abs=1e-9)
