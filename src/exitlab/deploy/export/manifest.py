"""The export manifest (``manifest.json``): which graph files make up the model, their inputs, FLOPs and the policy.

Reading a manifest checks everything that can be checked without onnxruntime: the format tag, required fields,
that every graph file is a plain name inside the export folder (no ``..``, no absolute path, no symbolic link out of
it), that it exists and has the checksum the manifest recorded. :mod:`exitlab.export.runtime` then checks
that each graph's inputs and outputs match what the manifest says.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from ...errors import ExitlabError

MANIFEST_NAME = "manifest.json"
FORMAT = "exitlab-onnx-1"
LAYOUTS = ("staged", "all")


class ExportError(ExitlabError):
    """An export directory is missing, truncated, altered or inconsistent with its manifest."""


@dataclass
class GraphEntry:
    """One ONNX file. ``flops``: its own FLOPs per sample; ``cum_flops``: FLOPs per sample up to its exit."""

    file: str
    inputs: list[str]
    outputs: list[str]
    input_shapes: list[list[int]]  # per input, without the batch dimension
    exits: list[int]  # which exits' logits this graph returns (one for a stage, all for the all-exits graph)
    flops: int
    cum_flops: int
    sha256: str
    blocks: list[int] = field(default_factory=list)  # [start, end) of the backbone blocks it runs


@dataclass
class Manifest:
    """Everything a runtime needs besides the graphs themselves."""

    layout: str
    input_shape: list[int]  # one sample, e.g. [1, 28, 28]
    num_classes: int
    num_exits: int
    graphs: list[GraphEntry]
    exit_flops: list[int]  # FLOPs per sample for a sample leaving at exit k (staged execution)
    classes: list[str] = field(default_factory=list)
    normalize: dict | None = None  # {"mean": [...], "std": [...]} on the [0, 1] pixel scale, for raw images
    policy: dict | None = None  # {"name": ..., "thresholds": [...], ...} as saved with the model
    model: dict = field(default_factory=dict)  # the model spec as model.json saves it (architecture, exits, head)
    opset: int | None = None
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def class_name(self, k: int) -> str:
        return self.classes[k] if k < len(self.classes) else str(k)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _plain_name(name) -> bool:
    """A file name with no folder part on any platform: not ``..``, ``a/b``, ``/abs``, ``C:x`` or ``a\\b``."""
    return isinstance(name, str) and name not in ("", ".", "..") and PurePosixPath(name).name == name \
        and PureWindowsPath(name).name == name


def graph_path(export_dir: Path, entry: GraphEntry) -> Path:
    """The graph file of ``entry``, which must resolve inside ``export_dir`` (a symbolic link out of it is refused)."""
    path = export_dir / entry.file
    if not path.resolve().is_relative_to(export_dir.resolve()):
        raise ExportError(f"{export_dir}: graph {entry.file} is a link to {path.resolve()}, outside the export "
                          "folder; a manifest may only name files inside it, re-export the model")
    return path


def _parse(raw: dict, source: Path) -> Manifest:
    if raw.get("format") != FORMAT:
        raise ExportError(f"{source} is not an exitlab ONNX manifest (format {raw.get('format')!r}, expected "
                          f"{FORMAT!r}); re-export with `exitlab export RUN_DIR --format onnx`")
    try:
        graphs = [GraphEntry(**g) for g in raw.pop("graphs")]
        man = Manifest(graphs=graphs, **raw)
    except (KeyError, TypeError) as e:
        raise ExportError(f"{source} is missing or has unexpected fields ({e}); re-export the model") from None
    for g in man.graphs:
        if not _plain_name(g.file):
            raise ExportError(f"{source}: graph file {g.file!r} is not a plain file name; a manifest may only name "
                              "files inside its export folder, re-export the model")
    if man.layout not in LAYOUTS:
        raise ExportError(f"{source}: unknown layout {man.layout!r}; expected one of {LAYOUTS}")
    expected = man.num_exits if man.layout == "staged" else 1
    if len(man.graphs) != expected or len(man.exit_flops) != man.num_exits:
        raise ExportError(f"{source} lists {len(man.graphs)} graphs and {len(man.exit_flops)} exit costs for "
                          f"{man.num_exits} exits in layout {man.layout!r}; the manifest is inconsistent, re-export")
    return man


def read_manifest(export_dir: str | Path, *, verify_files: bool = True) -> Manifest:
    """Read ``manifest.json`` from an export directory; with ``verify_files`` check each graph's presence and checksum.

    Graph file names are always confined to the folder, ``verify_files`` or not.
    """
    d = Path(export_dir)
    path = d / MANIFEST_NAME
    if not d.is_dir():
        raise ExportError(f"export directory {d} does not exist; create one with `exitlab export RUN_DIR`")
    if not path.is_file():
        raise ExportError(f"{d} has no {MANIFEST_NAME}; it is not an exitlab export (or the export was interrupted)")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path} is not valid JSON ({e}); the export is truncated or corrupt, re-export") from None
    if not isinstance(raw, dict):
        raise ExportError(f"{path} does not hold a JSON object; re-export the model")
    man = _parse(raw, path)
    files = [graph_path(d, g) for g in man.graphs]  # always: a loader must never open a file outside the export
    if verify_files:
        for g, f in zip(man.graphs, files):
            if not f.is_file():
                raise ExportError(f"{d}: graph {g.file} listed in the manifest is missing; re-export the model")
            if file_sha256(f) != g.sha256:
                raise ExportError(f"{f} does not match the checksum in {MANIFEST_NAME}: the file is truncated, "
                                  "altered or from another export; re-export the model")
    return man
