"""Checkpoints as safetensors plus JSON metadata: atomic writes, a content checksum, and no pickle on load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, ExitlabError
from ..models import MultiExitModel, SpecError, model_from_spec, spec_from_json
from .files import atomic_write, read_json

FORMAT = "exitlab-checkpoint-1"


def _digest(tensors: dict[str, torch.Tensor], meta_json: str) -> str:
    h = hashlib.sha256(meta_json.encode())
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> str:
    """Save ``tensors`` with JSON ``meta`` atomically; returns the content checksum stored in the file."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta_json = json.dumps(meta, sort_keys=True)
    digest = _digest(tensors, meta_json)
    header = {"format": FORMAT, "meta": meta_json, "sha256": digest}
    atomic_write(Path(path), lambda p: save_file(tensors, str(p), metadata=header))
    return digest


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load and verify a file written by :func:`save_tensors`. A truncated or altered file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({e}); delete it to fall back to an "
                              "earlier one") from None
    if header.get("format") != FORMAT or "sha256" not in header:
        raise CheckpointError(f"{path} is not an exitlab checkpoint (no checksum in its metadata)")
    if _digest(tensors, header["meta"]) != header["sha256"]:
        raise CheckpointError(f"checkpoint {path} fails its checksum: the file was altered or damaged; delete it to "
                              "fall back to an earlier one")
    return tensors, json.loads(header["meta"])


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and plain JSON."""
    sd = opt.state_dict()
    tensors, plain = {}, {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{name}"] = v
            else:
                plain[f"{idx}.{name}"] = v
    return tensors, {"param_groups": sd["param_groups"], "plain": plain}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], info: dict) -> None:
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for k, v in info["plain"].items():
        idx, name = k.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})


def save_pretrained(model: MultiExitModel, directory: str | Path, *, extra: dict | None = None,
                    classes: list[str] | None = None, policy=None, normalize: dict | None = None) -> None:
    """Write ``model.safetensors`` and ``model.json`` (how to rebuild the model, class names, policy) to a folder.

    ``classes``: class names in label order. ``policy``: an :class:`exitlab.policies.Policy` with its threshold, or
    its ``to_dict()``. ``normalize``: ``{"mean": [...], "std": [...]}`` applied to [0, 1] pixels before the model.
    ``extra``: any other JSON-able metadata. All of it lands in model.json, readable as ``model.info`` after loading.
    """
    d = Path(directory)
    if model.spec is None:
        raise CheckpointError("this model records no description to build it again; build it with build_model, "
                              "from_module, from_timm, from_torchvision or from_hf")
    info = {"spec": model.spec.to_json(), "exitlab_format": 1, **(extra or {})}
    named = {"classes": list(classes) if classes is not None else None,
             "policy": policy.to_dict() if hasattr(policy, "to_dict") else policy, "normalize": normalize}
    info.update({k: v for k, v in named.items() if v is not None})
    try:
        json.dumps(info)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"model.json metadata must be plain JSON (numbers, strings, lists, dicts): {e}") from None
    save_tensors(d / "model.safetensors", model.state_dict(), {"kind": "model"})
    atomic_write(d / "model.json", lambda p: p.write_text(json.dumps(info, indent=2, sort_keys=True)))


def load(directory: str | Path, map_location: str = "cpu", *, module=None) -> MultiExitModel:
    """The trained model of a finished run directory, or of any folder written by :func:`save_pretrained`, in eval
    mode. Reads JSON and safetensors only; nothing is unpickled.

    ``module``: for a model adapted from a user module with no factory, that module (fresh or not: its weights
    are replaced by the saved ones)."""
    d = Path(directory)
    if not (d / "model.json").is_file():
        raise CheckpointError(f"{d} holds no model (model.json missing); point at a finished run directory")
    fix = "it was not written by save_pretrained, or it was damaged; retrain, or restore the file"
    try:
        info = read_json(d / "model.json", "model description", fix)
    except ExitlabError as e:
        raise CheckpointError(str(e)) from None
    if "spec" not in info:
        raise CheckpointError(f"{d / 'model.json'} has no model spec; {fix}")
    try:
        model = model_from_spec(spec_from_json(info["spec"]), module=module)
    except SpecError as e:
        raise CheckpointError(f"{d / 'model.json'}: {e}; {fix}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{d / 'model.json'} has a malformed model spec ({_short(e)}); {fix}") from None
    tensors, _ = load_tensors(d / "model.safetensors")
    load_state(model, tensors, d / "model.safetensors")
    model.info = info
    return model.to(map_location).eval()  # as Hugging Face's from_pretrained: ready for inference


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


def load_state(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Load weights, refusing a checkpoint from a different model with a clear message."""
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    wrong = [k for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or wrong:
        detail = f"missing {missing[:3]}" if missing else f"shape mismatch at {wrong[:3]}"
        raise CheckpointError(f"{source} is from a different model ({detail}); check model.backbone, model.exits "
                              "and model.head against the run that wrote it")
    model.load_state_dict({k: tensors[k] for k in own})
