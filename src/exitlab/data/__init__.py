"""Data: sources (named data sets, tensors, map-style datasets, image folders, WebDataset shards), the seeded
stratified split, loaders that follow one protocol, and a run's data built once."""

from __future__ import annotations

from .catalog import AUGMENTS, DATASETS, is_text_data
from .datasets import Dataset
from .loader import TensorLoader, channel_stats, random_crop_flip, stratified_split, stratified_subset
from .run import Loader, RunData, Source, build_run_data
from .sources import StreamSource, from_datasets, from_tensors, load_dataset, load_source
from .stream import Samples, StreamLoader
from .text import TextLoader, TextSource, from_token_tensors
from .transforms import Recipe

__all__ = ["AUGMENTS", "DATASETS", "Dataset", "Loader", "Recipe", "RunData", "Samples", "Source", "StreamLoader",
           "StreamSource", "TensorLoader", "TextLoader", "TextSource", "build_run_data", "channel_stats",
           "from_datasets", "from_tensors", "from_token_tensors", "is_text_data", "load_dataset", "load_source",
           "random_crop_flip", "stratified_split", "stratified_subset"]
