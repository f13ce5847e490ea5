"""torchrun / DDP plumbing: process-group setup from the environment, rank-0-only writes, metric reduction.

exitlab uses PyTorch's own DistributedDataParallel. The model is re-wrapped at every phase change over the module
that phase runs and its trainable parameters only, so frozen or unused parameters never reach DDP and
``find_unused_parameters`` is not needed.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .. import errors
from ..errors import ConfigError

_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()  # a plain single-process run


def env_info() -> DistInfo:
    """Read torchrun's variables; all or none must be set, and consistently."""
    present = [v for v in _VARS if v in os.environ]
    if not present:
        return DistInfo()
    missing = [v for v in _VARS if v not in os.environ]
    if missing:
        raise ConfigError(f"torchrun environment incomplete: {', '.join(missing)} not set (have {', '.join(present)});"
                          " launch with `torchrun --nproc_per_node=N -m exitlab train ...`")
    try:
        rank, world, local = (int(os.environ[v]) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        raise ConfigError("torchrun environment: RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if world < 1 or not 0 <= rank < world or local < 0 or local > rank:
        raise ConfigError(f"torchrun environment inconsistent: RANK={rank}, LOCAL_RANK={local}, WORLD_SIZE={world}")
    return DistInfo(rank, world, local)


def setup(device: torch.device, timeout_s: float | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (gloo on CPU, nccl on CUDA). Every collective times out."""
    info = env_info()
    if not info.enabled or dist.is_initialized():
        return info
    timeout = datetime.timedelta(seconds=timeout_s or float(os.environ.get("EXITLAB_DIST_TIMEOUT", 600)))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend, rank=info.rank, world_size=info.world, timeout=timeout)
    return info


def local_device(device: torch.device, info: DistInfo) -> torch.device:
    if device.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return device


def check_batch(batch_size: int, info: DistInfo) -> int:
    """The per-rank batch size; the global batch must split evenly so every rank sees the same number of samples."""
    if batch_size % info.world:
        raise ConfigError(f"data.batch_size {batch_size} is not divisible by the world size {info.world}; "
                          f"use a multiple of {info.world}, e.g. {batch_size - batch_size % info.world or info.world}")
    return batch_size // info.world


def wrap(module: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DDP over ``module``'s trainable parameters (DDP skips parameters with requires_grad=False)."""
    if not info.enabled:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=True)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (a copy; the input is left alone)."""
    if not info.enabled:
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def agree(info: DistInfo, check) -> None:
    """Run ``check`` on rank 0 and raise its ExitlabError on every rank, so no rank waits on a failed one."""
    message = None
    if info.is_main:
        try:
            check()
        except errors.ExitlabError as e:
            message = (type(e).__name__, str(e))
    if info.enabled:
        box = [message]
        dist.broadcast_object_list(box, src=0)
        message = box[0]
    if message is not None:
        raise getattr(errors, message[0], errors.ExitlabError)(message[1])


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
