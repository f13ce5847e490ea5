"""Staged ONNX export and the onnxruntime router: same logits (1e-4) and same exit decisions as PyTorch."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from exitlab.data import load_dataset
from exitlab.data.datasets import DEBIAN_FASHION_MNIST
from exitlab.deploy.export import ExportError, OnnxModel, export_onnx, onnx_export, opset_range, read_manifest
from exitlab.errors import ExitlabError
from exitlab.evaluation.inference import early_exit
from exitlab.evaluation.policies import Policy, make_policy
from exitlab.models import BACKBONES, build_model
from exitlab.models.costs import exit_costs

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
            make_policy("ztw", weight=torch.rand(E - 1, E - 1, generator=g),
                        bias=0.1 * torch.randn(E - 1, C, generator=g))]


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


@pytest.mark.parametrize("edit, message", [
    (lambda g: g.update(file="../stage_0.onnx"), "'../stage_0.onnx' is not a plain file name"),
    (lambda g: g.update(file="/etc/passwd"), "'/etc/passwd' is not a plain file name"),
    (lambda g: g.update(file="sub\\stage_0.onnx"), "is not a plain file name"),
    (lambda g: g.update(file=".."), "'..' is not a plain file name"),
    (lambda g: g.update(file=7), "7 is not a plain file name"),
])
def test_manifest_names_only_files_inside_the_export(cnn, tmp_path, edit, message):
    d = _copy(cnn[1], tmp_path)
    _edit_manifest(d, lambda m: edit(m["graphs"][0]))
    with pytest.raises(ExportError, match=message):
        read_manifest(d, verify_files=False)  # refused even without reading the files


def test_symlink_out_of_the_export_is_refused(cnn, tmp_path):
    d = _copy(cnn[1], tmp_path)
    outside = tmp_path / "elsewhere.onnx"
    (d / "stage_1.onnx").rename(outside)
    (d / "stage_1.onnx").symlink_to(outside)  # same bytes, same checksum, but outside the folder
    with pytest.raises(ExportError, match="stage_1.onnx is a link to .*elsewhere.onnx, outside the export folder"):
        OnnxModel(d)
    (d / "stage_1.onnx").unlink()
    (d / "stage_1.onnx").symlink_to("stage_1.onnx.real")  # a link that stays inside is fine
    outside.rename(d / "stage_1.onnx.real")
    OnnxModel(d)


def _graph_opsets(d) -> dict[str, int]:
    import onnx

    return {g.file: [o.version for o in onnx.load(str(d / g.file)).opset_import if o.domain in ("", "ai.onnx")][0]
            for g in read_manifest(d).graphs}


def _snapshot(d) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_default_opset_is_the_one_written_and_recorded(cnn):
    man = read_manifest(cnn[1])
    assert man.opset is not None and set(_graph_opsets(cnn[1]).values()) == {man.opset}


def test_opset_is_honoured_for_every_graph_and_replaces_the_previous_export(cnn, tmp_path):
    d = _copy(cnn[1], tmp_path)  # a previous 3-stage export
    lo, hi = opset_range()
    opset = 21 if lo <= 21 <= hi else hi
    model = tiny_model("resnet8", [1], img=16, width=4)
    man = export_onnx(model, d, opset=opset)
    assert man.opset == opset and _graph_opsets(d) == {"stage_0.onnx": opset, "stage_1.onnx": opset}
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json", "stage_0.onnx", "stage_1.onnx"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no partial or old folder left behind
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        assert np.allclose(OnnxModel(d).all_exits(x.numpy())[-1], model(x)[-1].numpy(), atol=1e-4)


@pytest.mark.parametrize("opset", [13, 17, 10**6, "18", True])
def test_unsupported_opset_is_refused_before_anything_is_written(tmp_path, opset):
    lo, hi = opset_range()
    with pytest.raises(ExitlabError, match=f"--opset {opset!r} is not supported: the exporter writes ONNX opsets "
                                           f"{lo}..{hi}; pass one of those or leave --opset out"):
        export_onnx(tiny_model("resnet8", [1], img=16, width=4), tmp_path / "o", opset=opset)
    assert list(tmp_path.iterdir()) == []


def test_failed_reexport_leaves_the_previous_export_intact(cnn, tmp_path, monkeypatch):
    d = _copy(cnn[1], tmp_path)
    before = _snapshot(d)
    real, calls = onnx_export._export_graph, []

    def export_graph(*args):
        calls.append(args[2].name)
        if len(calls) == 2:
            raise ExitlabError("injected failure in the second graph")
        return real(*args)

    monkeypatch.setattr(onnx_export, "_export_graph", export_graph)
    with pytest.raises(ExitlabError, match="injected failure in the second graph"):
        export_onnx(tiny_model("resnet8", [1], img=16, width=4), d, verify=False)
    assert calls == ["stage_0.onnx", "stage_1.onnx"]
    assert _snapshot(d) == before  # byte-identical
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # the partial folder is gone
    OnnxModel(d).predict(np.zeros((2, *SHAPE), np.float32))


def test_a_graph_in_another_opset_fails_the_export(cnn, monkeypatch):
    """The exporter silently keeps opset 18 where it cannot convert; such a graph fails the export, not the user."""
    man = read_manifest(cnn[1])
    assert onnx_export._check_opsets(cnn[1], man.graphs, man.opset) == man.opset
    real = onnx_export.graph_opset
    monkeypatch.setattr(onnx_export, "graph_opset", lambda p: real(p) - (p.name == "stage_1.onnx"))
    with pytest.raises(ExportError, match=f"wrote {{'stage_1.onnx': {man.opset - 1}}} instead of opset {man.opset} "
                                          "for every graph"):
        onnx_export._check_opsets(cnn[1], man.graphs, man.opset)
    with pytest.raises(ExportError, match="instead of opset"):
        onnx_export._check_opsets(cnn[1], man.graphs, None)  # without --opset: all graphs must still agree


@pytest.mark.parametrize("target, message", [
    (lambda t: (t / "notes").mkdir() or (t / "notes" / "todo.txt").write_text("mine"), "holds files that are not an "
     "exitlab export; exporting replaces the whole folder, so pass a new or empty folder"),
    (lambda t: (t / "notes").write_text("a file"), "is a file, not a folder"),
    (lambda t: (t / "real").mkdir() or (t / "notes").symlink_to(t / "real"), "is a symbolic link"),
])
def test_export_refuses_a_target_it_would_damage(tmp_path, target, message):
    target(tmp_path)
    before = {p: (p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*")}
    with pytest.raises(ExitlabError, match=f"export folder {tmp_path / 'notes'} {message}"):
        export_onnx(tiny_model("resnet8", [1], img=16, width=4), tmp_path / "notes")
    assert {p: (p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*")} == before


# Every registered backbone at a tiny size (16x16, 1 channel). resnet8 and vit are exported in the fast fixtures
# above; the rest take 10-60 s each on 2 shared cores and run with -m slow.
TINY = {
    "resnet8": dict(width=4), "resnet20": dict(width=4), "resnet32": dict(width=4), "resnet56": dict(width=4),
    "resnet110": dict(width=4), "resnet18_cifar": dict(width=4), "resnet34_cifar": dict(width=4),
    "resnet50_cifar": dict(width=4), "wrn28": dict(k=1), "vgg16_bn": dict(width_mult=0.0625),
    "mobilenetv2": dict(width_mult=0.25, last_channels=32), "vit": dict(dim=32, depth=4, heads=2),
    "vit_tiny": dict(dim=24, depth=3, heads=3), "vit_small": dict(dim=24, depth=3, heads=6),
    "msdnet": dict(blocks=5, base=1, step=1, channels=4, growth=2, head_width=8),
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
