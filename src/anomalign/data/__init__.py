"""Data layer: readers for each layout, validation, transforms, the torch dataset and the built-in dataset.

Typical use::

    from anomalign.data import load_dataset, PairDataset
    index = load_dataset("path/to/data")            # auto-detects the layout, checks every file
    train = PairDataset(index.split("train"), size=64)
"""
from anomalign.data.dataset import PairDataset, default_prompt, load_pair
from anomalign.data.folders import DataOptions
from anomalign.data.imageio import DEFAULT_MASK_THRESHOLD, load_mask, read_image
from anomalign.data.layouts import LAYOUTS, READERS, assign_splits, detect_layout, read_dataset
from anomalign.data.sample import DatasetIndex, Problem, Sample
from anomalign.data.transforms import from_model_range, to_model_range
from anomalign.data.validate import CheckReport, check_dataset, load_dataset

__all__ = ["CheckReport", "DEFAULT_MASK_THRESHOLD", "DatasetIndex", "LAYOUTS", "PairDataset",
           "Problem", "READERS", "DataOptions", "Sample", "assign_splits", "check_dataset", "default_prompt",
           "detect_layout", "from_model_range", "load_dataset", "load_mask", "load_pair", "read_dataset",
           "read_image", "to_model_range"]
