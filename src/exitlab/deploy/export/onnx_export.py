"""Export a multi-exit model to ONNX with the dynamo exporter: one graph per stage, or one all-exits graph.

Data-dependent exits cannot live inside one exported graph, so the default ``staged`` layout writes one graph per
segment between exits and leaves routing to :mod:`exitlab.export.runtime`. Needs ``pip install 'exitlab[export]'``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from ...errors import ExitlabError
from ...models import HFSpec
from ...models.flops import count_flops
from ...runs.checkpoint import load
from ...runs.rundir import RunDir
from .folder import check_target, publish, staging
from .manifest import LAYOUTS, MANIFEST_NAME, ExportError, GraphEntry, Manifest, file_sha256, read_manifest
from .stages import AllExits, build_stages, example_inputs, stage_flops

log = logging.getLogger("exitlab")

TRACE_BATCH = 2  # example batch for tracing: not 0 or 1, which torch.export would specialise on
CHECK_BATCH = 3  # a different batch for the post-export check, which proves the batch dimension is dynamic
ATOL = 1e-4
MIN_OPSET = 18  # torch's dynamo exporter has no translations below 18; its down-conversion silently keeps 18


def require_export_deps() -> None:
    """Raise a clear error when the ``[export]`` extra is missing or torch is too old for the dynamo exporter."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExitlabError(f"ONNX export needs {', '.join(missing)}; install them with pip install 'exitlab[export]'")
    if tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < (2, 6):
        raise ExitlabError(f"ONNX export needs torch >= 2.6 (dynamo exporter), found {torch.__version__}")


def opset_range() -> tuple[int, int]:
    """The ONNX opsets an export can be written in: the dynamo exporter's lowest up to the installed onnx's newest."""
    import onnx

    return MIN_OPSET, onnx.defs.onnx_opset_version()


def check_opset(opset: int | None) -> None:
    """Refuse an opset the exporter would not honour for every graph (``None``: the exporter's default)."""
    if opset is None:
        return
    lo, hi = opset_range()
    if not isinstance(opset, int) or isinstance(opset, bool) or not lo <= opset <= hi:
        raise ExitlabError(f"--opset {opset!r} is not supported: the exporter writes ONNX opsets {lo}..{hi}; pass one "
                           "of those or leave --opset out for the exporter's default")


def graph_opset(path: Path) -> int:
    """The default-domain (``ai.onnx``) opset a written graph declares."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    versions = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise ExportError(f"{path.name} declares no ai.onnx opset; please report this with the model spec")
    return versions[0]


def _check_opsets(out: Path, entries: list[GraphEntry], opset: int | None) -> int:
    """Every graph must be written in the requested opset (or, without one, all in the same); returns it."""
    got = {e.file: graph_opset(out / e.file) for e in entries}
    want = opset if opset is not None else got[entries[0].file]
    wrong = {f: v for f, v in got.items() if v != want}
    if wrong:
        raise ExportError(f"the exporter wrote {wrong} instead of opset {want} for every graph; pass another --opset "
                          "or leave it out")
    return want


def _cache_torchlib() -> None:
    """Build onnxscript's table of ATen translations once per process instead of once per graph (~1 s each).

    The table is pure (a list of function descriptions that the exporter only reads). This reaches into torch's
    private lazy import of onnxscript; if that moves, export still works, just slower.
    """
    try:
        from torch.onnx._internal._lazy_import import onnxscript_apis

        module = importlib.import_module(onnxscript_apis._name)
    except (ImportError, AttributeError):
        return
    fn = getattr(module, "get_torchlib_ops", None)
    if callable(fn) and not hasattr(fn, "cache_info"):
        module.get_torchlib_ops = functools.cache(fn)


def _window(i: int, size: int, out: int) -> tuple[int, int]:
    """Adaptive pooling window ``i`` of ``out`` over ``size``: [floor(i*size/out), ceil((i+1)*size/out))."""
    return (i * size) // out, -((-(i + 1) * size) // out)


def _adaptive_max_pool2d(x: torch.Tensor, output_size, *, with_indices: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``aten.adaptive_max_pool2d`` for any output size from static slices: ONNX has no adaptive max pooling, and
    torch decomposes only the evenly divisible case. Max is separable, so values take oh + ow slices; exact
    indices (oh * ow windows) are built only when the graph uses them, else a placeholder that is never read."""
    H, W = x.shape[-2:]
    oh, ow = output_size
    if H % oh == 0 and W % ow == 0:
        return torch.ops.aten.max_pool2d_with_indices(x, [H // oh, W // ow])
    rows = torch.stack([x[..., slice(*_window(i, H, oh)), :].amax(-2) for i in range(oh)], -2)  # [..., oh, W]
    values = torch.stack([rows[..., slice(*_window(j, W, ow))].amax(-1) for j in range(ow)], -1)  # [..., oh, ow]
    if not with_indices:
        return values, torch.zeros(values.shape, dtype=torch.long, device=x.device)
    idx = []
    for i in range(oh):
        h0, h1 = _window(i, H, oh)
        for j in range(ow):
            w0, w1 = _window(j, W, ow)
            a = x[..., h0:h1, w0:w1].flatten(-2).argmax(-1)  # [...]
            idx.append((h0 + a // (w1 - w0)) * W + w0 + a % (w1 - w0))
    return values, torch.stack(idx, -1).reshape(values.shape)


def _decompose_pools(program):
    """Apply :func:`_adaptive_max_pool2d` to the exported program, if it has any adaptive max pooling."""
    op = torch.ops.aten.adaptive_max_pool2d.default
    pools = [n for n in program.graph.nodes if n.target is op]
    if not pools:
        return program
    with_indices = any(u.args[1] != 0 for n in pools for u in n.users)
    return program.run_decompositions({op: functools.partial(_adaptive_max_pool2d, with_indices=with_indices)})


def _export_graph(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, input_names: list[str],
                  output_names: list[str], opset: int | None) -> None:
    _cache_torchlib()
    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} for _ in args)  # every input shares the one dynamic batch dimension
    if any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(module.forward).parameters.values()):
        dynamic = (dynamic,)  # forward(*args) (a Stage): torch.export reads *args as one tuple argument
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "torchvision is not installed" notices
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            warnings.simplefilter("ignore", category=UserWarning)
            program = torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
            program = _decompose_pools(program)
            torch.onnx.export(program, args, str(path), dynamo=True, input_names=input_names,
                              output_names=output_names, opset_version=opset, external_data=False, optimize=True,
                              verbose=False)
    except Exception as e:  # the exporter raises many types; name the graph and keep the cause
        raise ExitlabError(f"ONNX export of {path.name} failed: {type(e).__name__}: {str(e)[:500]}") from e
    finally:
        quiet.setLevel(level)


def _check_graph(path: Path, module: nn.Module, args: tuple[torch.Tensor, ...], names: list[str]) -> None:
    """Run the exported graph in onnxruntime on a fresh batch size and compare with PyTorch."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own pybind error types, e.g. an opset newer than it supports
        raise ExportError(f"onnxruntime cannot load the exported {path.name} ({type(e).__name__}: {str(e)[:300]}); "
                          "try another --opset") from e
    got = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})
    with torch.no_grad():
        want = module(*args)
    want = want if isinstance(want, tuple) else (want,)
    for i, (g, w) in enumerate(zip(got, want)):
        same_shape = tuple(g.shape) == tuple(w.shape)
        err = (torch.from_numpy(g) - w).abs().max().item() if same_shape and w.numel() else 0.0
        tol = ATOL * max(1.0, w.abs().max().item() if w.numel() else 0.0)  # float32 noise grows with magnitude
        if not same_shape or not err <= tol:
            raise ExportError(f"{path.name}: output {i} differs from PyTorch (shape {g.shape} vs {tuple(w.shape)}, "
                              f"max error {err:.2e} > {tol:.2e}); please report this with the model spec")


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _entry(path: Path, names: list[str], outputs: list[str], args, exits: list[int], flops: int, cum: int,
           blocks: list[int]) -> GraphEntry:
    return GraphEntry(file=path.name, inputs=names, outputs=outputs, input_shapes=[list(a.shape[1:]) for a in args],
                      exits=exits, flops=int(flops), cum_flops=int(cum), sha256=file_sha256(path), blocks=blocks)


def _export_staged(model, out: Path, shape: tuple[int, ...], opset: int | None, verify: bool
                   ) -> tuple[list[GraphEntry], list[int]]:
    stages = build_stages(model)
    flops = stage_flops(stages, shape)
    cum = torch.tensor(flops).cumsum(0).tolist()
    traced = example_inputs(stages, torch.randn(TRACE_BATCH, *shape))
    checks = example_inputs(stages, torch.randn(CHECK_BATCH, *shape))
    entries = []
    for j, st in enumerate(stages):
        path = out / f"stage_{j}.onnx"
        _export_graph(st, traced[j], path, st.input_names, st.output_names, opset)
        if verify:
            _check_graph(path, st, checks[j], st.input_names)
        entries.append(_entry(path, st.input_names, st.output_names, traced[j], [j], flops[j], cum[j],
                              [st.start, st.end]))
        log.info("exported stage %d of %d: blocks %d..%d, %d FLOPs per sample", j + 1, len(stages), st.start,
                 st.end - 1, flops[j])
    return entries, cum


def _export_all(model, out: Path, shape: tuple[int, ...], opset: int | None, verify: bool
                ) -> tuple[list[GraphEntry], list[int]]:
    whole = AllExits(model).eval()
    exit_costs = torch.tensor(stage_flops(build_stages(model), shape)).cumsum(0).tolist() \
        if hasattr(model.backbone, "blocks") else []

    total = count_flops(lambda: whole(torch.zeros(1, *shape))).total
    names, outputs = ["x"], [f"logits_{k}" for k in range(model.num_exits)]
    path = out / "all_exits.onnx"
    args = (torch.randn(TRACE_BATCH, *shape),)
    _export_graph(whole, args, path, names, outputs, opset)
    if verify:
        _check_graph(path, whole, (torch.randn(CHECK_BATCH, *shape),), names)
    entry = _entry(path, names, outputs, args, list(range(model.num_exits)), total, total, [])
    return [entry], exit_costs or [total] * model.num_exits


def export_onnx(model: nn.Module, out_dir: str | Path, *, input_shape: tuple[int, ...] | None = None,
                layout: str = "staged", classes: list[str] | None = None, policy: dict | None = None,
                normalize: dict | None = None, opset: int | None = None, verify: bool = True) -> Manifest:
    """Export ``model`` into ``out_dir``, replacing a previous export there only once the new one is complete.

    The graphs and ``manifest.json`` are written into a new folder next to ``out_dir``, checked, then renamed into
    place; a failure leaves ``out_dir`` as it was. A file, or a folder holding anything but an export, is refused.

    ``layout="staged"`` writes one graph per exit (``stage_j.onnx``: features and logits of exit j);
    ``layout="all"`` writes one graph with every exit's logits. ``input_shape`` is one sample's shape (default:
    from the model spec). With ``verify`` every graph is run in onnxruntime and compared with PyTorch.
    """
    require_export_deps()
    if layout not in LAYOUTS:
        raise ExitlabError(f"unknown export layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if isinstance(model.spec, HFSpec):
        raise ExitlabError("ONNX export of text encoders is not supported yet (their stages pass token states with an "
                           "attention mask, at a dynamic length); serve them from PyTorch with exitlab.early_exit "
                           "(docs/text.md)")
    if getattr(model, "head_name", None) == "gpf":
        raise ExitlabError("ONNX export of GPF heads is not supported yet (each exit reads the earlier exits' states); "
                           "serve the model from PyTorch (exitlab.load)")
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise ExitlabError("the model has no spec with the input size; pass input_shape=(C, H, W)")
    check_opset(opset)
    out = Path(out_dir)
    check_target(out)
    with _eval_mode(model), staging(out) as tmp:  # the previous export at `out` stays whole until this one is done
        run = _export_staged if layout == "staged" else _export_all
        entries, exit_flops = run(model, tmp, tuple(input_shape), opset, verify)
        man = Manifest(layout=layout, input_shape=list(input_shape), num_classes=model.num_classes,
                       num_exits=model.num_exits, graphs=entries, exit_flops=[int(f) for f in exit_flops],
                       classes=list(classes or []), normalize=normalize, policy=policy,
                       model=model.spec.to_json() if model.spec is not None else {},
                       opset=_check_opsets(tmp, entries, opset))
        (tmp / MANIFEST_NAME).write_text(man.to_json())
        read_manifest(tmp)  # as a loader will read it: names, files, checksums
        publish(tmp, out)
    return man


def run_normalization(run_dir: Path) -> dict | None:
    """The input normalisation a run trained with, recomputed from its data (runs from before model.json kept it)."""
    run = RunDir(run_dir)
    if not (run / RunDir.CONFIG).is_file():
        return None
    return run.data().normalize


def export_run(run_dir: str | Path, out_dir: str | Path | None = None, *, layout: str = "auto", policy=None,
               opset: int | None = None, module=None) -> Path:
    """Export the model of a finished run (or a ``save_pretrained`` folder); default ``out_dir``: RUN_DIR/onnx.

    ``policy`` (a :class:`exitlab.policies.Policy` with its threshold) is recorded in the manifest; by default the
    policy saved with the model, if any. Class names and input normalisation come from the run as well.
    ``layout="auto"``: staged for ordered-blocks backbones, one all-exits graph for adapted modules.
    """
    require_export_deps()
    check_opset(opset)
    run = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run / "onnx"
    check_target(out)  # before loading the model and its data: fail fast on a bad --out
    model = load(run, module=module)
    info = getattr(model, "info", {}) or {}
    if policy is not None:
        if policy.threshold is None:
            raise ExitlabError(f"policy {policy.name!r} needs a threshold to be exported; pass --threshold")
        policy.check_thresholds([policy.threshold], model.num_exits, model.num_classes)
    normalize = info.get("normalize") or run_normalization(run)
    if normalize is None:
        log.warning("%s records no input normalisation; image uploads to `exitlab serve` will be fed as [0, 1] "
                    "pixels", run)
    if layout == "auto":  # staged needs ordered blocks to cut; an adapted module is exported whole
        layout = "staged" if all(hasattr(model.backbone, a) for a in ("stem", "blocks", "final")) else "all"
        log.info("export layout: %s", layout)
    export_onnx(model, out, layout=layout, classes=info.get("classes"),
                policy=policy.to_dict() if policy is not None else info.get("policy"), normalize=normalize,
                opset=opset)
    return out
