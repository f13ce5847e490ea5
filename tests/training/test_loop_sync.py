"""The training step never waits for the device: losses and gradient flags stay on it and are read back every
``check_every`` steps and at the end of the epoch, yet the weights, the reported losses and the errors are exactly
what a plain step-by-step loop gives.

No GPU here, so "waits for the device" is counted on CPU: every call that would block the host on a CUDA tensor
(``item``, ``tolist``, ``bool``/``float``/``int`` of a tensor, ``numpy``, ``cpu``, ``torch.cuda.synchronize``) is
patched to count itself during an epoch.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch

from exitlab.data import TensorLoader
from exitlab.errors import TrainingError
from exitlab.models import build_model
from exitlab.runs.phase_config import PhaseConfig
from exitlab.training.loop import PhaseState, lr_at, train_epoch
from exitlab.training.objective import phase_loss
from exitlab.training.phases import Phase, exit_weights

NUM_CLASSES = 7
BATCH = 8
SYNCING = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("resnet8", num_classes=NUM_CLASSES, img_size=16, exits=[0, 1], head="sdn")


def _loader(steps: int, seed: int = 1) -> TensorLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (BATCH * steps, 3, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.randint(0, NUM_CLASSES, (BATCH * steps,), generator=g)
    return TensorLoader(x, y, BATCH, mean=torch.full((3,), 0.5), std=torch.full((3,), 0.25), shuffle=True, pad=2,
                        flip=True, drop_last=True)


@contextmanager
def counting_syncs():
    """Count every call that would make the host wait for a CUDA device, while the block runs."""
    counts: dict[str, int] = {}
    saved = {name: getattr(torch.Tensor, name) for name in SYNCING}
    saved_sync = torch.cuda.synchronize

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return fn(*args, **kwargs)
        return wrapper

    for name, fn in saved.items():
        setattr(torch.Tensor, name, counted(name, fn))
    torch.cuda.synchronize = counted("cuda.synchronize", saved_sync)
    try:
        yield counts
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
        torch.cuda.synchronize = saved_sync


def _phase(clip: float = 0.0) -> Phase:
    """A joint phase with its weights resolved, as the trainer plans it (a hand-built Phase without them would
    resolve them on the host at every step)."""
    opts = PhaseConfig(lr=0.05, grad_clip=clip)
    return Phase(2, 1, opts, weights=exit_weights(2, opts, 3))


def _epoch(steps: int, check_every: int, clip: float = 0.0, **kwargs):
    model = _model()
    phase = _phase(clip)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = _loader(steps)
    with counting_syncs() as counts:
        state = PhaseState(model, phase, loader, opt, total_steps=steps, check_every=check_every, **kwargs)
        stats = train_epoch(state)
    return model, stats, state.step, counts


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_an_epoch_reads_the_device_once_per_check_not_once_per_step(clip):
    steps, every = 12, 4
    _, stats, step, counts = _epoch(steps, every, clip)
    assert step == steps and stats.steps == steps
    # 12 / 4 = 3 checks (the last one is the epoch's end), plus one read of the per-exit means
    assert sum(counts.values()) == steps // every + 1, counts
    _, _, _, per_step = _epoch(steps, 1, clip)
    assert sum(per_step.values()) == steps + 1, per_step  # the counter does see every check


def test_a_step_probe_makes_the_loop_check_after_every_step():
    seen = []
    _, _, _, counts = _epoch(6, 4, on_step=seen.append)
    assert seen == [1, 2, 3, 4, 5, 6]
    assert sum(counts.values()) == 6 + 1, counts


def _reference(steps: int, clip: float) -> tuple[torch.nn.Module, list[float], list[list[float]]]:
    """The plain loop: the loss read and checked every step before the update, torch's own clipping."""
    model = _model()
    phase = _phase(clip)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses, per_exits = [], []
    for step, (x, y) in enumerate(_loader(steps)):
        for g in opt.param_groups:
            g["lr"] = lr_at(phase, step, steps)
        loss, per_exit = phase_loss(model, phase, x, y)
        assert math.isfinite(loss.item())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(loss.item())
        per_exits.append(per_exit.detach())
    return model, losses, (torch.stack(per_exits).sum(0) / steps).tolist()


@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_weights_and_losses_equal_a_plain_step_by_step_loop(clip):
    steps = 6
    model, stats, _, _ = _epoch(steps, 4, clip)
    ref, losses, exit_means = _reference(steps, clip)
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
    assert stats.loss == sum(losses) / steps
    assert stats.exit_losses == pytest.approx(exit_means, rel=1e-6)


def _poison(model: torch.nn.Module, at_call: int, where: str) -> None:
    """From the ``at_call``-th forward on, the final exit's logits are NaN (``where="loss"``) or their gradient
    is (``where="grad"``: the loss stays finite)."""
    calls = [0]

    def hook(mod, inputs, out):
        calls[0] += 1
        if calls[0] < at_call:
            return out
        if where == "loss":
            return out * float("nan")
        out = out * 1.0
        out.register_hook(lambda g: g * float("nan"))
        return out

    model.backbone.final.register_forward_hook(hook)


@pytest.mark.parametrize("where", ["loss", "grad"])
def test_the_error_names_the_first_bad_step_even_when_found_later(where):
    model = _model()
    _poison(model, at_call=3, where=where)  # the third step (step 2) goes wrong; the check runs after step 4
    phase = Phase(2, 1, PhaseConfig(lr=0.05))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    message = r"non-finite loss at here step 2 \(exit 2 of the phase's 3\); lower the learning rate" \
        if where == "loss" else r"non-finite gradient at here step 2 \(the loss was finite: per-exit losses \[\d"
    with pytest.raises(TrainingError, match=message):
        train_epoch(PhaseState(model, phase, _loader(8), opt, total_steps=8, check_every=4), where="here")


def test_a_bad_last_step_is_caught_by_the_end_of_epoch_check():
    model = _model()
    _poison(model, at_call=6, where="loss")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.raises(TrainingError, match=r"step 5 \(exit 2"):
        train_epoch(PhaseState(model, Phase(2, 1, PhaseConfig(lr=0.05)), _loader(6), opt, total_steps=6,
                               check_every=100))
