"""GPU benchmark, prepared to run once on one GPU in under 8 minutes with no network (``benchmarks/gpu.sh``).

Every input is generated in this process (random uint8 images on the device). Measured, and written to
``OUT/gpu.json`` and ``OUT/gpu.md``:

- **training throughput** (images/s, exitlab's ``train_epoch``, SGD, crop+flip on the device): ResNet-18 and
  ResNet-34 (CIFAR stem, 32x32) and ViT-T (patch 4), each as the bare backbone (phase 1) and joint with its ICs
  (phase 2), at batch 128 and 512, fp32 and bf16 autocast, eager and ``torch.compile`` (per block, dynamic batch);
- **real early exit** on ResNet-56 with 8 exits at batch 256 against the segment-time ideal (35% of the remaining
  samples leave at every exit), and **batch-1 latency** with the policy checked at every exit, nobody leaving;
- **the paper's code** (kamadforge/early-exit-benchmark, a checkout in ``$EXITLAB_REFERENCE``, nothing of it
  copied here): its training step and evaluation on its own ResNet-18 + 3 SDN heads against exitlab's, same batch,
  extrapolated to a CIFAR-10 epoch (see ``bench_reference.py``).

Rows run in order of cost; once ``--budget-s`` has passed, the rest are recorded as not measured (time budget).
``--tiny`` runs every row on tiny models and sizes (CPU, a few seconds; ``tests/test_gpu_script.py``), with the
``eager`` compile backend (graph capture without code generation).

    python benchmarks/bench_gpu.py --out gpu-results            # on the GPU machine (gpu.sh)
    python benchmarks/bench_gpu.py --tiny --device cpu --out /tmp/tiny
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_early_exit import Quota, calibrated_model  # noqa: E402

from exitlab.data import TensorLoader  # noqa: E402
from exitlab.evaluation.bench import batch1_latency, batched_speedups  # noqa: E402
from exitlab.evaluation.policies import make_policy  # noqa: E402
from exitlab.models import build_model  # noqa: E402
from exitlab.models.costs import exit_costs  # noqa: E402
from exitlab.runs.phase_config import PhaseConfig  # noqa: E402
from exitlab.training.compile import maybe_compile  # noqa: E402
from exitlab.training.loop import PhaseState, make_optimizer, set_modes, set_trainable, train_epoch  # noqa: E402
from exitlab.training.objective import phase_module  # noqa: E402
from exitlab.training.phases import Phase  # noqa: E402


@dataclass
class Sizes:
    """What one run measures: the full GPU set, or the tiny CPU check of the same rows."""

    models: dict[str, tuple[str, dict, object, str]]  # role -> (backbone, backbone kwargs, exits, head)
    img: int = 32
    batches: tuple[int, ...] = (128, 512)
    steps: int = 20  # timed training steps per row
    warmup: int = 5  # untimed steps first (compilation happens here)
    classes: int = 100
    ee_depth: int = 56
    ee_exits: int = 8
    ee_batch: int = 256
    ee_repeats: int = 9
    b1_samples: int = 200
    ref_batch: int = 128
    ref_steps: int = 20
    ref_eval_images: int = 1024
    backend: str = "inductor"
    extra: dict = field(default_factory=dict)


FULL = Sizes(models={"resnet18": ("resnet18_cifar", {}, [1, 3, 5], "sdn"),
                     "resnet34": ("resnet34_cifar", {}, "every:3", "sdn"),
                     "vit_t": ("vit_tiny", {"patch_size": 4}, "every:3", "cls")})
TINY = Sizes(models={"resnet18": ("resnet8", {}, [0, 1], "sdn"), "resnet34": ("resnet8", {}, [1], "sdn"),
                     "vit_t": ("vit", {"dim": 16, "depth": 2, "heads": 2, "patch_size": 4}, [0], "cls")},
             img=8, batches=(4, 8), steps=2, warmup=1, classes=7, ee_depth=8, ee_exits=2, ee_batch=8,
             ee_repeats=2, b1_samples=3, ref_batch=4, ref_steps=1, ref_eval_images=4, backend="eager")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images(n: int, sz: Sizes, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random uint8 images and labels, generated on the device."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, sz.img, sz.img), dtype=torch.uint8, generator=g, device=device)
    return x, torch.randint(0, sz.classes, (n,), generator=g, device=device)


class Trainer:
    """One model of a role on the device, reused across rows so that compiled graphs are compiled once."""

    def __init__(self, role: str, sz: Sizes, device: torch.device, compiled: bool):
        name, kwargs, exits, head = sz.models[role]
        torch.manual_seed(0)
        self.model = build_model(name, num_classes=sz.classes, img_size=sz.img, exits=exits, head=head,
                                 backbone_kwargs=kwargs).to(device)
        self.channels_last = device.type == "cuda" and head != "cls"  # tensor cores want NHWC convolutions
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.compile_s = 0.0
        if compiled:
            maybe_compile(self.model, True, backend=sz.backend, dynamic=True)  # one graph for every batch size
        self.sz, self.device, self.name = sz, device, name
        x, y = images(max(sz.batches) * (sz.steps + sz.warmup), sz, device)
        self.x, self.y = x, y

    def row(self, variant: str, batch: int, amp: str) -> dict:
        """Images per second of ``steps`` training steps after ``warmup`` untimed ones."""
        sz = self.sz
        phase = Phase(1 if variant == "backbone" else 2, 1, PhaseConfig(lr=0.01, schedule="constant"))
        opt = make_optimizer(set_trainable(self.model, phase), phase)
        n = batch * (sz.steps + sz.warmup)
        loader = TensorLoader(self.x[:n], self.y[:n], batch, mean=torch.full((3,), 0.47), std=torch.full((3,), 0.25),
                              device=self.device, shuffle=True, pad=4, flip=True, drop_last=True,
                              channels_last=self.channels_last)
        set_modes(self.model, phase)
        net = phase_module(self.model, phase)
        t0 = time.perf_counter()
        state = PhaseState(net, phase, loader, opt, total_steps=10**6, amp=amp)
        train_epoch(state, max_steps=sz.warmup)
        sync(self.device)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        train_epoch(state, max_steps=sz.steps)
        sync(self.device)
        took = time.perf_counter() - t0
        return {"model": self.name, "img_per_s": batch * sz.steps / took, "ms_per_step": took / sz.steps * 1e3,
                "warmup_s": warm}


def training_rows(sz: Sizes, device: torch.device, compiled: bool, deadline: float) -> list[dict]:
    """Every (model, variant, batch, dtype) row for one mode; rows past the deadline are marked not measured."""
    rows = []
    for role in sz.models:
        trainer = None
        for amp in ("none", "bf16"):
            for batch in sz.batches:
                for variant in ("backbone", "joint"):
                    key = dict(section="train", role=role, variant=variant, batch=batch,
                               dtype="bf16" if amp == "bf16" else "fp32", mode="compiled" if compiled else "eager")
                    if time.perf_counter() > deadline:
                        rows.append({**key, "skipped": "time budget" if deadline else "--skip-compiled"})
                        continue
                    trainer = trainer or Trainer(role, sz, device, compiled)
                    rows.append({**key, **guarded(lambda t=trainer, v=variant, b=batch, a=amp: t.row(v, b, a))})
        del trainer
    return rows


def guarded(fn) -> dict:
    """A row's numbers, or the one-line error that stopped it (the other rows still run)."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 -- a benchmark row must not take the others down with it
        return {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]}


def early_exit_rows(sz: Sizes, device: torch.device) -> list[dict]:
    """Batched real early exit against the segment-time ideal, and batch-1 latency (sdn and pooled heads)."""
    rows = []
    for head in ("sdn", "pooled"):
        ns = argparse.Namespace(seed=0, depth=sz.ee_depth, classes=10, img=sz.img, exits=sz.ee_exits, head=head)
        model = calibrated_model(ns).to(device)
        x = torch.randn(sz.ee_batch, 3, sz.img, sz.img, device=device)
        b = guarded(lambda m=model, x=x: batched_speedups(m, x, Quota(), 0.35, exit_costs(m).flops, warmup=1,
                                                          repeats=sz.ee_repeats, clock="device"))
        keys = ("speedup_flops", "speedup_segment_ideal", "speedup_measured", "measured_over_ideal", "logits_equal",
                "logits_max_abs_diff")
        rows.append({"section": "early_exit", "head": head, "model": f"resnet{sz.ee_depth}", "batch": sz.ee_batch,
                     **({k: b[k] for k in keys} if "error" not in b else b)})
        xs = torch.randn(sz.b1_samples, 3, sz.img, sz.img, device=device)
        one = guarded(lambda m=model, xs=xs: batch1_latency(m, xs, make_policy("confidence"), 0.9, 1.0,
                                                            clock="device"))
        rows.append({"section": "batch1", "head": head, "model": f"resnet{sz.ee_depth}",
                     **({"bare_ms": one["bare_backbone"]["median"] * 1e3, "all_exits_ms": one["all_exits"]["median"]
                         * 1e3, "no_exit_ms": one["no_exit"]["median"] * 1e3,
                         "no_exit_over_bare": 1 + one["no_exit_overhead_vs_bare"]} if "error" not in one else one)})
    return rows


def reference_rows(sz: Sizes, device: torch.device, path: str | None) -> list[dict]:
    """The paper's code against exitlab, same model and batch, epoch extrapolated as in bench_reference.py."""
    if not path:
        return [{"section": "reference", "skipped": "EXITLAB_REFERENCE not set (a kamadforge/early-exit-benchmark "
                 "checkout)"}]
    if not (Path(path) / "architectures" / "early_exits" / "sdn.py").is_file():
        return [{"section": "reference", "skipped": f"{path} is not a kamadforge/early-exit-benchmark checkout"}]
    import bench_reference as ref

    args = argparse.Namespace(reference=path, exits=[1, 3, 5], classes=10, img_size=sz.img, batch_size=sz.ref_batch,
                              eval_batch_size=256, steps=sz.ref_steps, eval_images=sz.ref_eval_images, device=device,
                              ref_workers=int(os.environ.get("EXITLAB_REFERENCE_WORKERS", 8)))

    def measure() -> dict:
        steps, evals = ref.ref_variants(args)
        s, e = ref.exitlab_variants(args, "exitlab", {"cl"} if device.type == "cuda" else set())
        steps.update(s)
        evals.update(e)
        for fn in (*steps.values(), *evals.values()):
            fn()  # warm-up: workers, cuDNN autotuning
        per = {}
        for name in steps:
            t0 = time.perf_counter()
            units = steps[name]()
            step_s = (time.perf_counter() - t0) / units
            t0 = time.perf_counter()
            units = evals[name]()
            per[name] = (step_s, (time.perf_counter() - t0) / units)
        plan = ref.epoch_plan(45_000, sz.ref_batch, 5_000, 10_000, 300, 10)
        epoch = {n: plan["steps"] * s + plan["ref_eval_images" if n == "reference" else "exitlab_eval_images"] * e
                 for n, (s, e) in per.items()}
        return {"batch": sz.ref_batch, "ref_step_ms": per["reference"][0] * 1e3,
                "exitlab_step_ms": per["exitlab"][0] * 1e3, "ref_epoch_s": epoch["reference"],
                "exitlab_epoch_s": epoch["exitlab"], "epoch_speedup": epoch["reference"] / epoch["exitlab"]}

    return [{"section": "reference", "model": "resnet18_cifar", **guarded(measure)}]


def markdown(result: dict) -> str:
    """The tables of gpu.md."""
    rows, lines = result["rows"], [f"# GPU benchmark ({result['device_name']})", "",
                                   f"torch {result['torch']}, {result['seconds']:.0f} s in all, tiny={result['tiny']}"]
    lines += ["", "| model | batch | dtype | mode | backbone img/s | joint img/s | joint / backbone time |",
              "|---|---|---|---|---|---|---|"]
    train = {(r["role"], r["batch"], r["dtype"], r["mode"], r["variant"]): r for r in rows if r["section"] == "train"}
    for (role, batch, dtype, mode, variant), r in train.items():
        if variant != "backbone":
            continue
        j = train[(role, batch, dtype, mode, "joint")]
        ratio = f"{r['img_per_s'] / j['img_per_s']:.3f}x" if "img_per_s" in r and "img_per_s" in j else "-"
        lines.append(f"| {role} ({r.get('model', '-')}) | {batch} | {dtype} | {mode} | {_cell(r)} | {_cell(j)} "
                     f"| {ratio} |")
    for r in rows:
        if r["section"] != "train":
            lines += ["", f"- {r['section']}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in r.items() if k != "section")]
    return "\n".join(lines) + "\n"


def _cell(r: dict) -> str:
    return f"{r['img_per_s']:.0f}" if "img_per_s" in r else f"not measured: {r.get('skipped') or r.get('error')}"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for gpu.json and gpu.md")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cuda or cpu")
    p.add_argument("--tiny", action="store_true", default=os.environ.get("EXITLAB_BENCH_TINY") == "1",
                   help="tiny models and sizes (the CPU check of every row)")
    p.add_argument("--budget-s", type=float, default=420.0, help="rows starting after this many seconds are skipped")
    p.add_argument("--skip-compiled", action="store_true", help="record the compiled rows as not measured")
    p.add_argument("--reference", default=os.environ.get("EXITLAB_REFERENCE"),
                   help="checkout of kamadforge/early-exit-benchmark (default: $EXITLAB_REFERENCE)")
    args = p.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    sz = TINY if args.tiny else FULL
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    t0 = time.perf_counter()
    deadline = t0 + args.budget_s
    rows, sections = [], {}
    compiled_deadline = 0 if args.skip_compiled else deadline
    for name, fn in (("train eager", lambda: training_rows(sz, device, False, deadline)),
                     ("early exit", lambda: early_exit_rows(sz, device)),
                     ("reference", lambda: reference_rows(sz, device, args.reference)),
                     ("train compiled", lambda: training_rows(sz, device, True, compiled_deadline))):
        s0 = time.perf_counter()
        rows += fn()
        sections[name] = time.perf_counter() - s0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    result = {"section_seconds": sections, "device": str(device), "tiny": args.tiny, "torch": torch.__version__,
              "sizes": asdict(sz), "device_name": name, "seconds": time.perf_counter() - t0, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "gpu.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
