"""Source datasets. Each module has the same shape: ``SPEC`` (a `DatasetSpec`) and ``read(root)``."""

from __future__ import annotations

import importlib

# Asset keys are ``raw_<name>``. In-domain training sources first, then external test sets.
DATASETS = ("coco", "ade20k", "pets", "nyuv2", "voc", "sunrgbd", "fss1000", "imagenet_sub")


def dataset_module(name: str):
    """The module for dataset ``name`` (imported lazily: readers pull in h5py, pycocotools, ...)."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return importlib.import_module(f"instructcv_core.data.datasets.{name}")
