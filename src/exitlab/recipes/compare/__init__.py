"""Regime comparisons: a grid of runs, evaluated, aggregated over seeds, as tables, plots and an HTML report."""

from .config import VARIANTS, CompareConfig, load_compare_config
from .run import run_compare

__all__ = ["VARIANTS", "CompareConfig", "load_compare_config", "run_compare"]
