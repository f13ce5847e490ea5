"""Dataset readers (no torchvision): IDX (MNIST, Fashion-MNIST), CIFAR pickle batches, synthetic.

Each reader returns a :class:`Dataset` of uint8 images ``[N, C, H, W]`` and int64 labels, held in memory. Files
that claim to be the official data set (the Debian path, the cache, a download) must match its checksums; a
user's own files in ``data.root`` are checked by format instead and accepted with a warning.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import struct
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

log = logging.getLogger("exitlab")

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
_IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
              "t10k-labels-idx1-ubyte.gz")
# Accepted checksums per file: md5 of the official .gz, and/or sha256 of the decompressed bytes (Debian recompresses).
_CHECKSUMS = {
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": ("8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                       "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        "train-labels-idx1-ubyte.gz": ("25c81989df183df01b3e8a0aad5dffbe",
                                       "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        "t10k-images-idx3-ubyte.gz": ("bef4ecab320f06d8554ea6380940ec79",
                                      "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        "t10k-labels-idx1-ubyte.gz": ("bb300cfdad3c16e7a12a480ee83cd310",
                                      "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": ("f68b3c2dcbeaaa9fbdd348bbdeb94873", None),
        "train-labels-idx1-ubyte.gz": ("d53e105ee54ea40749a09fcbcd1e9432", None),
        "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3", None),
        "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f9c0ccf", None),
    },
}
_URLS = {
    "fashion_mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", "c58f30108f718f92721af3b95e74349a",
                {"data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
                 "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
                 "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e"}),
    "cifar100": ("cifar-100-python", "eb9058c3a382ffc7106e288d4ee5c7e4",
                 {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc"}),
}


@dataclass
class Dataset:
    """Images ``[N, C, H, W]`` (uint8, or float used as given) and int64 labels ``[N]``, for the train and test
    splits, held in memory."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _read_idx_file(path: Path) -> bytes:
    """The bytes of an IDX file, gunzipped when its name ends in .gz."""
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path} is truncated or corrupt ({e}); delete it and reinstall or re-download the "
                        "dataset") from None


def _official(name: str, path: Path, raw: bytes) -> bool:
    """Whether a file is the official one: the md5 of the official .gz, or the sha256 of its decompressed bytes."""
    md5, sha = _CHECKSUMS[name][path.name if path.suffix == ".gz" else path.name + ".gz"]
    return (path.suffix == ".gz" and _md5(path) == md5) or (sha is not None and hashlib.sha256(raw).hexdigest() == sha)


def _parse_idx(raw: bytes, path: Path, ndim: int) -> np.ndarray:
    """An IDX array of unsigned bytes with ``ndim`` dimensions, checked by magic number and size."""
    what = "images" if ndim == 3 else "labels"
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise DataError(f"{path}: magic number 0x{raw[:4].hex() or 'missing'} is not that of an IDX {what} file "
                        f"(0x0000080{ndim}: unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''}); check that it "
                        f"is the {what} file")
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path} ends inside its header: the file is truncated")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)) or 0 in dims[1:]:
        raise DataError(f"{path} holds {data.size} values but its header says {'x'.join(map(str, dims))}: the file is "
                        "truncated or its header is wrong")
    return data.reshape(dims)


def _idx_path(d: Path, f: str) -> Path:
    """``f`` in ``d``, gzipped or not (user files may be plain IDX)."""
    return d / f if (d / f).exists() or not (d / f[:-3]).exists() else d / f[:-3]


def _find_idx_dir(name: str, root: str | None, download: bool) -> tuple[Path, bool]:
    """Where the four IDX files are, and whether they must be the official files: only ``root`` when it is given
    (a download goes there), else the Debian path (Fashion-MNIST), then the cache, then a download into the cache.
    Files found in ``root`` are the user's own unless their checksums say otherwise."""
    if root:
        candidates = [Path(root).expanduser()]
    else:
        candidates = [DEBIAN_FASHION_MNIST] if name == "fashion_mnist" else []
        candidates.append(_cache_dir() / name)
    for c in candidates:
        if all(_idx_path(c, f).exists() for f in _IDX_FILES):
            return c, not root
    if download and _try_download_idx(name, candidates[-1]):
        return candidates[-1], True
    looked = ", ".join(str(c) for c in candidates)
    hint = " or run scripts/setup-system demo (Debian/Ubuntu)" if name == "fashion_mnist" and not root else ""
    raise DataError(f"{name} not found (looked in {looked}, download {'failed' if download else 'disabled'}); "
                    f"put the four *-ubyte.gz files in a directory and set data.root to it{hint}")


def _cache_dir() -> Path:
    return Path(os.environ.get("EXITLAB_DATA", Path.home() / ".cache" / "exitlab"))


def _fetch(url: str, dest: Path) -> bool:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=20) as r, open(tmp, "wb") as f:
            f.write(r.read())
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    tmp.replace(dest)
    return True


def _try_download_idx(name: str, dest: Path) -> bool:
    return all(_fetch(_URLS[name] + f, dest / f) for f in _IDX_FILES)  # load_idx verifies them (official files)


def _check_idx_set(paths: list[Path], arrays: list[np.ndarray]) -> None:
    """One label per image in each split, and the same image size in both."""
    for i in (0, 2):
        if len(arrays[i]) != len(arrays[i + 1]):
            raise DataError(f"{paths[i + 1]} has {len(arrays[i + 1])} labels but {paths[i]} has {len(arrays[i])} "
                            "images; give one label per image")
    if arrays[0].shape[1:] != arrays[2].shape[1:]:
        raise DataError(f"{paths[2]} holds {'x'.join(map(str, arrays[2].shape[1:]))} images but {paths[0]} holds "
                        f"{'x'.join(map(str, arrays[0].shape[1:]))}; both splits need the same image size")


def load_idx(name: str, root: str | None = None, download: bool = True) -> Dataset:
    """MNIST or Fashion-MNIST from IDX files. Files in the Debian path, the cache or a download must match the
    official checksums; files in ``root`` that do not are the user's own, accepted after format checks."""
    d, official = _find_idx_dir(name, root, download)
    paths = [_idx_path(d, f) for f in _IDX_FILES]
    arrays, own = [], []
    for p, ndim in zip(paths, (3, 1, 3, 1)):
        raw = _read_idx_file(p)
        if not _official(name, p, raw):
            if official:
                raise DataError(f"{p} fails its checksum (not the official {name} file); delete it and reinstall or "
                                "re-download the dataset")
            own.append(p.name)
        arrays.append(_parse_idx(raw, p, ndim))
    _check_idx_set(paths, arrays)
    if own:
        many = len(own) > 1
        log.warning("%s: %s %s not the official %s file%s (checksums differ); using %s as your own IDX data after "
                    "format checks", d, ", ".join(own), "are" if many else "is", name, "s" if many else "",
                    "them" if many else "it")
    tx, ty, vx, vy = (torch.from_numpy(a.copy()) for a in arrays)
    classes = FASHION_CLASSES if name == "fashion_mnist" else [str(i) for i in range(10)]
    return Dataset(name, tx.unsqueeze(1), ty.long(), vx.unsqueeze(1), vy.long(), classes)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only (CIFAR batches); any other class is refused, so a pickle
    cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(path: Path):
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as e:
        raise DataError(f"{path} is not a CIFAR python batch ({e}); use the pickled batches of "
                        "cifar-*-python") from None


def _cifar_files(d: Path, name: str, official: bool) -> tuple[list[str], list[str]]:
    """The training and test batch files in ``d``: all the official ones, or in a user folder the official names
    found (at least one training batch)."""
    train = sorted(p.name for p in d.glob("data_batch_*")) if name == "cifar10" else ["train"]
    test = ["test_batch" if name == "cifar10" else "test"]
    for f in (list(_CIFAR[name][2]) if official else (train or ["data_batch_1"]) + test):
        if not (d / f).is_file():
            raise DataError(f"{d / f} is missing; restore the full {_CIFAR[name][0]} folder")
    return train, test


def load_cifar(name: str, root: str | None = None, download: bool = True) -> Dataset:
    """CIFAR-10/100 from the python pickle batches (the ``cifar-*-python`` folder or its .tar.gz). Files in the cache
    must match the official checksums; batches in ``root`` that do not are the user's own, checked by format."""
    folder, tgz_md5, files = _CIFAR[name]
    bases = [Path(root).expanduser()] if root else [_cache_dir() / name]  # a given root is the only place looked
    d = next((b / folder for b in bases if (b / folder).is_dir()), None)
    d = d or next((b for b in bases if (b / ("test_batch" if name == "cifar10" else "test")).exists()), None)
    official = not root
    if d is None:
        d, official = _extract_cifar(name, bases, folder, tgz_md5, download), True
    train, test = _cifar_files(d, name, official)
    own = [f for f in train + test if _md5(d / f) != files.get(f)] + sorted(set(files) - set(train + test))
    if own and official:
        raise DataError(f"{d / own[0]} fails its checksum: truncated or altered; delete it and re-extract {folder}")
    key = "labels" if name == "cifar10" else "fine_labels"
    tx, ty = _cifar_batches(d, train, key)
    vx, vy = _cifar_batches(d, test, key)
    if own:
        log.warning("%s: not the official %s batches (%s differ or are missing); using them as your own CIFAR-format "
                    "data after format checks", d, name, ", ".join(own))
    return Dataset(name, tx, ty, vx, vy, _cifar_classes(d, name))


def _cifar_classes(d: Path, name: str) -> list[str]:
    meta = d / ("batches.meta" if name == "cifar10" else "meta")
    classes = [str(i) for i in range(10 if name == "cifar10" else 100)]
    if meta.exists():
        m = _unpickle(meta)
        if isinstance(m, dict):
            classes = m.get("label_names") or m.get("fine_label_names") or classes
    return list(classes)


def _cifar_batches(d: Path, files: list[str], key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[N, 3, 32, 32]`` and labels of the batch files, each checked by format."""
    xs, ys = [], []
    for f in files:
        b = _unpickle(d / f)
        if not isinstance(b, dict) or "data" not in b or key not in b:
            raise DataError(f"{d / f} is not a CIFAR batch: expected a dict with 'data' and '{key}'")
        x, y = np.asarray(b["data"]), np.asarray(b[key])
        if x.ndim != 2 or x.shape[1] != 3072 or x.dtype != np.uint8:
            raise DataError(f"{d / f}: 'data' is {x.dtype} {tuple(x.shape)}, expected uint8 [N, 3072] (N images of "
                            "3x32x32, channel-major)")
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{d / f} has {y.size} '{key}' for {len(x)} images; give one integer label per image")
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(y.astype(np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _extract_cifar(name: str, bases: list[Path], folder: str, tgz_md5: str, download: bool) -> Path:
    archive = next((b / Path(_URLS[name]).name for b in bases if (b / Path(_URLS[name]).name).exists()), None)
    if archive is None and download:
        archive = bases[-1] / Path(_URLS[name]).name
        if not _fetch(_URLS[name], archive):
            archive = None
    if archive is None:
        raise DataError(f"{name} not found (looked in {', '.join(map(str, bases))}); download "
                        f"{Path(_URLS[name]).name} from {_URLS[name]} and set data.root to its folder")
    if _md5(archive) != tgz_md5:
        raise DataError(f"{archive} fails its checksum: truncated or altered; delete it and download it again")
    with tarfile.open(archive) as t:
        t.extractall(archive.parent, filter="data")
    return archive.parent / folder


def synthetic(num_classes: int = 7, n_train: int = 700, n_test: int = 210, size: int = 16, channels: int = 3,
              seed: int = 0) -> Dataset:
    """Learnable class-conditional images for tests: each class is a fixed random pattern plus noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, channels, size, size, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % num_classes
        x = protos[y] * 0.7 + torch.rand(n, channels, size, size, generator=g) * 0.3
        return (x * 255).round().to(torch.uint8), y

    tx, ty = draw(n_train)
    vx, vy = draw(n_test)
    return Dataset("synthetic", tx, ty, vx, vy, [f"c{i}" for i in range(num_classes)])
