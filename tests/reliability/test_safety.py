"""Library safety: inference in eval mode with the caller's modes restored, non-finite logits refused, per-rank
dropout seeds, a damaged metrics log repaired on resume, and a true Ctrl-C message for every command."""

import json

import pytest
import torch

from exitlab import cli
from exitlab.errors import ExitlabError
from exitlab.evaluation.inference import early_exit
from exitlab.evaluation.policies import make_policy
from exitlab.evaluation.sweep import simulate
from exitlab.models import build_model
from exitlab.runs.files import read_jsonl
from exitlab.runs.rundir import compute_logits
from exitlab.training.engine import seed_epoch, train


def _model():
    torch.manual_seed(0)
    return build_model("resnet8", num_classes=7, in_chans=3, img_size=16, exits=[0, 1])


def _modes(model):
    return [m.training for m in model.modules()]


def test_early_exit_on_a_model_in_train_mode_decides_as_in_eval_mode_and_leaves_it_alone():
    model = _model()
    x = torch.randn(64, 3, 16, 16)
    policy = make_policy("confidence", threshold=0.3)
    model.eval()
    want = early_exit(model, x, policy)
    model.train()
    model.backbone.blocks[0].eval()  # a mixed state, as in phase 3: it must come back exactly
    modes = _modes(model)
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    got = early_exit(model, x, policy)
    assert torch.equal(got.exits, want.exits) and torch.equal(got.preds, want.preds)
    assert torch.equal(got.logits, want.logits)
    assert {k: v for k, v in model.state_dict().items() if "running" in k}.keys() == stats.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())  # BatchNorm statistics untouched
    assert _modes(model) == modes


def test_compute_logits_restores_every_submodule_mode():
    model = _model()
    model.train()
    model.backbone.eval()
    modes = _modes(model)
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 7
    compute_logits(model, [(x, y)])
    assert _modes(model) == modes


def test_non_finite_logits_are_refused_by_the_simulation():
    logits = torch.randn(3, 50, 7)
    labels = torch.arange(50) % 7
    logits[1, 4, 2] = float("nan")
    logits[0, 9, 0] = float("inf")
    for name in ("confidence", "entropy", "patience"):
        with pytest.raises(ExitlabError, match=r"logits of exit\(s\) \[0, 1\] are NaN or infinite for 2 sample"):
            make_policy(name).scores(logits)
    scores = torch.rand(3, 50)
    scores[2, 3] = float("nan")
    with pytest.raises(ExitlabError, match="1 sample"):
        simulate(scores, torch.zeros(3, 50, dtype=torch.long), labels, torch.tensor([1.0, 2, 3]), [0.5])


def test_real_early_exit_refuses_non_finite_logits():
    model = _model().eval()
    x = torch.randn(4, 3, 16, 16)
    x[2] = float("nan")
    with pytest.raises(ExitlabError, match="NaN or infinite logits"):
        early_exit(model, x, make_policy("confidence", threshold=0.5))


def test_ranks_draw_their_own_dropout_masks_but_share_the_data_order():
    masks, data = [], []
    for rank in (0, 1):
        data.append(seed_epoch(3, 1, 2, rank))
        masks.append(torch.nn.functional.dropout(torch.ones(1000), 0.5, training=True))
    assert data[0] == data[1]  # the same global batch and augmentation on every rank
    assert not torch.equal(masks[0], masks[1])
    seed_epoch(3, 1, 2, 0)
    again = torch.nn.functional.dropout(torch.ones(1000), 0.5, training=True)
    assert torch.equal(again, masks[0])  # rank 0 draws what one process would


def test_a_damaged_metrics_log_is_repaired_on_resume_not_emptied(tiny_cfg, tmp_path):
    cfg = tiny_cfg(regime="mixed")
    out = train(cfg, tmp_path / "run")
    good = read_jsonl(out / "metrics.jsonl")
    assert len(good) == 2
    for p in (out / "checkpoints").iterdir():  # interrupt after phase 1
        if p.name > "00-phase1-end.safetensors":
            p.unlink()
    (out / "model.safetensors").unlink()
    (out / "run.json").write_text(json.dumps({**json.loads((out / "run.json").read_text()), "status": "running"}))
    lines = (out / "metrics.jsonl").read_bytes().splitlines()
    (out / "metrics.jsonl").write_bytes(b'{"phase": 1, "epo\xff\n' + b"\n".join(lines) + b"\n")  # a bad first line
    train(cfg, out, resume=True)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(read_jsonl(out / "metrics.jsonl")) == strip(good)  # phase 1 kept, phase 2 redone identically
    assert (out / "metrics.jsonl.bad").read_bytes() == b'{"phase": 1, "epo\xff\n'  # the bad line is kept aside


@pytest.mark.parametrize("command,expected", [
    ("train", "interrupted; rerun the same command with --resume to continue from the last checkpoint"),
    ("compare", "interrupted; rerun the same command to resume (finished runs are reused, unfinished ones continue)"),
    ("demo", "interrupted; rerun with --resume to reuse the finished runs and continue the others"),
    ("eval", cli.INTERRUPTED_DEFAULT),
    ("export", cli.INTERRUPTED_DEFAULT),
])
def test_every_command_says_what_ctrl_c_means_for_it(command, expected, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    add, _ = cli.COMMANDS[command]
    monkeypatch.setitem(cli.COMMANDS, command, (add, interrupted))
    argv = {"train": ["train", "c.yaml"], "compare": ["compare", "c.yaml"], "demo": ["demo"], "eval": ["eval", "r"],
            "export": ["export", "r"]}[command]
    assert cli.main(argv) == 130
    assert capsys.readouterr().err.strip() == expected
    assert "--resume" not in cli.INTERRUPTED["compare"]  # compare has no --resume flag: rerunning resumes
