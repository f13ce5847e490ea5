"""Train a multi-exit model under a regime, in a run directory that can be resumed exactly.

:func:`train` takes a config and, optionally, components: a ready :class:`MultiExitModel` (built-in, adapted,
timm or torchvision), a data source, and probes (plain functions called after every step or epoch). The public
``exitlab.train`` (:mod:`exitlab.recipes`) builds those from a config or from keyword options and calls it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..data import RunData, Source, build_run_data
from ..data.text import TextLoader
from ..errors import CheckpointError, ConfigError
from ..models.core import MultiExitModel, eval_mode
from ..models.hf import vocab_size as hf_vocab_size
from ..runs import checkpoint as ckpt
from ..runs import faults
from ..runs.config import RunConfig, dump_config
from ..runs.files import RunLock, append_jsonl, read_jsonl, read_status, repair_jsonl
from ..runs.rundir import MEMORY, RunDir, checkpoints, environment, newest_valid, remove_partial_writes
from .accounting import compute_summary, shared_phase1
from .compile import maybe_compile
from .distributed import SINGLE, DistInfo, agree, barrier, check_batch, env_info, local_device, teardown, wrap
from .distributed import setup as dist_setup
from .l2w import L2W
from .loop import (
    CHECK_EVERY,
    PhaseState,
    evaluate,
    make_optimizer,
    phase_score,
    set_modes,
    set_trainable,
    step_flops,
    train_epoch,
    trained_scores,
)
from .objective import phase_module
from .phases import Phase, resolve_steps
from .planning import Plan, model_from_config, preflight
from .pretrained import regime_title, resolve_tokenizer
from .probes import ProbeContext, Probes
from .resume import (
    check_out,
    checkpoint_name,
    checkpoint_tensors,
    phase1_signature,
    phase1_source,
    restore_best,
    restore_l2w,
    run_signature,
)
from .stopping import Stopper

log = logging.getLogger("exitlab")


Data = RunData  # the name this module used to export


def prepare_data(cfg: RunConfig, device: torch.device, info: DistInfo = SINGLE, data: Source | None = None
                 ) -> RunData:
    """The run's data (see :func:`exitlab.data.build_run_data`): the data set ``cfg.data`` names, or ``data``.
    Under DDP every rank takes its slice of each global batch."""
    check_batch(cfg.data.batch_size, info)
    return build_run_data(resolve_tokenizer(cfg.data), cfg.seed_split, device, shard=(info.rank, info.world),
                          channels_last=cfg.channels_last, data=data)


def _fits(model: MultiExitModel, data: RunData) -> MultiExitModel:
    """The model (passed in, or built by a factory whose network has its own classifier) must predict the data's
    classes."""
    if model.num_classes != len(data.classes):
        raise ConfigError(f"the model predicts {model.num_classes} classes but the data has {len(data.classes)}; "
                          f"build it with num_classes={len(data.classes)}")
    if isinstance(data.train, TextLoader):
        top = max(int(loader.x[:, 0].max()) for loader in (data.train, data.val, data.test) if loader.num_samples)
        if top >= hf_vocab_size(model):
            raise ConfigError(f"the data holds token id {top} but the encoder's embedding table has "
                              f"{hf_vocab_size(model)} rows; tokenize with the model's own tokenizer")
        return model
    try:
        with torch.no_grad(), eval_mode(model):
            model(torch.zeros(2, *data.shape, dtype=data.input_dtype))
    except RuntimeError as e:
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise ConfigError(f"the model does not take the data's samples of shape {tuple(data.shape)} ({first}); build "
                          f"it for that input (in_chans={data.shape[0]}, its image size)") from None
    return model


def make_model(cfg: RunConfig, data: RunData) -> MultiExitModel:
    torch.manual_seed(cfg.seed_init)
    vocab = len(data.tokenizer) if data.tokenizer is not None else None
    model = model_from_config(cfg.model, len(data.classes), data.shape, task=cfg.data.text.task, vocab_size=vocab)
    if vocab is not None and vocab > hf_vocab_size(model):
        raise ConfigError(f"the tokenizer has {vocab} tokens but the encoder's embedding table only "
                          f"{hf_vocab_size(model)}; use the model's own tokenizer (data.text.tokenizer)")
    return model


def seed_epoch(seed: int, phase_index: int, epoch: int, rank: int = 0) -> int:
    """Seed torch's global generator (dropout) for one epoch and return the data seed (batch order, augmentation).

    The data seed is the same on every rank, so every rank cuts the same global batch. The dropout seed differs
    by rank, so ranks draw independent masks; rank 0 draws what one process would. With dropout, a DDP run is
    therefore equivalent to one process in distribution, not bit for bit; without dropout it is the same run.
    """
    data_seed = seed * 1_000_003 + phase_index * 10_007 + epoch
    torch.manual_seed(data_seed + 7_919 * rank)
    return data_seed


class _Run:
    """State of one training run. ``train()`` is the entry point; this class only keeps its pieces together."""

    def __init__(self, cfg: RunConfig, out: Path, plan: Plan, info: DistInfo = SINGLE, *,
                 model: MultiExitModel | None = None, data: Source | None = None, probes: Probes | None = None):
        self.cfg, self.out, self.info = cfg, out, info
        self.rundir = RunDir(out)
        self.metrics = self.rundir / RunDir.METRICS
        self.device, self.phases = plan.device, plan.phases  # the preflight's: what it checked is what runs
        self.probes = probes or Probes()
        self.in_memory = data is not None  # data passed in: the run cannot read it again by name
        self.data = prepare_data(cfg, self.device, info, data)
        self.model = _fits(make_model(cfg, self.data) if model is None else model, self.data).to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.flops_per_sample = self._measure_flops()  # before compiling: the counter sees the eager model
        per_step = {k: f * cfg.data.batch_size for k, f in self.flops_per_sample.items()}
        planned, self.phases = self.phases, resolve_steps(self.phases, per_step, len(self.data.train))
        maybe_compile(self.model, cfg.compile)
        self.sig = run_signature(cfg)
        self.p1sig = phase1_signature(cfg, planned) if planned[0].kind == 1 else None  # as phase1_source sees it

    def _measure_flops(self) -> dict[int, float]:
        """Training FLOPs per sample of each phase kind the run has: one measured step on a batch of zeros."""
        b = self.cfg.data.batch_size // self.info.world
        x = torch.zeros(b, *self.data.shape, dtype=self.data.input_dtype, device=self.device)
        if self.cfg.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.zeros(b, *self.data.target_shape, dtype=torch.long, device=self.device)
        return {p.kind: step_flops(self.model, p, x, y) / b for p in {p.kind: p for p in self.phases}.values()}

    # ------------------------------------------------------------ checkpoints
    def save(self, pi: int, epochs_done: int, step: int, opt, best: dict | None, stop: Stopper, end: bool,
             l2w: L2W | None = None) -> Path:
        """Rank 0 writes the checkpoint; the other ranks wait for it."""
        phase = self.phases[pi]
        path = self.rundir / RunDir.CHECKPOINTS / checkpoint_name(pi, phase, epochs_done, end)
        if not self.info.is_main:
            barrier(self.info)
            return path
        tensors, opt_info, l2w_info = checkpoint_tensors(self.model, opt, best, l2w)
        meta = dict(phase_index=pi, phase=phase.kind, epochs_done=epochs_done, step=step, stopper=stop.state(),
                    best_score=stop.best_score, has_best=best is not None, optimizer=opt_info, run_signature=self.sig,
                    phase1_signature=self.p1sig if pi == 0 else None, metrics_lines=len(read_jsonl(self.metrics)),
                    end=end, l2w_optimizer=l2w_info)
        ckpt.save_tensors(path, tensors, meta)
        self._prune()
        barrier(self.info)
        return path

    def _prune(self) -> None:
        periodic = [p for p in checkpoints(self.out) if not p.stem.endswith("-end")]
        for p in periodic[: -self.cfg.keep_checkpoints]:
            p.unlink(missing_ok=True)

    def restore(self, tensors: dict, meta: dict, source: Path) -> None:
        if meta.get("run_signature") != self.sig:
            raise CheckpointError(f"{source} was written by a run with a different config; resume with the same "
                                  "config, or start a new --out")
        ckpt.load_state(self.model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, source)

    # ------------------------------------------------------------ phases
    def run_phase(self, pi: int, resume: tuple[dict, dict] | None) -> None:
        phase, cfg = self.phases[pi], self.cfg
        state, start, best, stop = self._start_phase(pi, resume)
        for epoch in range(start, phase.epochs):
            if stop.done or (phase.steps and state.step >= phase.steps):
                break
            record = self._epoch(pi, epoch, state, stop)
            if stop.update(record["score"], trained_scores(phase, record["val_acc"])):
                best = {k: v.detach().clone() for k, v in self.model.state_dict().items()} if stop.patience else None
            self.log(record)
            end_of_epoch = self._probe(self.probes.on_epoch, phase, pi, epoch + 1)
            if end_of_epoch is not None:
                end_of_epoch(state.step)
            faults.point("epoch")
            if (epoch + 1) % cfg.checkpoint_every == 0 and epoch + 1 < phase.epochs:
                self.save(pi, epoch + 1, state.step, state.opt, best, stop, end=False, l2w=state.l2w)
        if best is not None:
            self.model.load_state_dict(best)
        self.save(pi, phase.epochs, state.step, None, None, stop, end=True)

    def _start_phase(self, pi: int, resume) -> tuple[PhaseState, int, dict | None, Stopper]:
        """The phase's loop state, the epoch it starts at, the best weights so far and the stopping state: fresh,
        or from the checkpoint resumed."""
        phase, loader = self.phases[pi], self.data.train
        opt = make_optimizer(set_trainable(self.model, phase), phase, self.model)
        net = wrap(phase_module(self.model, phase), self.info, self.device)  # re-wrapped at every phase
        l2w = self._l2w(phase, pi, resume)
        if resume is None:
            start, step, best, stop = 0, 0, None, Stopper.for_phase(phase.options)
        else:
            tensors, meta = resume
            best = restore_best(opt, tensors, meta, self.device)
            start, step, stop = meta["epochs_done"], meta["step"], Stopper.from_state(meta["stopper"])
        state = PhaseState(net, phase, loader, opt, total_steps=phase.steps or phase.epochs * len(loader), step=step,
                           amp=self.cfg.amp, warmup_steps=round(phase.options.warmup_epochs * len(loader)),
                           info=self.info, l2w=l2w,
                           check_every=1 if self.probes.on_step else CHECK_EVERY)  # the same on every rank
        return state, start, best, stop

    def _l2w(self, phase: Phase, pi: int, resume) -> L2W | None:
        """L2W's state for the phase (None without ``l2w.epsilon``): fresh, or from the checkpoint resumed."""
        l2w = L2W.for_phase(phase.options.l2w, self.model.num_exits, self.device, self.cfg.seed_init * 1_009 + pi)
        if l2w is None:
            return None
        if self.info.world > 1:
            raise ConfigError(f"{phase.name}.l2w.epsilon: L2W's weight net is not synchronised across ranks yet; "
                              "train it in one process")
        if resume is not None:
            restore_l2w(l2w, *resume)
        return l2w

    def _epoch(self, pi: int, epoch: int, state: PhaseState, stop: Stopper) -> dict:
        """One training epoch (advancing ``state.step``) and its validation pass; returns the epoch's metrics."""
        phase, cfg = state.phase, self.cfg
        self.data.train.set_epoch_seed(seed_epoch(cfg.seed_data_order, pi, epoch, self.info.rank))
        set_modes(self.model, phase)
        t0 = time.perf_counter()
        where = f"{phase.name} (phase {pi + 1} of {len(self.phases)}) epoch {epoch + 1}"
        state.lr_scale, state.on_step = stop.lr_scale, self._probe(self.probes.on_step, phase, pi, epoch)
        stats = train_epoch(state, max_steps=phase.steps - state.step if phase.steps else None, where=where,
                            progress=self._bar(f"{phase.name} {epoch + 1}/{phase.epochs}"))
        step = state.step
        accs, _ = evaluate(self.model, self.data.val, cfg.amp, self.info)
        samples = stats.samples * self.info.world
        log.info("%s: loss %.4f, val acc per exit %s", where, stats.loss, " ".join(f"{a:.3f}" for a in accs))
        return dict(phase=phase.kind, phase_index=pi, epoch=epoch + 1, step=step, train_loss=stats.loss,
                          train_exit_losses=stats.exit_losses, val_acc=accs, score=phase_score(phase, accs),
                          samples=samples, train_flops=samples * self.flops_per_sample[phase.kind],
                          lr_scale=stop.lr_scale, seconds=time.perf_counter() - t0)

    def _probe(self, fns: list, phase: Phase, pi: int, epoch: int):
        """The step probe point: calls every function in ``fns`` (rank 0 only), or None when there are none."""
        if not fns or not self.info.is_main:
            return None

        def at(step: int) -> None:
            ctx = ProbeContext(self.model, phase, pi, epoch, step, self.data, self.rundir)
            for fn in fns:
                fn(ctx)

        return at

    def write_status(self, status: dict) -> None:
        if self.info.is_main:
            ckpt.atomic_write(self.rundir / RunDir.STATUS, lambda p: p.write_text(json.dumps(status, indent=2)))

    def log(self, record: dict) -> None:
        if self.info.is_main:
            append_jsonl(self.metrics, record)

    def _bar(self, desc: str):
        if not (self.cfg.progress and self.info.is_main and sys.stderr.isatty()):
            return None
        return lambda it: tqdm(it, desc=desc, leave=False, dynamic_ncols=True)


def train(cfg: RunConfig, out: str | Path, *, resume: bool = False, phase1_from: str | Path | None = None,
          model: MultiExitModel | None = None, data: Source | None = None, probes: Probes | None = None) -> Path:
    """Train ``cfg`` into run directory ``out`` and return it.

    ``model`` trains that model (in place) instead of building the one ``cfg.model`` describes; ``data`` uses
    that data source instead of the data set ``cfg.data`` names (its split and batching settings still apply);
    ``probes`` are called during training. ``cfg.grad_log_every`` needs the gradient probe that
    ``exitlab.train`` adds.

    ``resume`` continues from the newest valid checkpoint in ``out`` (exactly: the weights equal an uninterrupted
    run's on CPU). ``phase1_from`` starts from another run's phase-1 checkpoint instead of training phase 1, after
    checking that its phase-1 settings are identical (this is how disjoint and mixed share phase 1). Under torchrun
    every rank calls this; rank 0 alone writes to ``out``.
    """
    out = Path(out)
    if cfg.grad_log_every and probes is None:
        raise ConfigError("grad_log_every is set but no probes were given; call exitlab.train, which adds the "
                          "gradient logger, or pass probes=exitlab.recipes.probes_for(cfg)")
    plan = preflight(cfg, model)  # a config that can never work fails before anything is created, locked or read
    p1 = phase1_source(cfg, plan.phases, phase1_from) if phase1_from is not None else None
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = env_info()
    plan = dataclasses.replace(plan, device=local_device(plan.device, info))  # this rank's GPU under torchrun
    info = dist_setup(plan.device)
    try:
        agree(info, lambda: check_out(out, cfg, resume))
        with RunLock(out) if info.is_main else contextlib.nullcontext():
            return _train(_Run(cfg, out, plan, info, model=model, data=data, probes=probes), resume, p1)
    finally:
        teardown(info)


def _train(run: _Run, resume: bool, phase1_from) -> Path:
    cfg, out, info = run.cfg, run.out, run.info
    status = read_status(out)
    if status.get("status") == "done":
        log.info("%s is already finished; nothing to do", out)
        return out
    if not status:  # run.json first: from here on the directory is recognisably a run
        status = {"status": "starting", "run_signature": run.sig}
        if run.in_memory:
            status["data_source"] = MEMORY
        run.write_status(status)
    if info.is_main:
        ckpt.atomic_write(run.rundir / RunDir.CONFIG, lambda p: p.write_text(dump_config(cfg)))
        env = json.dumps({**environment(), "world_size": info.world}, indent=2)
        ckpt.atomic_write(run.rundir / RunDir.ENV, lambda p: p.write_text(env))
        if run.data.tokenizer is not None:
            run.rundir.save_tokenizer(run.data.tokenizer)
    first, resume_state = _starting_point(run, resume, phase1_from, status)
    status.update(status="running", regime=cfg.regime, run_signature=run.sig,
                  phases=[dataclasses.asdict(p) for p in run.phases], regime_title=regime_title(cfg),
                  **({"data_fingerprint": run.data.fingerprint} if run.data.fingerprint else {}))
    run.write_status(status)
    t0 = time.perf_counter()
    for pi in range(first, len(run.phases)):
        run.run_phase(pi, resume_state if pi == first else None)
        faults.point("phase")
    if info.is_main:
        ckpt.save_pretrained(run.model, out, extra={"dataset": cfg.data.name, "regime": cfg.regime,
                                                     "data_fingerprint": run.data.fingerprint},
                             classes=run.data.classes, normalize=run.data.normalize)
    status.update(status="done", seconds=status.get("seconds", 0) + time.perf_counter() - t0,
                  compute=compute_summary(run.rundir.metrics(), run.phases, run.flops_per_sample, cfg,
                                          shared=shared_phase1(status)))
    run.write_status(status)
    barrier(info)
    return out


def _starting_point(run: _Run, resume: bool, phase1_from, status: dict) -> tuple[int, tuple | None]:
    """Which phase to start in, and the checkpoint state to resume it from."""
    if resume and run.info.is_main:
        for p in remove_partial_writes(run.out):
            log.warning("removed %s, left by an interrupted write", p)
    found = newest_valid(run.out, ckpt.load_tensors) if resume else None
    if resume and found is None and checkpoints(run.out):
        raise CheckpointError(f"every checkpoint in {run.rundir / RunDir.CHECKPOINTS} is corrupt (see the warnings "
                              "above); move them away to start this run over")
    if found is not None:
        path, (tensors, meta) = found
        run.restore(tensors, meta, path)
        pi = meta["phase_index"]
        if run.info.is_main:
            upto = (pi, meta["epochs_done"])
            repair_jsonl(run.metrics, lambda r: "phase_index" in r and "epoch" in r
                         and (r["phase_index"], r["epoch"]) <= upto)
        log.info("resuming from %s", path)
        return (pi + 1, None) if meta["end"] else (pi, (tensors, meta))
    if run.metrics.exists() and run.info.is_main:
        run.metrics.unlink()  # a run that never reached a checkpoint starts over
    if phase1_from is None:
        return 0, None
    path, tensors, meta = phase1_from
    ckpt.load_state(run.model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    status["phase1_from"] = str(path.resolve())
    run.save(0, run.phases[0].epochs, 0, None, None, Stopper.from_state(meta["stopper"]), end=True)
    return 1, None
