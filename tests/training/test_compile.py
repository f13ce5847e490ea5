"""Speed options must not change results beyond a stated tolerance: bf16 autocast, channels_last, torch.compile.

Every comparison is against the plain fp32, contiguous, eager path on the same seeded tiny model and data, through
the code the trainer uses (``TensorLoader`` for channels_last, ``train_epoch``'s ``amp`` for autocast).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from exitlab.data import TensorLoader
from exitlab.errors import ConfigError
from exitlab.models import build_model, from_module
from exitlab.runs.phase_config import PhaseConfig
from exitlab.training.compile import VARIANTS_PER_SHAPE, compile_parts, is_compiled, maybe_compile, recompiles_needed
from exitlab.training.loop import PhaseState, train_epoch
from exitlab.training.objective import exit_losses
from exitlab.training.phases import Phase

NUM_CLASSES = 7  # odd on purpose: shape bugs show up
STEPS = 4  # SGD steps in the short-training comparisons

# Tolerances, as relative L2 errors ||a - b|| / ||b||. bf16 keeps 8 mantissa bits (~0.4% per rounding); on the
# tiny model the measured errors are ~0.5% for logits and ~0.5% for the 4-step weight update, so 3% leaves room
# for other CPUs and oneDNN versions while still catching a wrong cast (a dropped scale, fp16 overflow, ...).
BF16_LOGITS_RTOL = 3e-2
BF16_UPDATE_RTOL = 3e-2
BF16_LOSS_RTOL = 1e-2
FP32_RTOL = 1e-5  # channels_last and compile change only the kernels' summation order


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("resnet8", num_classes=NUM_CLASSES, img_size=16, exits=[0, 1], head="sdn")


def _loader(channels_last: bool = False) -> TensorLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (16 * STEPS, 3, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.randint(0, NUM_CLASSES, (16 * STEPS,), generator=g)
    return TensorLoader(x, y, 16, mean=torch.full((3,), 0.5), std=torch.full((3,), 0.25), shuffle=True, pad=2,
                        flip=True, drop_last=True, channels_last=channels_last)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _flat(sd: dict) -> torch.Tensor:
    return torch.cat([v.flatten().float() for v in sd.values() if v.is_floating_point()])


def _short_training(model: nn.Module, *, amp: str = "none", channels_last: bool = False):
    """``STEPS`` joint-phase SGD steps; returns (mean loss, weight update as one flat vector)."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    before = _flat(model.state_dict()).clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    state = PhaseState(model, Phase(2, 1, PhaseConfig(lr=0.05)), _loader(channels_last), opt, total_steps=STEPS,
                       amp=amp)
    stats = train_epoch(state)
    assert state.step == STEPS
    return stats.loss, _flat(model.state_dict()) - before


# ------------------------------------------------------------------ bf16 autocast


def test_bf16_autocast_logits_within_tolerance():
    model = _model().eval()
    x, _ = next(iter(_loader()))
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert all(o.dtype == torch.bfloat16 for o in low)  # autocast really ran: the option is not a no-op
    for r, o in zip(ref, low):
        assert _rel(o, r) < BF16_LOGITS_RTOL
        assert (o.float().argmax(1) == r.argmax(1)).float().mean() >= 0.9


def test_bf16_short_training_within_tolerance():
    loss_ref, upd_ref = _short_training(_model())
    loss_bf, upd_bf = _short_training(_model(), amp="bf16")
    assert abs(loss_bf - loss_ref) / loss_ref < BF16_LOSS_RTOL
    assert _rel(upd_bf, upd_ref) < BF16_UPDATE_RTOL
    assert not torch.equal(upd_bf, upd_ref)  # bf16 rounding must be visible, else autocast was off


# ------------------------------------------------------------------ channels_last


def test_channels_last_logits_match_fp32():
    model = _model().eval()
    x, _ = next(iter(_loader()))
    with torch.no_grad():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last)
        xc = x.contiguous(memory_format=torch.channels_last)
        assert cl.backbone.stem(xc).is_contiguous(memory_format=torch.channels_last)  # the layout propagates
        out = cl(xc)
    for r, o in zip(ref, out):
        assert _rel(o, r) < FP32_RTOL


def test_channels_last_short_training_matches_fp32():
    loss_ref, upd_ref = _short_training(_model())
    loss_cl, upd_cl = _short_training(_model(), channels_last=True)
    assert loss_cl == pytest.approx(loss_ref, rel=FP32_RTOL)
    assert _rel(upd_cl, upd_ref) < 1e-4  # four steps of momentum SGD amplify summation-order differences a little


def test_channels_last_loader_yields_channels_last_batches():
    x, _ = next(iter(_loader(channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


# ------------------------------------------------------------------ torch.compile


def _limit_name() -> str:
    cfg = torch._dynamo.config
    return "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"


@pytest.fixture
def fresh_dynamo():
    """A clean dynamo cache, and its recompile limit put back afterwards (maybe_compile raises it process-wide)."""
    limit = getattr(torch._dynamo.config, _limit_name())
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    setattr(torch._dynamo.config, _limit_name(), limit)


def _resnet18_tiny() -> nn.Module:
    torch.manual_seed(0)  # 8 basic blocks sharing one forward, 7 distinct shapes (8 counted: stem-fed block apart)
    return build_model("resnet18_cifar", num_classes=NUM_CLASSES, img_size=8, exits=[1, 3, 5],
                       backbone_kwargs={"width": 4})


def test_compile_disabled_is_a_no_op():
    model = _model()
    assert maybe_compile(model, False) is model
    assert not any(is_compiled(p) for p in compile_parts(model))


def test_compile_rejects_adapter_backbones():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.Flatten(),
                        nn.Linear(4 * 8 * 8, NUM_CLASSES))
    model = from_module(net, ["1"], num_classes=NUM_CLASSES, input_shape=(3, 8, 8))
    with pytest.raises(ConfigError, match="ordered-blocks"):
        maybe_compile(model, True)


def test_compile_raises_the_recompile_limit_to_cover_every_block_shape(fresh_dynamo):
    model = _resnet18_tiny()
    assert recompiles_needed(model) == VARIANTS_PER_SHAPE * 8
    setattr(torch._dynamo.config, _limit_name(), 8)  # torch's default
    maybe_compile(model, True, backend="eager")
    assert getattr(torch._dynamo.config, _limit_name()) == VARIANTS_PER_SHAPE * 8


@pytest.mark.slow
def test_compile_train_and_eval_graphs_are_all_compiled(fresh_dynamo):
    """Train mode and no-grad eval need a graph per block shape each: 14 > torch's default limit of 8 graphs per
    ``forward``. Without the raised limit the eval pass would fall back to eager for some blocks."""
    from torch._dynamo.utils import counters

    model = maybe_compile(_resnet18_tiny(), True, backend="eager")
    x = torch.randn(4, 3, 8, 8)
    start = counters["stats"]["unique_graphs"]
    model(x)
    train_graphs = counters["stats"]["unique_graphs"] - start
    model.eval()
    with torch.no_grad():
        model(x)
    assert counters["stats"]["unique_graphs"] - start == 2 * train_graphs


def _check_compiled_matches_eager(backend: str, rtol: float) -> None:
    eager, model = _model(), _model()
    keys = list(model.state_dict())
    assert maybe_compile(model, True, backend=backend) is model
    assert list(model.state_dict()) == keys  # in place: checkpoints keep their keys (no "_orig_mod.")
    assert all(is_compiled(p) for p in compile_parts(model)) and not any(is_compiled(h) for h in model.heads)
    x, y = next(iter(_loader()))
    out, ref = model(x), eager(x)
    for o, r in zip(out, ref):
        assert _rel(o, r) < rtol
    exit_losses(out, y).sum().backward()
    exit_losses(ref, y).sum().backward()
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        assert _rel(p.grad, q.grad) < 100 * rtol, name
    # The Python tap loop still runs around the compiled parts: a smaller batch and an early stop both work.
    with torch.no_grad():
        small, small_ref = model(x[:3]), eager(x[:3])
        assert all(_rel(o, r) < rtol for o, r in zip(small, small_ref))
        assert len(model.forward_to(x[:5], 0)) == 1


def test_compile_in_place_matches_eager(fresh_dynamo):
    """Dynamo capture of every part through the ``run`` protocol (the "eager" backend skips code generation)."""
    _check_compiled_matches_eager("eager", FP32_RTOL)


@pytest.mark.slow
def test_compile_inductor_matches_eager(fresh_dynamo):
    """The real thing: inductor generates C++ kernels for each part (needs a C compiler; about a minute on CPU)."""
    _check_compiled_matches_eager("inductor", 1e-4)


@pytest.mark.slow
def test_compile_inductor_short_training_within_tolerance(fresh_dynamo):
    loss_ref, upd_ref = _short_training(_model())
    loss_c, upd_c = _short_training(maybe_compile(_model(), True))
    assert loss_c == pytest.approx(loss_ref, rel=1e-4)
    assert _rel(upd_c, upd_ref) < 1e-3
