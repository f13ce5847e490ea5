"""Image folders: case-insensitive extensions, refused layouts, the stratified subset, and the streamed folder."""

import shutil

import pytest
import torch

from exitlab.data import StreamLoader, TensorLoader, build_run_data, load_dataset
from exitlab.data.datasets import synthetic
from exitlab.errors import DataError
from tests.data.helpers import CLASSES, data_config, make_folder

CPU = torch.device("cpu")


def test_extensions_match_whatever_their_case(tmp_path):
    for i, ext in enumerate((".JPG", ".PNG", ".Jpeg", ".jpg")):
        make_folder(tmp_path, n_train=1, n_val=1, ext=ext, seed=i)  # file names differ by extension
    ds = load_dataset("imagefolder", str(tmp_path), img_size=8)
    assert len(ds.train_y) == 12 and torch.bincount(ds.train_y).tolist() == [4, 4, 4]


@pytest.mark.parametrize("split", ["train", "val"])
def test_an_empty_class_folder_is_refused_naming_it(tmp_path, split):
    make_folder(tmp_path, n_train=2, n_val=1)
    for p in (tmp_path / split / "bee").iterdir():
        p.unlink()
    (tmp_path / split / "bee" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", str(tmp_path), img_size=8)
    assert str(e.value) == (f"{tmp_path}/{split}/bee is an empty class folder (no .jpg/.jpeg/.png/.bmp/.webp "
                            "images); add images or remove it")


def test_a_folder_with_one_class_is_refused(tmp_path):
    make_folder(tmp_path, n_train=2, n_val=1, classes=("only",))
    with pytest.raises(DataError) as e:
        load_dataset("imagefolder", str(tmp_path), img_size=8)
    assert str(e.value) == (f"{tmp_path}/train has a single class folder (only); a classifier needs at least two: "
                            "add one folder per class")


def test_a_held_out_class_unknown_to_train_is_refused(tmp_path):
    make_folder(tmp_path, n_train=2, n_val=1)
    shutil.copytree(tmp_path / "val" / "bee", tmp_path / "val" / "bea")
    with pytest.raises(DataError, match=r"val/bea is not a class of .*/train; a held-out split may only use"):
        load_dataset("imagefolder", str(tmp_path), img_size=8)


@pytest.mark.parametrize("stream", [False, True])
def test_train_subset_keeps_every_class_share_in_a_folder_sorted_by_class(tmp_path, stream):
    """The first N indices of a folder sorted by class hold only its first classes; the subset keeps them all."""
    make_folder(tmp_path, n_train=10, n_val=2)
    d = data_config(name="imagefolder", root=tmp_path, img_size=8, train_subset=9, val_fraction=0.1, stream=stream,
                    workers=0)
    rd = build_run_data(d, 0, CPU)
    assert rd.train.num_samples == 9
    labels = torch.cat([y for _, y in rd.train.unaugmented()])
    assert torch.bincount(labels, minlength=3).tolist() == [3, 3, 3]


def test_train_subset_is_stratified_for_tensors_too_and_seeded():
    src = synthetic(num_classes=7, n_train=700, n_test=70, size=4)
    picks = [build_run_data(data_config(train_subset=70), seed, CPU, data=src).train for seed in (0, 0, 1)]
    assert torch.bincount(picks[0].y).tolist() == [10] * 7
    assert torch.equal(picks[0].x, picks[1].x) and not torch.equal(picks[0].x, picks[2].x)


def test_a_streamed_folder_gives_the_in_memory_folder_s_evaluation_batches(tmp_path):
    """Same files, same split, same decode: the streamed folder's val/test passes equal the in-memory ones."""
    make_folder(tmp_path, n_train=8, n_val=3)
    base = dict(name="imagefolder", root=tmp_path, img_size=16, batch_size=8, eval_batch_size=4, workers=0)
    mem = build_run_data(data_config(**base), 0, CPU)
    streamed = build_run_data(data_config(**base, stream=True), 0, CPU)
    assert isinstance(mem.train, TensorLoader) and isinstance(streamed.train, StreamLoader)
    assert streamed.classes == list(CLASSES) and streamed.shape == mem.shape == (3, 16, 16)
    assert len(streamed.train) == len(mem.train) and streamed.val.num_samples == mem.val.num_samples
    torch.testing.assert_close(torch.tensor(streamed.normalize["mean"]), torch.tensor(mem.normalize["mean"]))
    for split in ("val", "test"):
        a, b = list(getattr(mem, split)), list(getattr(streamed, split))
        assert len(a) == len(b)
        for (x, y), (u, v) in zip(a, b):
            torch.testing.assert_close(u, x, atol=1e-4, rtol=0)
            assert torch.equal(y, v)
    for (x, y), (u, v) in zip(mem.test.sample(5, seed=3, batch_size=2), streamed.test.sample(5, seed=3, batch_size=2)):
        torch.testing.assert_close(u, x, atol=1e-4, rtol=0)
        assert torch.equal(y, v)
