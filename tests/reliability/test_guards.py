"""Guard rails: one process per run directory, unwritable or full output."""

import errno
import os
import subprocess
import sys

import pytest

from exitlab.errors import CheckpointError, ExitlabError
from exitlab.training.engine import train


def test_a_second_process_on_the_same_run_directory_is_refused(tiny_cfg, tmp_path):
    out = tmp_path / "run"
    hold = "import sys, time; from pathlib import Path; from exitlab.runs.files import RunLock\n" \
           "with RunLock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ExitlabError, match=f"in use by process {holder.pid}; wait for it to finish"):
            train(tiny_cfg(regime="joint"), out)
        assert not (out / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    train(tiny_cfg(regime="joint"), out)  # the holder died, and its lock with it
    assert (out / "model.safetensors").exists()


def test_unwritable_output_is_detected_before_training(tiny_cfg, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ExitlabError, match=r"output directory .*file/run is not writable"):
        train(tiny_cfg(regime="joint"), blocker / "run")


def test_full_disk_at_the_first_failed_write_is_a_clear_error(tiny_cfg, tmp_path, monkeypatch):
    import exitlab.runs.checkpoint as ckpt

    def no_space(tensors, path, metadata=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt, "save_file", no_space)
    with pytest.raises(CheckpointError, match=r"could not write .*00-phase2-end.safetensors: No space left on device"):
        train(tiny_cfg(regime="joint"), tmp_path / "run")
    assert not any((tmp_path / "run").rglob("*.safetensors"))  # nothing half-written left behind
