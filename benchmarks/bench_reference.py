"""End-to-end epoch time: exitlab against the paper's public code (kamadforge/early-exit-benchmark), side by side.

Setting (the paper's CIFAR ResNet-18 runs): ResNet-18 with the CIFAR stem, ICs after blocks 1, 3 and 5 with the SDN
pooled head (learned max/avg mix to 4x4, then linear; exitlab's ``sdn`` head, the reference's ``pooled_head``),
joint training, SGD, batch 64 of 3x32x32 images, 10 classes. CIFAR is not available here, so both sides get the
same random CIFAR-shaped uint8 images.

The reference is imported from a checkout given on the command line (nothing of it is copied here): its ResNet-18
(``architectures/resnets.py``, ``standard_first_conv=False``) wrapped in its ``SDN`` class
(``architectures/early_exits/sdn.py``). Its training script needs accelerate, wandb, fvcore and torchvision, which
do not import here, so :func:`ref_train_step` and :func:`ref_eval_batch` re-state what the loop in
``methods/early_exit.py`` does per batch, and :class:`RefStyleData` stands in for its torchvision pipeline
(per-image flip + random affine + normalise in a ``torch.utils.data.DataLoader``).

Measured, interleaved repeat by repeat: seconds per training step (data included) and seconds per evaluated image.
An epoch is then extrapolated from each side's own per-epoch work (see :func:`epoch_plan`).

Run (1 thread)::

    OMP_NUM_THREADS=1 python benchmarks/bench_reference.py /work/ref-eeb --repeats 5
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_ic_overhead import interleaved, ratios

from exitlab.data import TensorLoader
from exitlab.models import build_model
from exitlab.runs.phase_config import PhaseConfig
from exitlab.training.compile import maybe_compile
from exitlab.training.loop import PhaseState, evaluate, make_optimizer, set_modes, set_trainable, train_epoch
from exitlab.training.phases import Phase

Timers = dict[str, Callable[[], int]]  # variant name -> a call that does some work and returns its units
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.262)  # CIFAR-10 statistics, as both code bases use


# ---------------------------------------------------------------- the reference


def load_reference(path: Path, exits: list[int], num_classes: int) -> torch.nn.Module:
    """The reference multi-exit ResNet-18 (CIFAR stem) built from the checkout at ``path``."""
    if not (path / "architectures" / "early_exits" / "sdn.py").is_file():
        sys.exit(f"{path} is not a checkout of kamadforge/early-exit-benchmark (architectures/early_exits/sdn.py "
                 "missing); fetch it and pass its path")
    sys.path.insert(0, str(path))
    from architectures.early_exits.sdn import SDN  # from the checkout at path
    from architectures.resnets import ResNet18

    return SDN(ResNet18(num_classes=num_classes, standard_first_conv=False), "pooled_head", set(exits))


class RefStyleData(torch.utils.data.Dataset):
    """Per-image augmentation in Python, like the reference's torchvision pipeline for CIFAR-10 (flip, random affine
    with 10 degrees and 1/8 translation, to tensor, normalise), written with torch ops as torchvision is unavailable."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, train: bool, seed: int = 0):
        self.x, self.y, self.train = x, y, train  # x: [N, H, W, C] uint8 like torchvision's CIFAR arrays
        self.mean, self.std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
        self.g = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.y)

    def _affine(self, img: torch.Tensor) -> torch.Tensor:
        angle = math.radians(float(torch.empty(()).uniform_(-10, 10, generator=self.g)))
        tx, ty = (torch.rand(2, generator=self.g) * 2 - 1).mul(2 / 8).tolist()  # 1/8 of the side, grid units are 2
        theta = torch.tensor([[math.cos(angle), -math.sin(angle), tx], [math.sin(angle), math.cos(angle), ty]])
        grid = F.affine_grid(theta[None], [1, *img.shape], align_corners=False)
        return F.grid_sample(img[None], grid, mode="nearest", align_corners=False)[0]  # [C, H, W]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.x[i].permute(2, 0, 1).float().div(255)  # ToTensor: [C, H, W]
        if self.train:
            if torch.rand((), generator=self.g) < 0.5:
                img = img.flip(-1)
            img = self._affine(img)
        return (img - self.mean) / self.std, self.y[i]


def ref_train_step(model, opt, sched, criterion, X: torch.Tensor, y: torch.Tensor) -> float:
    """One joint-training step as the reference loop takes it (methods/early_exit.py, training_loop)."""
    model.train("all")  # set_for_training runs every step: train mode + requires_grad on everything
    model.all_mode()
    output = model(X)  # list of logits, one per head, final last
    for head_output in output:
        assert not head_output.isnan().any()
    losses = [criterion(y_pred, y) for y_pred in output]
    loss = sum(losses) / len(losses)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()  # logged every step


@torch.inference_mode()
def ref_eval_batch(model, X: torch.Tensor) -> list[torch.Tensor]:
    """One evaluation batch as get_preds_earlyexiting (eval.py) takes it."""
    model.eval()
    model.all_mode()
    return [o.detach().cpu() for o in model(X)]


# ---------------------------------------------------------------- the epoch


def epoch_plan(train_images: int, batch: int, val_images: int, test_images: int, ref_val_every: int,
               ref_train_eval_batches: int) -> dict:
    """Work per epoch on CIFAR-10-sized data with a 10% validation split (both code bases hold one out).

    Reference (methods/early_exit.py): every training step, plus at each epoch start the whole test set and
    ``ref_train_eval_batches`` training batches (in_training_eval), plus the validation set every
    ``min(steps, ref_val_every)`` steps for early stopping. exitlab: every training step and one validation pass
    (no test pass during training).
    """
    steps = math.ceil(train_images / batch)
    val_passes = steps / min(steps, ref_val_every)
    return {"steps": steps,
            "ref_eval_images": test_images + ref_train_eval_batches * batch + val_passes * val_images,
            "exitlab_eval_images": val_images}


# ---------------------------------------------------------------- variants


def make_data(args: argparse.Namespace, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, args.img_size, args.img_size, 3), dtype=torch.uint8, generator=g)  # [N, H, W, C]
    return x, torch.randint(0, args.classes, (n,), generator=g)


def ref_variants(args: argparse.Namespace) -> tuple[Timers, Timers]:
    device = torch.device(getattr(args, "device", "cpu"))
    torch.manual_seed(0)
    model = load_reference(Path(args.reference), args.exits, args.classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10_000)
    criterion = torch.nn.CrossEntropyLoss()
    x, y = make_data(args, args.batch_size * args.steps, 0)
    pin = device.type == "cuda"  # as accelerate's prepared loaders do
    train = torch.utils.data.DataLoader(RefStyleData(x, y, True), batch_size=args.batch_size, shuffle=True,
                                        num_workers=args.ref_workers, pin_memory=pin)
    xe, ye = make_data(args, args.eval_images, 1)
    test = torch.utils.data.DataLoader(RefStyleData(xe, ye, False), batch_size=args.batch_size,
                                       num_workers=args.ref_workers, pin_memory=pin)

    def train_run() -> int:
        for X, yb in train:
            ref_train_step(model, opt, sched, criterion, X.to(device, non_blocking=True),
                           yb.to(device, non_blocking=True))
        return len(train)

    def eval_run() -> int:
        for X, _ in test:
            ref_eval_batch(model, X.to(device, non_blocking=True))
        return args.eval_images

    return {"reference": train_run}, {"reference": eval_run}


def exitlab_variants(args: argparse.Namespace, name: str, options: set[str]) -> tuple[Timers, Timers]:
    device = torch.device(getattr(args, "device", "cpu"))
    torch.manual_seed(0)
    model = build_model("resnet18_cifar", num_classes=args.classes, img_size=args.img_size, exits=args.exits,
                        head="sdn").to(device)
    cl, amp = "cl" in options, "bf16" if "bf16" in options else "none"
    if cl:
        model = model.to(memory_format=torch.channels_last)
    maybe_compile(model, "compile" in options)
    phase = Phase(2, 1, PhaseConfig(lr=0.05, momentum=0.9, weight_decay=5e-4))
    opt = make_optimizer(set_trainable(model, phase), phase)
    common = dict(mean=torch.tensor(MEAN), std=torch.tensor(STD), channels_last=cl, device=device)
    x, y = make_data(args, args.batch_size * args.steps, 0)
    train = TensorLoader(x.permute(0, 3, 1, 2), y, args.batch_size, shuffle=True, pad=4, flip=True, drop_last=True,
                         **common)
    xe, ye = make_data(args, args.eval_images, 1)
    val = TensorLoader(xe.permute(0, 3, 1, 2), ye, args.eval_batch_size, **common)
    state = PhaseState(model, phase, train, opt, total_steps=10_000, amp=amp)  # its step carries over

    def train_run() -> int:
        set_modes(model, phase)
        train_epoch(state)
        return len(train)

    def eval_run() -> int:
        evaluate(model, val, amp)
        return args.eval_images

    return {name: train_run}, {name: eval_run}


# ---------------------------------------------------------------- main


def report(args: argparse.Namespace, clocks: dict) -> dict:
    """Print the per-step and per-image medians, and the extrapolated epochs, for both clocks."""
    plan = epoch_plan(args.train_images, args.batch_size, args.val_images, args.test_images, args.ref_val_every,
                      args.ref_train_eval_batches)
    print(f"resnet18_cifar, exits {args.exits}, batch {args.batch_size}x3x{args.img_size}x{args.img_size}, "
          f"{args.threads} thread(s); {args.steps} step(s) and {args.eval_images} eval images per call, "
          f"{args.repeats} interleaved repeats")
    print(f"epoch = {plan['steps']} steps + evaluated images (reference {plan['ref_eval_images']:.0f}, "
          f"exitlab {plan['exitlab_eval_images']})")
    out = {"args": vars(args), "plan": plan, "seconds": clocks, "summary": {}}
    for clock, times in clocks.items():
        step_t = {n[6:]: t for n, t in times.items() if n.startswith("train/")}
        eval_t = {n[5:]: t for n, t in times.items() if n.startswith("eval/")}
        step_rel = ratios(step_t, "reference")
        med = {n: (statistics.median(step_t[n]), statistics.median(eval_t[n])) for n in step_t}
        epoch = {n: plan["steps"] * s + plan["ref_eval_images" if n == "reference" else "exitlab_eval_images"] * e
                 for n, (s, e) in med.items()}
        print(f"\n[{clock} time]\n{'variant':<20}{'s/step':>9}{'ms/eval img':>13}{'epoch min':>11}"
              f"{'step speed-up':>15}{'epoch speed-up':>16}")
        for n, (s, e) in med.items():
            print(f"{n:<20}{s:>9.3f}{e * 1e3:>13.2f}{epoch[n] / 60:>11.1f}{1 / step_rel[n]:>14.2f}x"
                  f"{epoch['reference'] / epoch[n]:>15.2f}x")
        out["summary"][clock] = {"step_ratio": step_rel, "median": med, "epoch_seconds": epoch}
    print("step speed-up: median over repeats of reference/variant step time within the same repeat; epoch "
          "speed-up: ratio of the extrapolated epochs")
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("reference", help="path of a kamadforge/early-exit-benchmark checkout")
    p.add_argument("--exits", type=lambda s: [int(v) for v in s.split(",")], default=[1, 3, 5])
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--eval-batch-size", type=int, default=256, help="exitlab's evaluation batch (reference: 64)")
    p.add_argument("--steps", type=int, default=2, help="training steps per timed call")
    p.add_argument("--eval-images", type=int, default=128, help="evaluated images per timed call")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ref-workers", type=int, default=0, help="DataLoader workers for the reference (its default "
                   "is 8; 0 keeps the 1-thread budget)")
    p.add_argument("--options", default="cl", help="comma list of extra exitlab variants: cl, bf16, compile, "
                   "cl+bf16, ... ('' for none)")
    p.add_argument("--train-images", type=int, default=45_000, help="training images per epoch (CIFAR-10 minus 10%%)")
    p.add_argument("--val-images", type=int, default=5_000)
    p.add_argument("--test-images", type=int, default=10_000)
    p.add_argument("--ref-val-every", type=int, default=300, help="reference: early-stopping validation period")
    p.add_argument("--ref-train-eval-batches", type=int, default=10, help="reference: eval_batches default")
    p.add_argument("--json", help="write raw times and the epoch model here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps, evals = ref_variants(args)
    for name, opts in [("exitlab", set())] + [(f"exitlab+{o}", set(o.split("+"))) for o in args.options.split(",")
                                               if o]:
        s, e = exitlab_variants(args, name, opts)
        steps.update(s)
        evals.update(e)
    both = {**{f"train/{n}": f for n, f in steps.items()}, **{f"eval/{n}": f for n, f in evals.items()}}
    result = report(args, interleaved(both, args.repeats))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
