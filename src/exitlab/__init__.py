"""exitlab: multi-exit (early-exit) neural networks, trained joint, disjoint or mixed, and measured."""

from __future__ import annotations

__version__ = "0.1.0"

from .checkpoint import from_pretrained, save_pretrained
from .config import RunConfig, load_config
from .errors import ExitlabError
from .models import BACKBONES, HEADS, MultiExitModel, build_backbone, build_model, from_module
from .phases import REGIMES, Phase, plan_phases
from .train import train


def load(run_dir) -> MultiExitModel:
    """Load the trained model of a finished run directory (or any folder written by ``save_pretrained``)."""
    return from_pretrained(run_dir)


MultiExitModel.save_pretrained = save_pretrained
MultiExitModel.from_pretrained = staticmethod(from_pretrained)

__all__ = ["BACKBONES", "HEADS", "REGIMES", "ExitlabError", "MultiExitModel", "Phase", "RunConfig", "build_backbone",
           "build_model", "from_module", "from_pretrained", "load", "load_config", "plan_phases", "save_pretrained",
           "train", "__version__"]
