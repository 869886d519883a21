"""Dataset adapters (one per benchmark), the synthetic generator, samplers and transforms."""

from .records import DatasetLayoutError, EvalSplit, ReidDataset, Sample
from .registry import build_dataset, list_datasets, register_dataset

__all__ = [
    "DatasetLayoutError",
    "EvalSplit",
    "ReidDataset",
    "Sample",
    "build_dataset",
    "list_datasets",
    "register_dataset",
]
