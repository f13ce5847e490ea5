"""Out-of-distribution detection from exit confidence: AUROC per exit and per early-exit threshold, against FLOPs.

As ZTW's code does (gmum/Zero-Time-Waste, ztw_cv/eval.py, ``evaluate_earlyexiting_ood_detection``): in-distribution
samples are the positives, OOD samples the negatives, and the detector's score is a confidence. Per exit, the AUROC
of the max-softmax (and of the policy's own score, oriented so that higher means more in-distribution) is reported
with that exit's cumulative FLOPs. Per threshold, every sample (ID and OOD pooled) leaves at the exit the policy picks,
the score is the one at that exit, and the AUROC is reported with the pooled mean FLOPs.

The OOD inputs come from :func:`ood_logits_for_run`: either ``"noise"`` (uniform pixel noise in the run's input shape,
always available offline), or ``data.*`` overrides naming another in-memory data set (e.g. ``data.name=cifar10``,
``data.root=...``); its images are normalised with the run's own statistics, as a deployed model would see them.
"""

from __future__ import annotations

import torch

from ..data.datasets import Dataset
from ..data.loader import TensorLoader
from ..data.sources import load_source
from ..errors import ConfigError
from ..runs.config import DataConfig
from ..runs.rundir import RunDir, compute_logits
from ..runs.typed import apply_overrides, from_dict, to_dict
from .failure import mann_whitney
from .policies import Policy
from .sweep import exit_indices, score_thresholds


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Area under the ROC curve of scores ``pos`` ``[P]`` (positives) against ``neg`` ``[Q]``: the Mann-Whitney
    statistic ``P(s_pos > s_neg) + P(s_pos = s_neg) / 2``, from ranks with ties given their average rank."""
    value = mann_whitney(pos, neg)
    if value is None:
        raise ConfigError("AUROC needs at least one in-distribution and one OOD sample")
    return value


def _oriented(policy: Policy, scores: torch.Tensor) -> torch.Tensor:
    return scores if policy.exit_when == "above" else -scores  # higher = more confident = more in-distribution


def ood_detection(policy: Policy, id_logits: torch.Tensor, ood_logits: torch.Tensor, costs, *,
                  n_thresholds: int = 50) -> dict:
    """AUROC of ID (``[E, N, C]``) against OOD (``[E, M, C]``) logits per exit and per threshold (module docstring).
    ``costs`` is an :class:`exitlab.costs.ExitCosts`."""
    E = id_logits.shape[0]
    logits = torch.cat([id_logits, ood_logits], 1)  # [E, N+M, C]
    N = id_logits.shape[1]
    msp = logits.double().softmax(-1).amax(-1)  # [E, N+M]
    scores, _ = policy.scores(logits)  # [E, N+M]
    own = _oriented(policy, scores.double())
    flops = costs.flops.double()
    per_exit = [{"exit": j, "flops": flops[j].item(), "fraction": (flops[j] / costs.backbone_flops).item(),
                 "auroc_msp": auroc(msp[j, :N], msp[j, N:]), "auroc_score": auroc(own[j, :N], own[j, N:])}
                for j in range(E)]
    t = score_thresholds(scores, policy.exit_when, n_thresholds)  # [T]
    exits = exit_indices(scores, t, policy.exit_when)  # [T, N+M]
    cols = torch.arange(logits.shape[1])
    curve = {"thresholds": t.tolist(), "flops": [], "fraction": [], "auroc_msp": [], "auroc_score": []}
    for row in exits:
        m, o = msp[row, cols], own[row, cols]
        cost = flops[row].mean().item()
        curve["flops"].append(cost)
        curve["fraction"].append(cost / costs.backbone_flops)
        curve["auroc_msp"].append(auroc(m[:N], m[N:]))
        curve["auroc_score"].append(auroc(o[:N], o[N:]))
    return {"policy": policy.name, "id_samples": N, "ood_samples": ood_logits.shape[1], "per_exit": per_exit,
            "curve": curve, "note": "ID samples are the positives; flops of the curve: mean over ID and OOD samples"}


def _noise_images(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *shape, generator=g) * 255).round().to(torch.uint8)


def ood_images(run: RunDir, spec: list[str] | str, split: str = "test", *, samples: int | None = None,
               seed: int = 0) -> torch.Tensor:
    """The OOD images ``[M, C, H, W]`` named by ``spec``: ``"noise"`` or ``data.KEY=VALUE`` overrides of the run's
    data config (an in-memory data set; ``split`` picks its ``train`` or ``test`` images)."""
    shape = tuple(run.data().shape)
    specs = [spec] if isinstance(spec, str) else list(spec)
    if specs == ["noise"]:
        return _noise_images(samples or run.loader("test").num_samples, shape, seed)
    for item in specs:
        if not item.startswith("data.") or "=" not in item:
            raise ConfigError(f"--ood: expected 'noise' or data.KEY=VALUE overrides of the run's data settings (e.g. "
                              f"data.name=cifar10 data.root=/path), got {item!r}")
    data = apply_overrides({"data": to_dict(run.config().data)}, specs)["data"]  # typed like --set
    src = load_source(from_dict(DataConfig, data, "data."))
    if not isinstance(src, Dataset):
        raise ConfigError("--ood: only in-memory data sets (IDX, CIFAR, image folders without data.stream, synthetic) "
                          "can serve as OOD data here")
    if split not in ("train", "test"):
        raise ConfigError(f"--ood-split must be train or test, got {split!r}")
    x = src.train_x if split == "train" else src.test_x
    if tuple(x.shape[1:]) != shape:
        raise ConfigError(f"--ood: its images are {tuple(x.shape[1:])} but the model takes {shape}; pick a data set "
                          "with the same channels and size (or data.img_size for image folders)")
    return x[:samples] if samples else x


def ood_logits_for_run(run: RunDir, spec: list[str] | str, split: str = "test", *, samples: int | None = None
                       ) -> torch.Tensor:
    """Per-exit logits ``[E, M, C]`` of the run's model on the OOD images named by ``spec`` (see
    :func:`ood_images`), normalised with the run's own statistics. Not cached."""
    norm = run.data().normalize
    if not norm:
        raise ConfigError(f"{run.path}: OOD detection needs image inputs; this run's data has no pixel normalisation")
    x = ood_images(run, spec, split, samples=samples)
    y = torch.zeros(len(x), dtype=torch.long)
    loader = TensorLoader(x, y, run.config().data.eval_batch_size, mean=torch.tensor(norm["mean"]),
                          std=torch.tensor(norm["std"]))
    return compute_logits(run.model(), loader)[0]


__all__ = ["auroc", "ood_detection", "ood_images", "ood_logits_for_run"]
