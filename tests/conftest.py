import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

FASHION = "/usr/share/datasets/fashion-mnist"


def tiny_overrides(**extra) -> list[str]:
    """A run small enough for a test: synthetic 7-class 16x16 data, ResNet-8 with two ICs."""
    base = {
        "data.name": "synthetic", "data.synthetic": "{size: 16, n_train: 560, n_test: 140}", "data.batch_size": 64,
        "data.eval_batch_size": 256, "model.backbone": "resnet8", "model.exits": "[0, 1]", "device": "cpu",
        "threads": 1, "progress": "false", "phase1.epochs": 1, "phase2.epochs": 1, "phase3.epochs": 1,
        "phase1.lr": 0.02, "phase2.lr": 0.02, "phase3.lr": 0.02,
    }
    base.update(extra)
    if base["data.name"] != "synthetic":
        del base["data.synthetic"]  # options of the synthetic data set only (another data set refuses them)
    return [f"{k}={v}" for k, v in base.items()]


def interrupt_after(run, checkpoint: str) -> None:
    """Make finished run directory ``run`` look interrupted right after ``checkpoint`` (a file name in its
    checkpoints/): later checkpoints and the final model go, and the status says it is still running."""
    for p in (run / "checkpoints").iterdir():
        if p.name > checkpoint:
            p.unlink()
    (run / "model.safetensors").unlink()
    (run / "run.json").write_text('{"status": "running"}')


def train_and_resume(cfg, tmp_path, checkpoint: str):
    """Train ``cfg`` uninterrupted into ``tmp_path/full``, and into ``tmp_path/part`` interrupted after
    ``checkpoint`` and resumed; returns both run directories (an exact resume makes their weights equal)."""
    from exitlab.recipes.train import train

    full = train(cfg, tmp_path / "full")
    part = train(cfg, tmp_path / "part")
    interrupt_after(part, checkpoint)
    train(cfg, part, resume=True)
    return full, part


@pytest.fixture
def tiny_cfg():
    from exitlab.runs.config import load_config

    def make(**extra):
        return load_config(None, tiny_overrides(**extra))

    return make


@pytest.fixture(scope="session")
def fashion_dir():
    """Debian's Fashion-MNIST, or the copy `scripts/setup-system` unpacks into the data cache without root."""
    cache = os.path.join(os.environ.get("EXITLAB_DATA", os.path.expanduser("~/.cache/exitlab")), "fashion_mnist")
    for d in (FASHION, cache):
        if os.path.isfile(os.path.join(d, "t10k-labels-idx1-ubyte.gz")):
            return d
    pytest.fail(f"Fashion-MNIST not found in {FASHION} or {cache}: run `scripts/setup-system test`")
