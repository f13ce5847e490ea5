"""Data: data sets by name, the seeded split, loaders that follow one protocol, and a run's data built once."""

from __future__ import annotations

from .datasets import Dataset
from .loader import TensorLoader, channel_stats, random_crop_flip, stratified_split, stratified_subset
from .run import Loader, RunData, build_run_data
from .sources import DATASETS, load_dataset

__all__ = ["DATASETS", "Dataset", "Loader", "RunData", "TensorLoader", "build_run_data", "channel_stats",
           "load_dataset", "random_crop_flip", "stratified_split", "stratified_subset"]
