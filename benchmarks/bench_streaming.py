"""Streaming loader throughput: exitlab's streamed image folder with the ImageNet recipe against a plain torch
DataLoader over PIL doing the same transforms; and the in-memory TensorLoader before and after the data changes.

    OMP_NUM_THREADS=1 python benchmarks/bench_streaming.py --workers 1 2 --repeats 5

10,000 generated JPEGs of 64-160 px (cached under --dir) in 10 class folders. Every variant reads all of them once
per repeat (random order, random resized crop to 64 px, horizontal flip, normalised float batches of 256 in the main
process); variants are interleaved repeat by repeat (rotating order) and the table gives medians, with the median
of the paired per-repeat ratios, and the worker processes' CPU time per image (Linux /proc: less sensitive than wall
time to other jobs on a shared machine). One torch thread per process.
"baseline" is what a torchvision user writes without torchvision: ``img.crop(box).resize(...)`` per sample with
torchvision's crop parameters, a random flip, a uint8 tensor, the default collate. "exitlab, full decode" is
exitlab's loader with the reduced-scale JPEG decode switched off, to show where the difference comes from.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import exitlab.data.transforms as tr
from exitlab.data import TensorLoader, build_run_data
from exitlab.runs.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def generate(d: Path, n: int = 10_000, classes: int = 10) -> Path:
    """``n`` JPEGs of 64-160 px (smooth colour fields plus noise) in ``d/train/<class>``, and a small ``d/val``."""
    from PIL import Image

    if (d / "done").exists():
        return d
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("val", 10 * classes)):
        for i in range(count):
            c = i % classes
            (d / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            w, h = rng.integers(64, 161, 2)
            low = (rng.random((4, 4, 3)) * 200 + c * 5).astype(np.uint8)
            im = np.asarray(Image.fromarray(low).resize((int(w), int(h)), Image.BICUBIC), dtype=np.float64)
            im = np.clip(im + rng.normal(0, 12, im.shape), 0, 255).astype(np.uint8)
            Image.fromarray(im).save(d / split / f"c{c}" / f"{i:05d}.jpg", quality=90)
    (d / "done").write_text("ok\n")
    return d


class PilFolder(torch.utils.data.Dataset):
    """The plain baseline: PIL decode, torchvision's RandomResizedCrop as crop + resize, flip, uint8 CHW tensor."""

    def __init__(self, paths: list[Path], labels: list[int], size: int):
        self.paths, self.labels, self.size = paths, labels, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        rng = random.Random(i)
        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB")
            left, top, cw, ch = tr.random_resized_box(*im.size, rng)
            im = im.crop((left, top, left + cw, top + ch)).resize((self.size, self.size), Image.BILINEAR)
            if rng.random() < 0.5:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            return torch.from_numpy(np.array(im)).permute(2, 0, 1), self.labels[i]


def worker_cpu(pids: list[int]) -> float:
    """User + system CPU seconds of the worker processes so far (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def consume(batches, pids: list[int], mean: torch.Tensor | None = None, std: torch.Tensor | None = None):
    """Images read and the workers' CPU seconds over one pass; the CPU is read at each batch, while they live."""
    n, start, cpu = 0, worker_cpu(pids), 0.0
    for xb, _ in batches:
        if mean is not None:
            xb = (xb.float().div_(255) - mean) / std
        n += len(xb)
        cpu = worker_cpu(pids) - start
    return n, cpu


def baseline_pass(ds: PilFolder, workers: int, seed: int, mean: torch.Tensor, std: torch.Tensor):
    g = torch.Generator().manual_seed(seed)
    dl = torch.utils.data.DataLoader(ds, batch_size=256, sampler=torch.utils.data.RandomSampler(ds, generator=g),
                                     num_workers=workers, drop_last=True)
    it = iter(dl)
    return consume(it, [w.pid for w in it._workers], mean, std)


def exitlab_pass(loader, seed: int):
    loader.set_epoch_seed(seed)
    it = iter(loader)
    pids = [w.pid for w in loader._dl._iterator._workers] if loader._dl._iterator is not None else []
    return consume(it, pids)


def timed(fn) -> tuple[float, int, float]:
    t = time.perf_counter()
    n, cpu = fn()
    return time.perf_counter() - t, n, cpu


def _run(root: Path, workers: int):
    cfg = load_config(None, [f"data.root={root}", "data.name=imagefolder", "data.stream=true", "data.augment=imagenet",
                             "data.img_size=64", "data.batch_size=256", f"data.workers={workers}",
                             "data.val_fraction=0.01"])
    return build_run_data(cfg.data, 0, torch.device("cpu"))


def streaming(root: Path, workers: int, repeats: int) -> dict[str, float]:
    """Median images per second per worker of each variant."""
    run, full_decode = _run(root, workers), _run(root, workers)
    files = run.train.samples.data
    paths = [Path(files.describe(int(i))) for i in run.train.indices]
    labels = [int(files.labels[int(i)]) for i in run.train.indices]
    base = PilFolder(paths, labels, 64)
    mean, std = run.train.mean, run.train.std
    exitlab_pass(run.train, -1)  # start the persistent workers outside the timing
    draft, tr._draft = tr._draft, lambda im, box, size: box
    exitlab_pass(full_decode.train, -1)  # these workers fork with the reduced-scale decode switched off
    tr._draft = draft
    variants = {"exitlab": lambda s: exitlab_pass(run.train, s),
                "exitlab, full decode": lambda s: exitlab_pass(full_decode.train, s),
                "baseline": lambda s: baseline_pass(base, workers, s, mean, std)}
    rates: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(repeats):
        for k in list(variants)[r % 3 :] + list(variants)[: r % 3]:
            secs, n, c = timed(lambda k=k, r=r: variants[k](r))
            rates[k].append(n / secs / workers)
            cpu[k].append(c / n * 1e6)
    paired = [a / b for a, b in zip(rates["exitlab"], rates["baseline"])]
    out = {k: statistics.median(v) for k, v in rates.items()}  # the loaders and their workers go with this frame
    return out | {f"{k} cpu": statistics.median(v) for k, v in cpu.items()} | {"ratio": statistics.median(paired)}


def loader_before(ref: str):
    """TensorLoader as it was at git ``ref``, imported from the file's text at that commit."""
    text = subprocess.run(["git", "show", f"{ref}:src/exitlab/data/loader.py"], capture_output=True, text=True,
                          check=True, cwd=ROOT).stdout
    path = Path(tempfile.mkdtemp()) / "loader_before.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("exitlab.data._loader_before", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.TensorLoader


def tensor_loaders(ref: str, repeats: int) -> dict[str, float]:
    """Median wall and CPU seconds of one training pass of a Fashion-MNIST-sized uint8 tensor with crop (2 px) and
    flip, and the medians of the paired after / before ratios."""
    x = torch.randint(0, 256, (60_000, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(60_000) % 10
    opts = dict(mean=torch.tensor([0.3]), std=torch.tensor([0.35]), shuffle=True, pad=2, flip=True, drop_last=True)
    loaders = {"before": loader_before(ref)(x, y, 128, **opts), "after": TensorLoader(x, y, 128, **opts)}
    wall: dict[str, list[float]] = {k: [] for k in loaders}
    cpu: dict[str, list[float]] = {k: [] for k in loaders}
    for r in range(repeats):
        for k in (list(loaders) if r % 2 == 0 else list(loaders)[::-1]):
            loaders[k].set_epoch_seed(r)
            t, c = time.perf_counter(), time.process_time()
            sum(len(b) for b, _ in loaders[k])
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    out = {k: statistics.median(v) for k, v in wall.items()}
    out |= {f"{k} cpu": statistics.median(v) for k, v in cpu.items()}
    out["ratio"] = statistics.median([a / b for a, b in zip(wall["after"], wall["before"])])
    out["cpu ratio"] = statistics.median([a / b for a, b in zip(cpu["after"], cpu["before"])])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=Path.home() / ".cache" / "exitlab" / "bench_streaming")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker processes (each >= 1)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--before", default="ec4113e", help="git commit of the TensorLoader to compare against")
    p.add_argument("--tensor-repeats", type=int, default=15)
    p.add_argument("--skip-streaming", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    if not a.skip_streaming:
        root = generate(a.dir)
        print("| workers | exitlab img/s/worker | exitlab, full decode | baseline (PIL) | exitlab / baseline (paired) "
              "| worker CPU us/img: exitlab | full decode | baseline |")
        print("|---|---|---|---|---|---|---|---|")
        for w in a.workers:
            m = streaming(root, w, a.repeats)
            gc.collect()  # the persistent workers are stopped before anything else is timed
            print(f"| {w} | {m['exitlab']:.0f} | {m['exitlab, full decode']:.0f} | {m['baseline']:.0f} | "
                  f"{m['ratio']:.2f} | {m['exitlab cpu']:.0f} | {m['exitlab, full decode cpu']:.0f} | "
                  f"{m['baseline cpu']:.0f} |", flush=True)
    t = tensor_loaders(a.before, a.tensor_repeats)
    print(f"\nTensorLoader, one pass of 60,000 x 1x28x28 uint8 (crop 2 + flip, batch 128), medians of "
          f"{a.tensor_repeats}:\n| | before ({a.before}) | after | after / before (paired) |\n|---|---|---|---|\n"
          f"| wall ms | {t['before'] * 1e3:.0f} | {t['after'] * 1e3:.0f} | {t['ratio']:.3f} |\n"
          f"| CPU ms | {t['before cpu'] * 1e3:.0f} | {t['after cpu'] * 1e3:.0f} | {t['cpu ratio']:.3f} |")
    print(f"(python {sys.version.split()[0]}, torch {torch.__version__}, {torch.get_num_threads()} torch thread)")


if __name__ == "__main__":
    main()
