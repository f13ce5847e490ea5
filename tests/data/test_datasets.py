import gzip
import shutil

import pytest
import torch

from exitlab.data import load_dataset, random_crop_flip, stratified_split, stratified_subset
from exitlab.errors import ConfigError, DataError


def test_fashion_mnist_from_the_debian_package(fashion_dir):
    ds = load_dataset("fashion_mnist", download=False)
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.num_classes == 10
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10


def _copy(fashion_dir, tmp_path):
    d = tmp_path / "fm"
    shutil.copytree(fashion_dir, d)
    return d


def test_truncated_file_is_caught(fashion_dir, tmp_path):
    d = _copy(fashion_dir, tmp_path)
    f = d / "t10k-labels-idx1-ubyte.gz"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is truncated or corrupt"):
        load_dataset("fashion_mnist", str(d), download=False)


def test_altered_file_fails_its_checksum(fashion_dir, tmp_path):
    d = _copy(fashion_dir, tmp_path)
    f = d / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(f.read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # one wrong label, still a valid gzip and IDX file
    f.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="fails its checksum"):
        load_dataset("fashion_mnist", str(d), download=False)


def test_missing_files_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("EXITLAB_DATA", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"mnist not found .* set data.root"):
        load_dataset("mnist", str(tmp_path), download=False)


def test_unknown_dataset_name():
    with pytest.raises(ConfigError, match="unknown dataset 'cifar1000'; choose one of"):
        load_dataset("cifar1000")


def test_cifar_reader_on_files_in_the_official_format(tmp_path):
    import pickle

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    with open(d / "data_batch_1", "wb") as f:
        pickle.dump({"data": [[0] * 3072], "labels": [3]}, f)
    with pytest.raises(DataError, match="data_batch_1 fails its checksum"):
        load_dataset("cifar10", str(tmp_path), download=False)


def test_image_folder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 30), color).save(tmp_path / split / c / f"{i}.png")
    ds = load_dataset("imagefolder", str(tmp_path), img_size=16)
    assert ds.classes == ["cat", "dog"] and ds.train_x.shape == (6, 3, 16, 16)
    assert ds.train_x[0, 0].float().mean() > 250 and ds.train_x[-1, 2].float().mean() > 250
    (tmp_path / "train" / "cat" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.png is not a readable image"):
        load_dataset("imagefolder", str(tmp_path), img_size=16)


def _split_one_pass_per_class(y, val_fraction, seed):
    """The split as it was written before (a pass over the labels per class), to pin its exact output."""
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_val = int(round(len(idx) * val_fraction))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def test_the_one_sort_split_gives_exactly_the_split_of_before():
    y = torch.randint(0, 13, (5000,), generator=torch.Generator().manual_seed(0))
    for seed in (0, 1):
        new, old = stratified_split(y, 0.15, seed), _split_one_pass_per_class(y, 0.15, seed)
        assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1])


def test_stratified_subset_keeps_shares_and_every_class():
    y = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    pick = stratified_subset(y, 20, seed=0)
    assert torch.bincount(y[pick]).tolist() == [17, 2, 1]  # 18, 1.8, 0.2 -> 18, 2, 0 -> the rare class kept
    assert torch.equal(pick, pick.sort().values) and len(set(pick.tolist())) == 20
    assert len(stratified_subset(y, 500, seed=0)) == 100


def test_stratified_split_is_seeded_and_keeps_class_shares():
    y = torch.arange(1000) % 7
    tr, va = stratified_split(y, 0.2, seed=3)
    assert len(set(tr.tolist()) & set(va.tolist())) == 0 and len(tr) + len(va) == 1000
    counts = torch.bincount(y[va], minlength=7)
    assert (counts - 200 / 7).abs().max() <= 1
    assert torch.equal(va, stratified_split(y, 0.2, seed=3)[1])
    assert not torch.equal(va, stratified_split(y, 0.2, seed=4)[1])


def test_batched_crop_is_a_window_of_the_padded_image_and_flip_mirrors():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    out = random_crop_flip(x, pad=2, flip=False, g=g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        windows = [padded[b, :, i : i + 5, j : j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[b], w) for w in windows)
    flipped = random_crop_flip(x, pad=0, flip=True, g=torch.Generator().manual_seed(1))
    for b in range(2):
        assert torch.equal(flipped[b], x[b]) or torch.equal(flipped[b], x[b].flip(-1))


def test_image_folder_decodes_in_parallel_workers(tmp_path, monkeypatch):
    from PIL import Image

    import exitlab.data.imagefolder as imf

    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(5):
                Image.new("RGB", (12, 12), (40 * i, 10 if c == "a" else 200, 0)).save(tmp_path / split / c / f"{i}.png")
    serial = load_dataset("imagefolder", str(tmp_path), img_size=8)
    monkeypatch.setattr(imf, "decode_workers", lambda n: 2)
    parallel = load_dataset("imagefolder", str(tmp_path), img_size=8)
    assert torch.equal(serial.train_x, parallel.train_x) and torch.equal(serial.test_y, parallel.test_y)
    (tmp_path / "val" / "b" / "bad.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"val/b/bad.png is not a readable image .*; remove or replace it$"):
        load_dataset("imagefolder", str(tmp_path), img_size=8)
