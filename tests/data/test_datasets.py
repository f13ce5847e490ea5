import gzip
import pickle
import shutil
import struct

import numpy as np
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


def test_an_altered_file_in_an_official_location_fails_its_checksum(fashion_dir, tmp_path, monkeypatch):
    """The cache holds what claims to be the official data set: a changed label is refused."""
    monkeypatch.setenv("EXITLAB_DATA", str(tmp_path))
    d = tmp_path / "mnist"
    shutil.copytree(fashion_dir, d)  # Fashion-MNIST's files under MNIST's name: valid IDX, wrong checksums
    with pytest.raises(DataError, match=r"mnist/train-images-idx3-ubyte.gz fails its checksum \(not the official mnist "
                                        r"file\); delete it and reinstall or re-download the dataset"):
        load_dataset("mnist", download=False)


def _write_idx(path, a, gz):
    """``a`` as an IDX file of unsigned bytes (magic 0x0000080<ndim>), gzipped when ``gz``."""
    raw = struct.pack(">4B", 0, 0, 8, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.fixture(scope="module")
def fashion(fashion_dir):
    return load_dataset("fashion_mnist", fashion_dir, download=False)


def _idx_subset(full, d, n_train=300, n_test=100, gz=True):
    """A subset of Fashion-MNIST written back as the user's own IDX files in ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    parts = (full.train_x[:n_train, 0], full.train_y[:n_train], full.test_x[:n_test, 0], full.test_y[:n_test])
    for name, a in zip(("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                        "t10k-labels-idx1-ubyte"), parts):
        _write_idx(d / (name + ".gz" if gz else name), a.numpy(), gz)
    return full


@pytest.mark.parametrize("gz", [True, False])
def test_a_user_idx_subset_is_accepted_with_a_warning(fashion, tmp_path, caplog, gz):
    full = _idx_subset(fashion, tmp_path / "mine", gz=gz)
    with caplog.at_level("WARNING", logger="exitlab"):
        ds = load_dataset("fashion_mnist", str(tmp_path / "mine"), download=False)
    assert torch.equal(ds.train_x, full.train_x[:300]) and torch.equal(ds.test_y, full.test_y[:100])
    suffix = ".gz" if gz else ""
    assert (f"{tmp_path}/mine: train-images-idx3-ubyte{suffix}, train-labels-idx1-ubyte{suffix}, t10k-images-idx3-ubyte"
            f"{suffix}, t10k-labels-idx1-ubyte{suffix} are not the official fashion_mnist files") in caplog.text


def test_the_official_files_in_data_root_raise_no_warning(fashion_dir, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="exitlab"):
        load_dataset("fashion_mnist", str(_copy(fashion_dir, tmp_path)), download=False)
    assert "not the official" not in caplog.text


@pytest.mark.parametrize("damage,message", [
    ("magic", r"t10k-labels-idx1-ubyte: magic number 0x00000803 is not that of an IDX labels file \(0x00000801: "
              r"unsigned bytes, 1 dimension\); check that it is the labels file"),
    ("short", r"t10k-images-idx3-ubyte holds 7839 values but its header says 10x28x28: the file is truncated or its "
              r"header is wrong"),
    ("count", r"train-labels-idx1-ubyte has 299 labels but .*/train-images-idx3-ubyte has 300 images; give one label "
              r"per image"),
])
def test_a_user_idx_file_with_a_wrong_magic_or_inconsistent_sizes_is_one_line(fashion, tmp_path, damage, message):
    d = tmp_path / "mine"
    full = _idx_subset(fashion, d, n_test=10, gz=False)
    if damage == "magic":  # the images written where the labels belong
        _write_idx(d / "t10k-labels-idx1-ubyte", full.test_x[:10, 0].numpy(), gz=False)
    elif damage == "short":
        f = d / "t10k-images-idx3-ubyte"
        f.write_bytes(f.read_bytes()[:-1])
    else:
        _write_idx(d / "train-labels-idx1-ubyte", full.train_y[:299].numpy(), gz=False)
    with pytest.raises(DataError, match=message) as e:
        load_dataset("fashion_mnist", str(d), download=False)
    assert "\n" not in str(e.value)


def test_user_idx_labels_beyond_the_classes_are_refused_when_the_run_is_built(fashion, tmp_path):
    from exitlab.data import build_run_data
    from tests.data.helpers import data_config

    d = tmp_path / "mine"
    full = _idx_subset(fashion, d, gz=False)
    y = full.train_y[:300].numpy().copy()
    y[5] = 12
    _write_idx(d / "train-labels-idx1-ubyte", y, gz=False)
    with pytest.raises(DataError, match=r"fashion_mnist train: labels must be 0..9 \(one per class\), found 12"):
        build_run_data(data_config(name="fashion_mnist", root=d, download=False), 0, torch.device("cpu"))


def test_missing_files_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("EXITLAB_DATA", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"mnist not found .* set data.root"):
        load_dataset("mnist", str(tmp_path), download=False)


def test_unknown_dataset_name():
    with pytest.raises(ConfigError, match="unknown dataset 'cifar1000'; choose one of"):
        load_dataset("cifar1000")


def _cifar_batch(path, n, seed, key="labels"):
    rng = np.random.default_rng(seed)
    batch = {"batch_label": "mine", "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             key: rng.integers(0, 10, n).tolist(), "filenames": [f"{i}.png" for i in range(n)]}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    return batch


def test_a_user_cifar_folder_is_accepted_with_a_warning(tmp_path, caplog):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    b1, b2 = _cifar_batch(d / "data_batch_1", 20, 0), _cifar_batch(d / "data_batch_2", 10, 1)
    test = _cifar_batch(d / "test_batch", 8, 2)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"thing{i}" for i in range(10)], "num_cases_per_batch": 20}, f)
    with caplog.at_level("WARNING", logger="exitlab"):
        ds = load_dataset("cifar10", str(tmp_path), download=False)
    assert ds.train_x.shape == (30, 3, 32, 32) and ds.test_x.shape == (8, 3, 32, 32)
    assert torch.equal(ds.train_x[20:].flatten(1), torch.from_numpy(b2["data"]))
    assert ds.train_y.tolist() == b1["labels"] + b2["labels"] and ds.test_y.tolist() == test["labels"]
    assert ds.classes[3] == "thing3"
    assert "not the official cifar10 batches (data_batch_1, data_batch_2, test_batch, data_batch_3, data_batch_4, " \
           "data_batch_5 differ or are missing)" in caplog.text


def test_cifar_files_in_the_cache_must_match_the_official_checksums(tmp_path, monkeypatch):
    monkeypatch.setenv("EXITLAB_DATA", str(tmp_path))
    d = tmp_path / "cifar10" / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for f in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        _cifar_batch(d / f, 4, 0)
    with pytest.raises(DataError, match="data_batch_1 fails its checksum: truncated or altered"):
        load_dataset("cifar10", download=False)
    (d / "data_batch_5").unlink()
    with pytest.raises(DataError, match="data_batch_5 is missing; restore the full cifar-10-batches-py folder"):
        load_dataset("cifar10", download=False)


@pytest.mark.parametrize("content,message", [
    (b"cos\nsystem\n(S'true'\ntR.", r"is not a CIFAR python batch \(refusing to load os.system\)"),
    ({"data": np.zeros((3, 3000), np.uint8), "labels": [0, 1, 2]}, r"'data' is uint8 \(3, 3000\), expected uint8 "
                                                                    r"\[N, 3072\]"),
    ({"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1]}, r"has 2 'labels' for 3 images; give one integer label"),
])
def test_a_user_cifar_batch_is_checked_by_format_and_never_runs_code(tmp_path, content, message):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    _cifar_batch(d / "test_batch", 4, 0)
    p = d / "data_batch_1"
    p.write_bytes(content if isinstance(content, bytes) else pickle.dumps(content))
    with pytest.raises(DataError, match=message):
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
