"""Cost of ``exitlab.models.core.eval_mode`` (entered by every inference call) before and after commit "eval_mode
restores modes in O(modules)", side by side in one process, on the CIFAR MSDNet (7 exits) and ResNet-56.

The earlier version restored each module with ``m.train(mode)``, which redoes that module's whole subtree, so the
restore cost grew with modules x depth. Real early exit enters ``eval_mode`` once per call, so at batch 1 this cost
is per sample.

Run (1 thread)::

    OMP_NUM_THREADS=1 python benchmarks/bench_eval_mode.py
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time

import torch

from exitlab.models import build_model
from exitlab.models.core import eval_mode


@contextlib.contextmanager
def previous_eval_mode(model: torch.nn.Module):
    """The version before the change: every module restored with ``train()`` (which recurses)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.train(training)


def median_ms(cm, model: torch.nn.Module, repeats: int = 7, inner: int = 10) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            with cm(model):
                pass
        times.append((time.perf_counter() - start) / inner * 1e3)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    print(f"load average {os.getloadavg()[0]:.1f}")
    for name in ("msdnet", "resnet56"):
        model = build_model(name, num_classes=100, img_size=32).eval()
        before, after = median_ms(previous_eval_mode, model), median_ms(eval_mode, model)
        n = sum(1 for _ in model.modules())
        print(f"{name}: {n} modules, eval_mode enter+exit median: before {before:.2f} ms, after {after:.3f} ms "
              f"({before / after:.0f}x)")


if __name__ == "__main__":
    main()
