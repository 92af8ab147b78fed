"""The dataset registry: a name -> (builder, needs a root folder, default split) table.

Entry points:
    register_dataset(name, builder, needs_root=True, default_split="train")
    get_dataset(name, root=None, split=None, transform=None, **options) -> torch Dataset
    dataset_info(name) -> DatasetInfo(builder, needs_root, default_split)   (unknown names: did-you-mean)
    list_datasets() / default_split(name)

A module of its own so that the dataset modules register themselves here without importing the package
``__init__`` that imports them (``ssl_cluster_bench.data`` re-exports everything).
"""
from __future__ import annotations

import difflib
import os
from typing import Callable, NamedTuple

from ..errors import OptionValueError, option
from .digits import DigitsDataset

# name -> (builder(root, split, transform, **options), needs_root, default split).
# Folder-based datasets register themselves at the bottom of their module (images.py: ImageFolder, ImageNet,
# CIFAR, STL-10; objectnet.py: ObjectNet; mnist.py: MNIST and Fashion-MNIST) by calling
# register_dataset(name, builder, needs_root=..., default_split=...).
_REGISTRY: dict[str, tuple[Callable, bool, str]] = {
    "digits": (DigitsDataset, False, "all"),
}


class DatasetInfo(NamedTuple):
    builder: Callable
    needs_root: bool
    default_split: str


def register_dataset(name: str, builder: Callable, needs_root: bool = True, default_split: str = "train"):
    """Make ``builder(root, split, transform, **options)`` available as dataset ``name``."""
    _REGISTRY[name] = (builder, needs_root, default_split)


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def default_split(name: str) -> str:
    return dataset_info(name).default_split


def dataset_info(name: str) -> DatasetInfo:
    """How dataset ``name`` is built; an unknown name raises ValueError with the close matches and the list."""
    try:
        return DatasetInfo(*_REGISTRY[name])
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown dataset {name!r}.{hint} Known datasets: {', '.join(list_datasets())}"
        ) from None


def resolve_dataset(name: str, root=None) -> tuple[str, object]:
    """The registered name and root that ``get_dataset(name, root)`` builds from, checked without building it:
    a folder path becomes ``("imagefolder", path)``; an unknown name, a second folder, or a dataset that is read
    from a folder given none raise one-line errors."""
    if name not in _REGISTRY and os.path.isdir(os.path.expanduser(str(name))):
        if root is not None:
            raise OptionValueError(f"dataset {name!r} is a folder and {option('data_root')} names another one "
                                   f"({root}): give the folder once (as the dataset, or imagefolder with the root)")
        name, root = "imagefolder", name
    if dataset_info(name).needs_root and root is None:
        raise OptionValueError(f"dataset {name!r} is read from a local folder: pass {option('data_root')}")
    return name, root


def get_dataset(name: str, root=None, split: str | None = None, transform=None, **options):
    """Build dataset ``name`` from the local folder ``root`` (no download is ever attempted).

    ``name`` may also be the path of an image folder (with class folders, or flat: unlabelled), read as
    ``imagefolder`` with that root; the dataset is then named after the folder."""
    name, root = resolve_dataset(name, root)
    builder, _, split_default = dataset_info(name)
    return builder(root, split or split_default, transform, **options)
