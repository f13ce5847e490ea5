"""In-memory and map-style sources: from_tensors, from_datasets, label checks, and the data they give a run."""

import numpy as np
import pytest
import torch
from PIL import Image

from exitlab.data import StreamLoader, TensorLoader, build_run_data, from_datasets, from_tensors
from exitlab.data.datasets import synthetic
from exitlab.errors import DataError
from tests.data.helpers import data_config

CPU = torch.device("cpu")


def _arrays(n=70, size=8, classes=7, seed=0):
    ds = synthetic(num_classes=classes, n_train=n, n_test=n // 2, size=size, seed=seed)
    return ds.train_x, ds.train_y, ds.test_x, ds.test_y  # uint8 [N, 3, 8, 8]


def _batches(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b, atol=0.0):
    pairs = zip(a, b)
    return len(a) == len(b) and all(torch.allclose(x, u, atol=atol) and torch.equal(y, v) for (x, y), (u, v) in pairs)


def test_from_tensors_is_the_in_memory_path_for_torch_and_numpy_in_either_layout():
    tx, ty, vx, vy = _arrays()
    d = data_config(batch_size=16, eval_batch_size=32)
    ref = build_run_data(d, 0, CPU, data=synthetic(num_classes=7, n_train=70, n_test=35, size=8))
    nhwc = from_tensors(tx.permute(0, 2, 3, 1).numpy(), ty.numpy(), vx.permute(0, 2, 3, 1).numpy(), vy.numpy())
    for src in (from_tensors(tx, ty, vx, vy), nhwc):
        rd = build_run_data(d, 0, CPU, data=src)
        assert isinstance(rd.train, TensorLoader) and rd.shape == (3, 8, 8) and rd.classes == [str(i) for i in range(7)]
        for split in ("train", "val", "test"):
            assert _same(_batches(getattr(rd, split)), _batches(getattr(ref, split)))


def test_one_channel_images_and_an_explicit_layout():
    x = np.random.default_rng(0).integers(0, 256, (20, 3, 5, 3), dtype=np.uint8)  # ambiguous: 3 rows of 5 x 3
    y = np.arange(20) % 2
    assert from_tensors(x, y, x, y).train_x.shape == (20, 3, 5, 3)  # auto: axis 1 has 3 entries, so NCHW
    assert from_tensors(x, y, x, y, layout="NHWC").train_x.shape == (20, 3, 3, 5)
    assert from_tensors(x[:, 0], y, x[:, 0], y).train_x.shape == (20, 1, 5, 3)  # [N, H, W] is one channel


def test_uint8_images_are_divided_by_255_then_normalised():
    tx, ty, vx, vy = _arrays()
    rd = build_run_data(data_config(), 0, CPU, data=from_tensors(tx, ty, vx, vy))
    mean = torch.tensor(rd.normalize["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(rd.normalize["std"]).view(1, 3, 1, 1)
    assert 0 < rd.normalize["mean"][0] < 1
    x, _ = next(iter(rd.test))
    torch.testing.assert_close(x, (vx[: len(x)].float() / 255 - mean) / std)


def test_float_images_are_used_as_given_not_divided_by_255():
    tx, ty, vx, vy = _arrays()
    fx, fvx = tx.double() * 4 - 300, vx.double() * 4 - 300  # values in [-300, 720], not pixels
    rd = build_run_data(data_config(crop_padding=0, flip=False), 0, CPU, data=from_tensors(fx, ty, fvx, vy))
    assert rd.train.x.dtype == torch.float32 and rd.normalize["mean"][0] > 100
    mean = torch.tensor(rd.normalize["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(rd.normalize["std"]).view(1, 3, 1, 1)
    x, _ = next(iter(rd.test))
    torch.testing.assert_close(x, (fvx[: len(x)].float() - mean) / std)
    xs = torch.cat([b for b, _ in rd.train])
    assert abs(xs.mean().item()) < 0.1 and abs(xs.std().item() - 1) < 0.1  # standardised by their own statistics


@pytest.mark.parametrize("labels,classes,message", [
    ("minus", None, r"train_y: labels must be 0..C-1 with every class present, found -1, 0, 1, 2, 3, 4, 5, 6; map "
                    r"them to 0..C-1 \(e.g. numpy.unique\(y, return_inverse=True\)\) or pass classes="),
    ("minus", list("abcdefg"), r"train_y: labels must be 0..6 \(one per class\), found -1; map them to 0..C-1 first"),
    ("one-based", None, r"train_y: labels must be 0..C-1 with every class present, found 1, 2, 3, 4, 5, 6, 7 \(no 0\)"),
    ("too-big", ["a", "b", "c", "d", "e", "f", "g"], r"test_y: labels must be 0..6 \(one per class\), found 9, 12"),
    ("float", None, r"train_y: labels must be integers 0..C-1, got torch.float64; convert them"),
])
def test_bad_labels_are_one_line_naming_them_and_the_fix(labels, classes, message):
    tx, ty, vx, vy = _arrays()
    ty, vy = ty.clone(), vy.clone()
    if labels == "minus":
        ty[3] = -1
    elif labels == "one-based":
        ty, vy = ty + 1, vy + 1
    elif labels == "too-big":
        vy[0], vy[1] = 12, 9
    else:
        ty = ty.double()
    with pytest.raises(DataError, match=message) as e:
        from_tensors(tx, ty, vx, vy, classes)
    assert "\n" not in str(e.value)


def test_images_of_another_type_or_shape_are_refused():
    tx, ty, vx, vy = _arrays()
    with pytest.raises(DataError, match="train_x: images must be uint8 .* or float, got torch.int64"):
        from_tensors(tx.long(), ty, vx, vy)
    with pytest.raises(DataError, match=r"train_x is torch.uint8 \(3, 8, 8\) but test_x is torch.uint8 \(3, 4, 4\)"):
        from_tensors(tx, ty, vx[:, :, :4, :4], vy)
    with pytest.raises(DataError, match=r"train_y: expected 70 labels \(one per image\)"):
        from_tensors(tx, ty[:-1], vx, vy)


class Pictures(torch.utils.data.Dataset):
    """A map-style dataset of one image kind: CHW uint8 tensors, HWC arrays or PIL images; counts its reads."""

    def __init__(self, x, y, kind, targets=True):
        self.x, self.y, self.kind, self.reads = x, y, kind, 0
        if targets:
            self.targets = y.tolist()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        self.reads += 1
        img = self.x[i]
        if self.kind == "array":
            img = img.permute(1, 2, 0).numpy()
        elif self.kind == "pil":
            img = Image.fromarray(img.permute(1, 2, 0).numpy())
        return img, torch.tensor(int(self.y[i]))


def test_map_style_datasets_of_tensors_arrays_and_pil_images_give_the_same_batches():
    tx, ty, vx, vy = _arrays()
    d = data_config(img_size=8, batch_size=16, eval_batch_size=20, workers=0)
    runs = {k: build_run_data(d, 0, CPU, data=from_datasets(Pictures(tx, ty, k), Pictures(vx, vy, k)))
            for k in ("tensor", "array", "pil")}
    ref = build_run_data(d, 0, CPU, data=from_tensors(tx, ty, vx, vy))
    for rd in runs.values():
        assert isinstance(rd.train, StreamLoader) and rd.shape == (3, 8, 8)
        rd.train.set_epoch_seed(5)
        assert _same(_batches(rd.train), _batches(runs["tensor"].train))
        assert _same(_batches(rd.val), _batches(ref.val), atol=1e-5)  # same split, same pixels, same statistics
        assert _same(_batches(rd.test), _batches(ref.test), atol=1e-5)


def test_labels_come_from_targets_or_are_read_once():
    tx, ty, vx, vy = _arrays()
    with_targets, without = Pictures(tx, ty, "tensor"), Pictures(tx, ty, "tensor", targets=False)
    a = from_datasets(with_targets, Pictures(vx, vy, "tensor"))
    b = from_datasets(without, Pictures(vx, vy, "tensor"))
    assert with_targets.reads == 0 and without.reads == len(ty)
    assert torch.equal(a.train.labels, b.train.labels)


def test_the_split_of_a_map_style_dataset_is_stratified_and_a_given_val_is_used():
    tx, ty, vx, vy = _arrays(n=140)
    d = data_config(img_size=8, val_fraction=0.2, workers=0)
    rd = build_run_data(d, 0, CPU, data=from_datasets(Pictures(tx, ty, "tensor"), Pictures(vx, vy, "tensor")))
    val_labels = ty[rd.val.indices]
    assert rd.val.num_samples == 28 and torch.bincount(val_labels).tolist() == [4] * 7
    given = build_run_data(d, 0, CPU, data=from_datasets(Pictures(tx, ty, "tensor"), Pictures(vx, vy, "tensor"),
                                                           val=Pictures(vx[:14], vy[:14], "tensor")))
    assert given.train.num_samples == 140 and given.val.num_samples == 14


def test_map_style_labels_out_of_range_and_iterable_datasets_are_refused():
    tx, ty, vx, vy = _arrays()
    with pytest.raises(DataError, match=r"train: labels must be 0..2 \(one per class\), found 3, 4, 5, 6"):
        from_datasets(Pictures(tx, ty, "tensor"), Pictures(vx, vy, "tensor"), classes=["a", "b", "c"])

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from ()

    with pytest.raises(DataError, match="from_datasets takes map-style datasets .* use data.name=webdataset"):
        from_datasets(Stream(), Pictures(vx, vy, "tensor"))


def test_imagenet_recipe_on_in_memory_data_streams_at_img_size():
    tx, ty, vx, vy = _arrays(size=16)
    d = data_config(augment="imagenet", img_size=12, batch_size=10, workers=0)
    rd = build_run_data(d, 0, CPU, data=from_tensors(tx, ty, vx, vy))
    assert isinstance(rd.train, StreamLoader) and rd.shape == (3, 12, 12)
    x, y = next(iter(rd.train))
    assert x.shape == (10, 3, 12, 12) and y.shape == (10,)
