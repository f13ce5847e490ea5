"""Zero Time Waste's geometric ensemble: learned weights over the exits so far, fitted on a frozen model.

ZTW (Wołczyk et al. 2021) has two parts. The cascading connection (each head also reads the previous head's
layer-normalised, detached logits) is a head option: ``model.head_kwargs={cascade: true}``. The ensemble is fitted
here, in a short extra phase after training: the model is frozen, its per-exit logits on the training split are
cached once, and only the ensembles' log-weights ``v [K, K]`` and biases ``bias [K, C]`` are trained (``K``
internal classifiers), by full-batch Adam on the summed negative log-likelihood of every IC's ensemble:

    log q_m = log_softmax( sum_{i <= m} exp(v[m, i]) * log_softmax(z_i) + bias[m] )

As in the reference code (gmum/Zero-Time-Waste), the weights are ``exp(v) >= 0``, each ensemble has one bias per
class, and there is no ensemble on the final exit. ``v`` starts at ``-log(m + 1)``, so ensemble ``m`` starts as the
reference's does: the mean of the log-probabilities so far. The result is a :class:`exitlab.policies.ZTW` policy,
which applies the same formula exit by exit.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import ExitlabError
from ..runs.files import atomic_write
from ..runs.rundir import RunDir
from .policies import ZTW

log = logging.getLogger("exitlab")
FORMAT = "2"  # 2: exp weights [K, K], bias [K, C], no final ensemble


def ensemble_log_probs(logits: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Log-probabilities ``[E, N, C]`` of every exit from logits ``[E, N, C]``: IC ``m`` (``m < K``) by its
    ensemble with ``weight [K, K]`` and ``bias [K, C]``, the exits after them (the final one) alone."""
    K = weight.shape[0]
    logp = F.log_softmax(logits.float(), -1)  # [E, N, C]
    acc = torch.einsum("mi,inc->mnc", weight.tril(), logp[:K]) + bias[:, None]  # [K, N, C]
    return torch.cat([F.log_softmax(acc, -1), logp[K:]])


def fit_ensemble(logits: torch.Tensor, labels: torch.Tensor, *, steps: int = 200, lr: float = 0.05,
                 max_samples: int = 20000, seed: int = 0) -> ZTW:
    """Fit the ensembles of the internal classifiers on cached logits ``[E, N, C]`` (the last exit is the final
    one) and labels ``[N]``; returns a ZTW policy. Uses at most ``max_samples`` samples (a seeded random subset)
    so the phase stays short on large splits."""
    E, N, C = logits.shape
    if N == 0:
        raise ExitlabError("cannot fit the ZTW ensemble on 0 samples")
    if E < 2:
        raise ExitlabError("ZTW needs at least one internal classifier before the final exit; the model has none")
    if N > max_samples:
        keep = torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:max_samples]
        logits, labels = logits[:, keep], labels[keep]
    K = E - 1
    logits = logits[:K].detach().float()
    causal = torch.ones(K, K).tril()
    log_w = (-torch.arange(1, K + 1, dtype=torch.float32).log())[:, None].expand(K, K).clone().requires_grad_(True)
    bias = torch.zeros(K, C, requires_grad=True)
    opt = torch.optim.Adam([log_w, bias], lr=lr)
    target = labels.repeat(K)
    for _ in range(steps):
        logq = ensemble_log_probs(logits, log_w.exp() * causal, bias)  # [K, N', C]
        loss = F.nll_loss(logq.reshape(-1, C), target) * K  # sum over the ICs of the mean NLL
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    log.info("ztw: ensemble fitted on %d samples, final summed NLL %.4f", len(labels), loss.item())
    return ZTW((log_w.detach().exp() * causal), bias.detach())


def save_ensemble(policy: ZTW, path: str | Path, *, model_digest: str = "") -> None:
    """Write the ensemble's weight and bias (and the model it was fitted on) to a safetensors file."""
    tensors = {"weight": policy.weight.contiguous(), "bias": policy.bias.contiguous()}
    atomic_write(Path(path), lambda p: save_file(tensors, str(p), metadata={"model_sha256": model_digest,
                                                                          "format": FORMAT}))


def load_ensemble(path: str | Path, *, model_digest: str | None = None) -> ZTW | None:
    """The ensemble saved at ``path``; None when absent or fitted on a different model than ``model_digest``."""
    path = Path(path)
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if model_digest is not None and meta.get("model_sha256") != model_digest:
            log.info("%s was fitted on another model; refitting", path)
            return None
        if meta.get("format") != FORMAT:
            log.info("%s was written by an older exitlab (unconstrained weights); refitting", path)
            return None
        return ZTW(f.get_tensor("weight"), f.get_tensor("bias"))


def ztw_for_run(run_dir: str | Path | RunDir, *, steps: int = 200) -> ZTW:
    """The run's ZTW policy: loaded from ``ztw.safetensors`` if it matches the model, else fitted on the cached
    training-split logits of the frozen model (the short extra phase) and saved there."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    digest = run.model_digest()
    policy = load_ensemble(run / RunDir.ZTW, model_digest=digest)
    if policy is None:
        logits, labels = run.logits("train")
        if not run.model().head_kwargs.get("cascade"):
            log.info("ztw: the heads are not cascading (model.head_kwargs.cascade is off); fitting the ensemble alone")
        policy = fit_ensemble(logits, labels, steps=steps)
        save_ensemble(policy, run / RunDir.ZTW, model_digest=digest)
    return policy
