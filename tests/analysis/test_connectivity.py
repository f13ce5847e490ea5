"""Mode connectivity: one BatchNorm rule for every point, barriers follow their definition, seed baselines, weight
matching recovers permutations, bad input is refused."""

import copy
import itertools
import json

import numpy as np
import pytest
import torch

from exitlab.analysis.common import exit_metrics, reestimate_bn
from exitlab.analysis.connectivity import bezier_path, connectivity, linear_path
from exitlab.analysis.matching import align, apply_permutation, linear_assignment, permutation_spec
from exitlab.errors import ExitlabError
from exitlab.models import build_model


def _model(seed, exits=(0, 1), backbone="resnet8", **kwargs):
    torch.manual_seed(seed)
    model = build_model(backbone, num_classes=5, in_chans=1, img_size=16, exits=list(exits), **kwargs)
    model.train()
    with torch.no_grad():  # give each model its own BatchNorm statistics
        for _ in range(2):
            model(torch.randn(32, 1, 16, 16) * (1 + seed))
    return model.eval()


def _batches(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(24, 1, 16, 16, generator=g), torch.randint(0, 5, (24,), generator=g)) for _ in range(n)]


def _reestimated(model, bn_batches):
    work = copy.deepcopy(model)
    reestimate_bn(work, bn_batches)
    return exit_metrics(work, _batches())


def test_every_point_endpoints_included_has_batchnorm_reestimated_on_the_same_samples():
    a, b = _model(0), _model(1)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    bn = _batches(seed=2)
    out = linear_path(a, b, _batches(), bn, points=4)
    assert out["t"] == [0.0, 1 / 3, 2 / 3, 1.0]
    for model, col, own in ((a, 0, out["endpoints_as_trained"][0]), (b, -1, out["endpoints_as_trained"][1])):
        loss, acc = _reestimated(model, bn)
        assert [row[col] for row in out["loss"]] == pytest.approx(loss.tolist(), abs=1e-9)
        assert [row[col] for row in out["accuracy"]] == pytest.approx(acc.tolist(), abs=1e-12)
        loss, acc = exit_metrics(model, _batches())  # as trained: the models' own statistics
        assert own["loss"] == pytest.approx(loss.tolist(), abs=1e-9) and own["accuracy"] == acc.tolist()
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


def test_a_batchnorm_model_connected_to_itself_has_exactly_zero_barrier():
    a = _model(3)
    out = linear_path(a, a, _batches(1), _batches(1, seed=4), points=5)
    loss = torch.tensor(out["loss"], dtype=torch.float64)
    assert torch.equal(loss, loss[:, :1].expand_as(loss))  # every point is the same network, evaluated alike
    assert out["barrier"]["loss"] == [0.0] * 3 and out["barrier"]["objective"] == 0.0
    assert out["above_line"]["objective"] == 0.0 and out["barrier"]["accuracy_drop"] == [0.0] * 3


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
    assert all(p["role"] == "pair" for p in out["paths"]) and out["plane"]["runs"] == ["joint", "disjoint", "mixed"]
    flat = [torch.cat([p.detach().double().flatten() for p in m.parameters()]) for m in models]
    pos = torch.tensor(out["plane"]["positions"], dtype=torch.float64)
    assert float(pos[1].norm()) == pytest.approx(float((flat[1] - flat[0]).norm()), rel=1e-9)
    assert float(pos[2].norm()) == pytest.approx(float((flat[2] - flat[0]).norm()), rel=1e-9)
    assert float((pos[2] - pos[1]).norm()) == pytest.approx(float((flat[2] - flat[1]).norm()), rel=1e-9)
    assert torch.tensor(out["plane"]["loss"]).shape == (3, 3, 3)
    assert out["notes"] and "permutation" in " ".join(out["notes"]) and "no seed baseline" in out["notes"][-1]


def test_seed_baselines_appear_next_to_the_regime_pairs():
    j0, m0, j1, m1, j2 = _model(0), _model(1), _model(2), _model(3), _model(4)
    out = connectivity([j0, m0, j1, m1], ["joint", "mixed", "joint", "mixed"], _batches(1), _batches(1),
                       seeds=[0, 0, 1, 1], baselines=[(j2, "joint", 2)], points=3)
    roles = [(p["role"], p["from"], p["seed_from"], p["to"], p["seed_to"]) for p in out["paths"]]
    assert roles == [("pair", "joint", 0, "mixed", 0), ("pair", "joint", 1, "mixed", 1),
                     ("baseline", "joint", 0, "joint", 1), ("baseline", "joint", 0, "joint", 2),
                     ("baseline", "mixed", 0, "mixed", 1)]
    summary = {(s["role"], s["from"], s["to"]): s for s in out["summary"]}
    pair, base = summary[("pair", "joint", "mixed")], summary[("baseline", "joint", "joint")]
    assert pair["barrier_objective"]["n"] == 2 and base["barrier_objective"]["n"] == 2
    vals = [p["barrier"]["objective"] for p in out["paths"][:2]]
    assert pair["barrier_objective"]["mean"] == pytest.approx(sum(vals) / 2)
    assert pair["barrier_objective"]["std"] == pytest.approx(float(torch.tensor(vals).std()))
    assert summary[("baseline", "mixed", "mixed")]["barrier_objective"]["std"] is None  # one baseline: no spread
    assert not any("no seed baseline" in n for n in out["notes"])
    with pytest.raises(ExitlabError, match="matches none of the compared regimes"):
        connectivity([j0, m0], ["joint", "mixed"], _batches(1), _batches(1), baselines=[(j2, "disjoint", 2)])
    json.dumps(out, allow_nan=False)


def test_bezier_curve_keeps_the_endpoints():
    a, b = _model(0), _model(1)
    bn = _batches(seed=2)
    out = bezier_path(a, b, _batches(), _batches(), bn, steps=3, points=3)
    loss, _ = _reestimated(b, bn)
    assert out["kind"] == "bezier" and [row[-1] for row in out["loss"]] == pytest.approx(loss.tolist(), abs=1e-9)


# ---------------------------------------------------------------- weight matching


def test_linear_assignment_is_optimal_on_small_matrices():
    rng = np.random.default_rng(0)
    for n in range(1, 7):
        for _ in range(10):
            s = rng.normal(size=(n, n))
            best = max(sum(s[i, p[i]] for i in range(n)) for p in itertools.permutations(range(n)))
            col = linear_assignment(s)
            assert sorted(col.tolist()) == list(range(n)) and sum(s[i, col[i]] for i in range(n)) == pytest.approx(best)


@pytest.mark.parametrize("backbone, kwargs", [
    ("resnet8", {}),
    ("resnet50_cifar", {"head": "pooled", "backbone_kwargs": {"width": 4}}),  # bottleneck blocks
    ("wrn28", {"head": "mlp2", "backbone_kwargs": {"k": 1}}),  # pre-activation blocks
])
def test_weight_matching_recovers_a_random_permutation(backbone, kwargs):
    a = _model(0, backbone=backbone, **kwargs)
    spec, sizes = permutation_spec(a)
    g = torch.Generator().manual_seed(5)
    perms = {k: torch.randperm(n, generator=g) for k, n in sizes.items()}
    b = copy.deepcopy(a)
    b.load_state_dict(apply_permutation(a.state_dict(), spec, perms))
    x = _batches(1)[0][0]
    with torch.no_grad():  # the spec is right: a permuted copy computes the same function
        assert all(torch.allclose(u, v, atol=1e-5) for u, v in zip(a(x), b(x)))
    assert any(not torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in spec)
    aligned, info = align(a, b)
    assert all(torch.equal(aligned[k], v) for k, v in a.state_dict().items())  # weights equal after alignment
    assert info["distance_after"] == 0.0 < info["distance_before"] and info["units_moved"] > 0


def test_aligned_path_to_a_permuted_copy_has_no_barrier():
    a = _model(0)
    spec, sizes = permutation_spec(a)
    g = torch.Generator().manual_seed(6)
    b = copy.deepcopy(a)
    b.load_state_dict(apply_permutation(a.state_dict(), spec, {k: torch.randperm(n, generator=g)
                                                                for k, n in sizes.items()}))
    plain = linear_path(a, b, _batches(1), _batches(1, seed=2), points=3)
    aligned = linear_path(a, b, _batches(1), _batches(1, seed=2), points=3, align=True)
    assert aligned["barrier"]["objective"] == 0.0 and aligned["alignment"]["distance_after"] == 0.0
    assert plain["loss"][-1][1] != pytest.approx(plain["loss"][-1][0], abs=1e-3)  # the midpoint is another network
    with pytest.raises(ExitlabError, match="built-in ResNets"):
        permutation_spec(build_model("vgg16_bn", num_classes=5, in_chans=1, img_size=16, exits=[2]))
