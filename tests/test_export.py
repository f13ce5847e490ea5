"""Staged ONNX export and the onnxruntime router: same logits (1e-4) and same exit decisions as PyTorch."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from exitlab.costs import exit_costs
from exitlab.data import load_dataset
from exitlab.data.datasets import DEBIAN_FASHION_MNIST
from exitlab.export import ExportError, OnnxModel, export_onnx, read_manifest
from exitlab.inference import early_exit
from exitlab.models import BACKBONES, build_model
from exitlab.policies import Policy, make_policy

pytest.importorskip("onnxruntime")  # the CI installs the [export] extra; this only guards bare installs

C = 7  # an odd class count shows shape bugs
SHAPE = (1, 28, 28)  # Fashion-MNIST's, so one export serves random and real inputs


def tiny_model(backbone: str, exits, *, head: str = "sdn", cascade: bool = False, img: int = 28, **kw):
    """A small seeded model in eval mode, with BatchNorm statistics and cascade weights away from their init."""
    torch.manual_seed(0)
    m = build_model(backbone, num_classes=C, in_chans=1, img_size=img, exits=exits, head=head,
                    head_kwargs={"cascade": cascade}, backbone_kwargs=kw)
    with torch.no_grad():
        m.train()
        for _ in range(2):
            m(torch.randn(16, 1, img, img) * 1.5 + 0.2)
        for h in m.heads:
            if getattr(h, "cascade", None) is not None:
                torch.nn.init.normal_(h.cascade.weight, std=0.5)
    return m.eval()


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """ResNet-8 with cascading (ZTW) SDN heads after blocks 0 and 1: three stages, two take previous logits."""
    m = tiny_model("resnet8", [0, 1], cascade=True, width=4)
    out = tmp_path_factory.mktemp("cnn")
    policy = make_policy("confidence", threshold=0.5)
    export_onnx(m, out, classes=[f"c{k}" for k in range(C)], policy=policy.to_dict())
    return m, out


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    m = tiny_model("vit", [1], head="cls", dim=32, depth=3, heads=2, patch_size=7)
    out = tmp_path_factory.mktemp("vit")
    export_onnx(m, out)
    return m, out


@pytest.fixture(scope="module")
def fashion():
    """256 Fashion-MNIST test images, normalised with the training set's statistics."""
    if not DEBIAN_FASHION_MNIST.is_dir():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    ds = load_dataset("fashion_mnist", download=False)
    mean, std = ds.train_x.float().div(255).mean(), ds.train_x.float().div(255).std()
    return (ds.test_x[:256].float().div(255) - mean) / std  # [256, 1, 28, 28]


def gap_threshold(policy: Policy, logits: list[torch.Tensor]) -> float:
    """A threshold in a wide gap between the scores of the early exits, near their median: no sample's decision
    can flip on float noise, and a fair share of samples leave early."""
    scores, _ = policy.scores(torch.stack(logits))  # [E, N]
    s = scores[:-1].flatten().double().sort().values
    if policy.integer:
        return float(torch.clamp(s.median().round(), 1, len(logits)))
    mid = slice(len(s) // 4, 3 * len(s) // 4)
    gaps = s[1:][mid] - s[:-1][mid]
    i = int(gaps.argmax()) + mid.start
    assert gaps.max() > 1e-5, "scores too dense to pick a safe threshold"
    return float((s[i] + s[i + 1]) / 2)


def policies_for(model) -> list[Policy]:
    E = model.num_exits
    g = torch.Generator().manual_seed(1)
    return [make_policy("confidence"), make_policy("entropy"), make_policy("patience"),
            make_policy("ztw", weight=torch.rand(E, E, generator=g), bias=0.1 * torch.randn(E, E, C, generator=g))]


def assert_same_as_pytorch(model, rt: OnnxModel, x: torch.Tensor) -> set[int]:
    """Every exit's logits within 1e-4, and identical decisions under every built-in policy; returns exits used."""
    with torch.no_grad():
        ref = model(x)
    tol = 1e-4 * max(1.0, max(r.abs().max().item() for r in ref))  # untrained deep nets can have huge logits
    got = rt.all_exits(x.numpy())
    for k, (g, r) in enumerate(zip(got, ref)):
        assert g.shape == tuple(r.shape)
        assert np.abs(g - r.numpy()).max() < tol, f"exit {k} logits differ"
    costs = exit_costs(model).flops
    used: set[int] = set()
    for policy in policies_for(model):
        policy.threshold = gap_threshold(policy, list(ref))
        want = early_exit(model, x, policy, costs=costs)
        res = rt.predict(x.numpy(), policy)
        assert np.array_equal(res.exit, want.exits.numpy()), f"{policy.name}: exit decisions differ"
        assert np.array_equal(res.pred, want.preds.numpy()), f"{policy.name}: predictions differ"
        assert np.abs(res.logits - want.logits.numpy()).max() < tol
        assert np.array_equal(res.flops, want.flops.numpy().astype(np.int64))
        used |= set(res.exit.tolist())
    return used


@pytest.mark.parametrize("which", ["cnn", "vit"])
def test_onnx_matches_pytorch_on_random_inputs(which, request):
    model, out = request.getfixturevalue(which)
    torch.manual_seed(3)
    used = assert_same_as_pytorch(model, OnnxModel(out), torch.randn(64, *SHAPE))
    assert len(used) >= 2, "thresholds should send samples to more than one exit"


@pytest.mark.parametrize("which", ["cnn", "vit"])
def test_onnx_matches_pytorch_on_fashion_mnist(which, request, fashion):
    model, out = request.getfixturevalue(which)
    used = assert_same_as_pytorch(model, OnnxModel(out), fashion)
    assert len(used) >= 2


def test_manifest_describes_stages(cnn):
    model, out = cnn
    man = read_manifest(out)
    assert man.layout == "staged" and man.num_exits == 3 and len(man.graphs) == 3
    assert [g.inputs for g in man.graphs] == [["x"], ["feature_in", "prev_logits"], ["feature_in"]]
    assert [g.outputs for g in man.graphs] == [["feature", "logits"], ["feature", "logits"], ["logits"]]
    assert [g.blocks for g in man.graphs] == [[0, 1], [1, 2], [2, 3]]
    assert man.exit_flops == exit_costs(model).flops.long().tolist()  # cumulative: backbone so far + heads so far
    assert all(a < b for a, b in zip(man.exit_flops, man.exit_flops[1:]))
    assert man.exit_flops == np.cumsum([g.flops for g in man.graphs]).tolist()
    assert man.policy == {"name": "confidence", "threshold": 0.5}
    assert man.classes[3] == "c3" and man.input_shape == list(SHAPE)


def test_dynamic_batch_and_router_compaction(cnn):
    model, out = cnn
    rt = OnnxModel(out)
    for b in (1, 5):
        x = torch.randn(b, *SHAPE)
        with torch.no_grad():
            ref = model(x)
        assert np.allclose(rt.all_exits(x.numpy())[-1], ref[-1].numpy(), atol=1e-4)
    res = rt.predict(np.zeros((0, *SHAPE), np.float32))
    assert res.exit.shape == (0,)


def test_router_runs_later_stages_only_on_survivors(cnn, monkeypatch):
    _, out = cnn
    rt = OnnxModel(out, policy=make_policy("confidence", threshold=0.0))  # everyone leaves at exit 0
    seen = []
    for s in rt.sessions:
        run = s.run
        monkeypatch.setattr(s, "run", lambda names, feeds, run=run: seen.append(len(next(iter(feeds.values()))))
                            or run(names, feeds), raising=False)
    res = rt.predict(np.random.default_rng(0).standard_normal((9, *SHAPE)).astype(np.float32))
    assert seen == [9] and (res.exit == 0).all() and (res.flops == rt.manifest.exit_flops[0]).all()


def test_wrong_input_shape_is_a_clear_error(cnn):
    from exitlab.errors import ExitlabError

    with pytest.raises(ExitlabError, match=r"expected \[batch, 1, 28, 28\]"):
        OnnxModel(cnn[1]).predict(np.zeros((2, 3, 28, 28), np.float32))


def _copy(src, tmp_path):
    dst = tmp_path / "export"
    shutil.copytree(src, dst)
    return dst


def _edit_manifest(d, fn) -> None:
    raw = json.loads((d / "manifest.json").read_text())
    fn(raw)
    (d / "manifest.json").write_text(json.dumps(raw))


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
    (lambda d: (d / "manifest.json").write_text((d / "manifest.json").read_text()[:100]), "not valid JSON"),
    (lambda d: (d / "stage_1.onnx").unlink(), "stage_1.onnx .* missing"),
    (lambda d: (d / "stage_2.onnx").write_bytes((d / "stage_2.onnx").read_bytes()[:500]), "checksum"),
    (lambda d: _edit_manifest(d, lambda m: m.update(format="other")), "not an exitlab ONNX manifest"),
    (lambda d: _edit_manifest(d, lambda m: m.update(num_exits=4)), "inconsistent"),
    (lambda d: _edit_manifest(d, lambda m: m.update(input_shape=[3, 28, 28])), "does not match its graphs"),
    (lambda d: _edit_manifest(d, lambda m: m["graphs"][0].update(input_shapes=[[1, 32, 32]])), "does not match"),
    (lambda d: _edit_manifest(d, lambda m: m.update(num_classes=10)), "10 classes"),
    (lambda d: _edit_manifest(d, lambda m: m["graphs"].reverse()), "does not match its graphs"),
])
def test_damaged_export_is_refused_with_a_clear_message(cnn, tmp_path, damage, message):
    d = _copy(cnn[1], tmp_path)
    damage(d)
    with pytest.raises(ExportError, match=message):
        OnnxModel(d)


def test_graph_from_another_export_is_refused(cnn, vit, tmp_path):
    d = _copy(cnn[1], tmp_path)
    shutil.copy(vit[1] / "stage_1.onnx", d / "stage_2.onnx")  # right name, wrong model
    _edit_manifest(d, lambda m: m["graphs"][2].update(sha256=read_manifest(vit[1]).graphs[1].sha256))
    with pytest.raises(ExportError, match="does not match its graphs|different models"):
        OnnxModel(d)


def test_missing_directory(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        OnnxModel(tmp_path / "nope")


# Every registered backbone at a tiny size (16x16, 1 channel). resnet8 and vit are exported in the fast fixtures
# above; the rest take 10-60 s each on 2 shared cores and run with -m slow.
TINY = {
    "resnet8": dict(width=4), "resnet20": dict(width=4), "resnet32": dict(width=4), "resnet56": dict(width=4),
    "resnet110": dict(width=4), "resnet18_cifar": dict(width=4), "resnet34_cifar": dict(width=4),
    "resnet50_cifar": dict(width=4), "wrn28": dict(k=1), "vgg16_bn": dict(width_mult=0.0625),
    "mobilenetv2": dict(width_mult=0.25, last_channels=32), "vit": dict(dim=32, depth=4, heads=2),
    "vit_tiny": dict(dim=24, depth=3, heads=3), "vit_small": dict(dim=24, depth=3, heads=6),
}


def test_every_backbone_has_a_tiny_export_config():
    assert sorted(TINY) == BACKBONES.names(), "add the new backbone to TINY so its export is tested"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(TINY) - {"resnet8", "vit"}))
def test_every_backbone_exports_and_matches(name, tmp_path):
    vit_like = name.startswith("vit")
    model = tiny_model(name, "every:2" if vit_like else "flops:2", head="cls" if vit_like else "sdn", img=16,
                       **TINY[name])
    man = export_onnx(model, tmp_path)
    assert man.num_exits == model.num_exits >= 2
    torch.manual_seed(4)
    assert_same_as_pytorch(model, OnnxModel(tmp_path), torch.randn(48, 1, 16, 16))
