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

import difflib
import os
from typing import Callable

from ..errors import OptionValueError, option
from .digits import DigitsDataset

# name -> (builder(root, split, transform, **options), needs_root, default split).
# Folder-based datasets register themselves at the bottom of their module (images.py: ImageFolder, ImageNet,
# CIFAR, STL-10; objectnet.py: ObjectNet; mnist.py: MNIST and Fashion-MNIST) by calling
# register_dataset(name, builder, needs_root=..., default_split=...).
_REGISTRY: dict[str, tuple[Callable, bool, str]] = {
    "digits": (DigitsDataset, False, "all"),
}


def register_dataset(name: str, builder: Callable, needs_root: bool = True, default_split: str = "train"):
    """Make ``builder(root, split, transform, **options)`` available as dataset ``name``."""
    _REGISTRY[name] = (builder, needs_root, default_split)


def list_datasets() -> list[str]:
    return sorted(_REGISTRY)


def default_split(name: str) -> str:
    return _lookup(name)[2]


def _lookup(name: str):
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown dataset {name!r}.{hint} Known datasets: {', '.join(list_datasets())}"
        ) from None


def get_dataset(name: str, root=None, split: str | None = None, transform=None, **options):
    """Build dataset ``name`` from the local folder ``root`` (no download is ever attempted).

    ``name`` may also be the path of an image folder (with class folders, or flat: unlabelled), read as
    ``imagefolder`` with that root; the dataset is then named after the folder."""
    if name not in _REGISTRY and os.path.isdir(os.path.expanduser(str(name))):
        if root is not None:
            raise OptionValueError(f"dataset {name!r} is a folder and {option('data_root')} names another one "
                                   f"({root}): give the folder once (as the dataset, or imagefolder with the root)")
        name, root = "imagefolder", name
    builder, needs_root, split_default = _lookup(name)
    if needs_root and root is None:
        raise OptionValueError(f"dataset {name!r} is read from a local folder: pass {option('data_root')}")
    return builder(root, split or split_default, transform, **options)


from . import images as _images  # noqa: E402,F401  (registers the folder-based datasets)
from . import objectnet as _objectnet  # noqa: E402,F401  (registers ObjectNet; it builds on images.py)
from . import mnist as _mnist  # noqa: E402,F401  (registers mnist and fashion-mnist)
