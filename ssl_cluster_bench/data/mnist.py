"""MNIST and Fashion-MNIST from their original idx files (plain or ``.gz``), never downloaded.

Entry point (through the registry): ``get_dataset("fashion-mnist" | "mnist", root, split)`` with split
``train`` (60,000), ``test`` (10,000) or ``all`` (train then test, 70,000). ``root`` may be torchvision's
layout (``root/FashionMNIST/raw/``, ``root/MNIST/raw/``) or the folder holding the four files itself, e.g.
the Debian package's ``/usr/share/datasets/fashion-mnist``. Images are 28x28 grey, handed to backbones as RGB
(three equal channels; the pixels card turns them back into the exact grey values). ``sample_id(i)`` is
``"<images file>:<index in file>"``. A missing file, or a file that is truncated or not idx (bad magic, sizes
that disagree with the header, a gzip stream that ends early), raises instead of giving a short dataset.
"""
from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .images import ArrayImageDataset, PathLike

__all__ = ["MNISTDataset", "FashionMNISTDataset", "read_idx"]

# idx magic: two zero bytes, the element type (0x08 = unsigned byte), the number of dimensions
_UBYTE = 0x08
_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SPLITS = {"train": ("train",), "test": ("test",), "all": ("train", "test")}


def read_idx(path: PathLike, ndim: int) -> np.ndarray:
    """The uint8 array of an idx file (``.gz`` decompressed), checked against its header.

    Written here because torchvision's reader neither opens ``.gz`` files nor reports a bad file as more than
    an assertion. Raises ValueError naming the file when the magic, the dimension count or the data size
    disagrees with the header, or when the gzip stream is corrupt or ends early.
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"{str(path)!r} cannot be read ({type(e).__name__}: {e}): the download is truncated "
                         f"or corrupt; fetch the file again") from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE or raw[3] != ndim:
        found = raw[:4].hex() if len(raw) >= 4 else f"{len(raw)} bytes"
        raise ValueError(f"{str(path)!r} is not an idx file of {ndim}-d unsigned bytes (magic {found}, expected "
                         f"0000080{ndim}); is it the right file?")
    dims = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        raise ValueError(f"{str(path)!r} holds {len(raw) - header} data bytes but its header says {dims} "
                         f"= {expected}: the file is truncated or corrupt; fetch it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


class _IdxDataset(ArrayImageDataset):
    """Grey images + labels from the idx files of one or both official splits, held in RAM (uint8)."""

    name: str
    _folder: str  # torchvision's folder name under root
    _class_names: tuple[str, ...]
    _how_to_get: str

    def __init__(self, root: PathLike, split: str = "test",
                 transform: Callable[[Image.Image], Any] | None = None) -> None:
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {', '.join(_SPLITS)} for {self.name}, got {split!r}")
        self.split = split
        self.transform = transform
        self.classes = list(self._class_names)
        data_dir = self._find_dir(Path(root).expanduser(), _SPLITS[split])
        self.root = data_dir
        images, labels, sources, counts = [], [], [], []
        for part in _SPLITS[split]:
            image_file, label_file = (self._file(data_dir, stem) for stem in _SPLIT_FILES[part])
            x = read_idx(image_file, 3)
            y = read_idx(label_file, 1).astype(np.int64)
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"{str(image_file)!r} holds {x.shape[0]} images but {str(label_file)!r} "
                                 f"{y.shape[0]} labels: one of them is truncated or from another release")
            if y.size and y.max() >= len(self.classes):
                raise ValueError(f"{str(label_file)!r}: labels must lie in 0..{len(self.classes) - 1}, found "
                                 f"{int(y.max())}")
            images.append(x)
            labels.append(y)
            sources.append(image_file.name)
            counts.append(x.shape[0])
        self._images = np.concatenate(images) if len(images) > 1 else images[0]
        self.targets = np.concatenate(labels)
        self._sources = sources
        self._bounds = np.cumsum(counts)

    def _candidates(self, root: Path) -> list[Path]:
        return [root / self._folder / "raw", root / self._folder, root]

    @classmethod
    def _expected(cls, parts) -> str:
        names = [stem for part in parts for stem in _SPLIT_FILES[part]]
        return "\n".join(f"      {n}[.gz]" for n in names)

    def _find_dir(self, root: Path, parts) -> Path:
        """The first candidate folder that holds every file of ``parts`` (plain or gzipped)."""
        stems = [stem for part in parts for stem in _SPLIT_FILES[part]]
        candidates = self._candidates(root)
        for d in candidates:
            if all(self._has(d, stem) for stem in stems):
                return d
        partial = next((d for d in candidates if any(self._has(d, s) for s in stems)), None)
        where = (f"{str(partial)!r} lacks {', '.join(s for s in stems if not self._has(partial, s))}"
                 if partial is not None else
                 f"none of {', '.join(repr(str(d)) for d in candidates)} holds them")
        raise FileNotFoundError(
            f"{self.name} split {self.split!r}: the idx files are not found under --data-root {str(root)!r} "
            f"({where}). Expected, plain or gzipped, in <root>/{self._folder}/raw/ (torchvision's layout) or "
            f"directly in <root>:\n{self._expected(parts)}\n{self._how_to_get}"
        )

    @staticmethod
    def _has(d: Path, stem: str) -> bool:
        return (d / stem).is_file() or (d / f"{stem}.gz").is_file()

    @staticmethod
    def _file(d: Path, stem: str) -> Path:
        plain = d / stem
        return plain if plain.is_file() else d / f"{stem}.gz"

    def _load_image(self, i: int) -> Image.Image:
        return Image.fromarray(self._images[i], mode="L").convert("RGB")


class FashionMNISTDataset(_IdxDataset):
    """Fashion-MNIST (Xiao et al. 2017): 70,000 28x28 grey images of 10 clothing classes, balanced."""

    name = "fashion-mnist"
    _folder = "FashionMNIST"
    _class_names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                    "Ankle boot")
    _how_to_get = ("Get them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu; then --data-root "
                   "/usr/share/datasets/fashion-mnist), or on a connected machine with "
                   "`torchvision.datasets.FashionMNIST(ROOT, download=True)` and copy ROOT over.")


class MNISTDataset(_IdxDataset):
    """MNIST (LeCun et al. 1998): 70,000 28x28 grey handwritten digits, 10 classes."""

    name = "mnist"
    _folder = "MNIST"
    _class_names = tuple(str(d) for d in range(10))
    _how_to_get = ("Get them on a connected machine with `torchvision.datasets.MNIST(ROOT, download=True)` and "
                   "copy ROOT over (or pass the folder holding the four files as --data-root).")


def _register() -> None:
    from .registry import register_dataset

    # test = the 10,000-image split, the cheap default like CIFAR's; "all" is the 70,000 deep clustering reports
    register_dataset("fashion-mnist", FashionMNISTDataset, needs_root=True, default_split="test")
    register_dataset("mnist", MNISTDataset, needs_root=True, default_split="test")


_register()
