"""What a run saves and how it picks up again: the signatures that say which checkpoints a run may resume from or
share, the tensors of a checkpoint, another run's phase 1, and the check that a run directory may be used."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError, ExitlabError
from ..runs import checkpoint as ckpt
from ..runs.config import RunConfig, signature_dict
from ..runs.files import check_out_dir, check_writable, read_status
from ..runs.rundir import checkpoints, signature
from .l2w import L2W
from .phases import Phase


def phase1_signature(cfg: RunConfig, phases: list[Phase]) -> str:
    """What determines a phase-1 result: runs with equal signatures can share one phase-1 checkpoint."""
    keep = {k: signature_dict(cfg)[k] for k in ("model", "data", "seed", "phase1", "amp", "channels_last")}
    keep["data"].pop("eval_batch_size", None)
    keep["data"].pop("workers", None)  # how many processes load the data changes no batch
    keep["phase1"].pop("epochs")  # the planned epochs below count, whether they come from budget or phase1.epochs
    return signature({**keep, "epochs": phases[0].epochs, "flops": phases[0].flops})


def run_signature(cfg: RunConfig) -> str:
    """What determines a run's result: a checkpoint resumes only a run with the same signature."""
    d = signature_dict(cfg)
    for k in ("progress", "threads", "checkpoint_every", "keep_checkpoints", "device"):
        d.pop(k)
    d["data"].pop("workers", None)  # batches do not depend on it: a resume may use another count
    return signature(d)


def check_out(out: Path, cfg: RunConfig, resume: bool) -> None:
    """``out`` may hold this run: new or empty, or (with ``resume``) a run of the same config; and it is writable."""
    check_out_dir(out)
    status = read_status(out)
    if not status and not checkpoints(out):
        foreign = [p.name for p in sorted(out.iterdir()) if not p.name.startswith(".")] if out.is_dir() else []
        if foreign:
            raise ExitlabError(f"{out} is not empty and holds no exitlab run ({', '.join(foreign[:3])}"
                               f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty --out")
    elif not resume:
        raise ExitlabError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    if status.get("run_signature") not in (None, run_signature(cfg)):
        raise ExitlabError(f"{out} holds a run with a different config; resume it with its own config "
                           f"({out / 'config.yaml'}), or choose another --out")
    check_writable(out)


def phase1_source(cfg: RunConfig, phases: list[Phase], source: str | Path) -> tuple[Path, dict, dict]:
    """Load and check another run's phase-1 checkpoint (before anything is written): its path, tensors and meta."""
    if phases[0].kind != 1:
        raise ConfigError(f"regime {cfg.regime!r} has no phase 1 to share; drop phase1_from")
    tensors, meta = ckpt.load_tensors(source)
    if meta.get("phase1_signature") != phase1_signature(cfg, phases) or not meta.get("end"):
        raise CheckpointError(f"{source} is not a finished phase 1 with this run's model, data, seed and "
                              "phase-1 settings; train phase 1 here instead")
    return Path(source), tensors, meta


def checkpoint_name(pi: int, phase: Phase, epochs_done: int, end: bool) -> str:
    return f"{pi:02d}-{phase.name}-{'end' if end else f'e{epochs_done:03d}'}.safetensors"


def checkpoint_tensors(model: torch.nn.Module, opt, best: dict | None, l2w: L2W | None
                       ) -> tuple[dict[str, torch.Tensor], dict | None, dict | None]:
    """A checkpoint's tensors (the model, the optimizer, the best weights so far, L2W's weight net and optimizer,
    so that a resumed run is exact), and the descriptions of the two optimizers' states for the meta."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_t, opt_info = ckpt.optimizer_tensors(opt) if opt is not None else ({}, None)
    tensors.update(opt_t)
    if best is not None:
        tensors.update({f"best.{k}": v for k, v in best.items()})
    l2w_info = None
    if l2w is not None:
        tensors.update({f"l2w.net.{k}": v for k, v in l2w.net.state_dict().items()})
        l2w_t, l2w_info = ckpt.optimizer_tensors(l2w.opt)
        tensors.update({f"l2w.{k}": v for k, v in l2w_t.items()})
    return tensors, opt_info, l2w_info


def restore_l2w(l2w: L2W, tensors: dict, meta: dict) -> None:
    """L2W's weight net and its optimizer, from the checkpoint resumed."""
    l2w.net.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("l2w.net.")})
    ckpt.restore_optimizer(l2w.opt, {k[4:]: v for k, v in tensors.items() if k.startswith("l2w.optim.")},
                           meta["l2w_optimizer"])


def restore_best(opt, tensors: dict, meta: dict, device: torch.device) -> dict | None:
    """Restore the optimizer from the checkpoint resumed and return the best weights it kept (``None``: none)."""
    ckpt.restore_optimizer(opt, tensors, meta["optimizer"])
    return {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")} or None
