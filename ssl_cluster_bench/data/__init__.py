"""Datasets: a name -> builder registry; every dataset yields ``(image, label, index)``.

Entry point:
    get_dataset(name, root=None, split=None, transform=None) -> torch Dataset

An image folder can be named by its path instead (``get_dataset("/data/photos")``); a flat folder of images
(no class sub-folders) is unlabelled: every label is -1.

Every dataset has ``name``, ``split``, ``classes``, ``targets`` (int64 labels, known without opening
images), ``transform`` and ``sample_id(i)``; ``__getitem__`` returns ``image=None`` for an unreadable file so
extraction can skip and count it instead of crashing.
"""
from __future__ import annotations

from .registry import (DatasetInfo, dataset_info, default_split, get_dataset, list_datasets, register_dataset,
                       resolve_dataset)

__all__ = ["DatasetInfo", "dataset_info", "default_split", "get_dataset", "list_datasets", "register_dataset",
           "resolve_dataset"]

from . import images as _images  # noqa: E402,F401  (registers the folder-based datasets)
from . import objectnet as _objectnet  # noqa: E402,F401  (registers ObjectNet; it builds on images.py)
from . import mnist as _mnist  # noqa: E402,F401  (registers mnist and fashion-mnist)
