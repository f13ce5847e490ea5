"""exitlab: multi-exit (early-exit) neural networks, trained joint, disjoint or mixed, and measured."""

from __future__ import annotations

from . import data
from .errors import ExitlabError
from .evaluation.evaluate import evaluate_run
from .evaluation.inference import early_exit
from .evaluation.policies import make_policy
from .models import (
    BACKBONES,
    HEADS,
    MultiExitModel,
    build_backbone,
    build_model,
    from_hf,
    from_hf_causal,
    from_module,
    from_timm,
    from_torchvision,
)
from .recipes.train import train
from .runs.checkpoint import load, save_pretrained
from .runs.components import REGIMES
from .runs.config import RunConfig, load_config
from .runs.rundir import RunDir
from .runs.version import __version__
from .training.phases import Phase, plan_phases

__all__ = ["BACKBONES", "HEADS", "REGIMES", "ExitlabError", "MultiExitModel", "Phase", "RunConfig", "RunDir",
           "build_backbone", "build_model", "data", "early_exit", "evaluate_run", "from_hf", "from_hf_causal",
           "from_module", "from_timm", "from_torchvision", "load", "load_config", "make_policy", "plan_phases",
           "save_pretrained", "train", "__version__"]
