"""Image datasets read from local roots, in the form the extraction engine consumes.

Every dataset here is a ``torch.utils.data.Dataset`` whose ``__getitem__(i)`` returns
``(image, label, i)``: ``image`` is ``transform(PIL RGB image)`` (the PIL image itself when
``transform`` is None) or ``None`` when the file cannot be decoded, so one corrupt JPEG costs one
sample instead of the whole run; the engine's collate drops the ``None`` items and reports
``sample_id(i)`` for each. Labels are available without opening any image via ``targets``.

Datasets: :class:`ImageFolderDataset` (``root/[split/]<class>/<img>``), :class:`ImageNetDataset`
(with optional class-subset files such as SCAN's 50/100/200-class lists), :class:`CIFAR10Dataset`,
:class:`CIFAR100Dataset` (20 superclasses by default, i.e. CIFAR-100-20) and
:class:`STL10Dataset` (binary version, memory-mapped). ObjectNet lives in
:mod:`ssl_cluster_bench.data.objectnet`. Nothing is downloaded: a missing root or an unexpected
layout raises ``FileNotFoundError`` describing the expected tree.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
from tqdm.auto import tqdm

__all__ = [
    "IMG_EXTENSIONS",
    "ImageDataset",
    "FileImageDataset",
    "ImageFolderDataset",
    "ImageNetDataset",
    "CIFAR10Dataset",
    "CIFAR100Dataset",
    "STL10Dataset",
    "read_class_list",
    "index_class_folders",
    "list_class_folders",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# What PIL raises for unreadable, truncated or malformed files (UnidentifiedImageError is an
# OSError; some plugins raise SyntaxError/ValueError/struct.error on broken headers or chunks).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


def _open_rgb(path: PathLike) -> Image.Image | None:
    """Decode ``path`` fully into an RGB PIL image; ``None`` (logged at debug level) if unreadable.

    Truncated files count as unreadable unless the caller has set
    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True``, in which case PIL pads them instead.
    """
    try:
        with Image.open(path) as img:
            # convert() forces the full decode inside the try, so truncation is caught here.
            return img.convert("RGB")
    except _DECODE_ERRORS as exc:
        logger.debug("skipping unreadable image %s: %s: %s", path, type(exc).__name__, exc)
        return None


def _normalize_extensions(extensions: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    exts = tuple(str(e).lower() for e in extensions)
    if not exts or not all(exts):
        raise ValueError(f"extensions must be a non-empty sequence of file suffixes like '.jpg', got {extensions!r}")
    return exts


def _existing_dir(path: PathLike, what: str, layout: str) -> Path:
    """Return ``path`` as a Path, or raise FileNotFoundError explaining the expected ``layout``."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(
            f"{what} {str(p)!r} does not exist or is not a directory (datasets are never downloaded).\n"
            f"Expected layout:\n{layout}"
        )
    return p


def _find_data_dir(root: PathLike, subdir: str, marker: str, what: str, layout: str) -> Path:
    """Locate ``root/subdir`` (the archive's own folder), also accepting ``root`` being that folder."""
    base = _existing_dir(root, f"{what} root", layout)
    if (base / subdir).is_dir():
        return base / subdir
    if (base / marker).exists():
        return base
    raise FileNotFoundError(
        f"{what}: neither {str(base / subdir)!r} nor {str(base / marker)!r} exists.\nExpected layout:\n{layout}"
    )


def _require_file(path: Path, what: str, layout: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {str(path)!r} is missing.\nExpected layout:\n{layout}")
    return path


def _preview(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(repr(n) for n in list(names)[:limit])
    return shown + (f", ... ({len(names)} in total)" if len(names) > limit else "")


def list_class_folders(directory: PathLike) -> list[str]:
    """Sorted names of the sub-directories of ``directory``, hidden ones (``.cache`` etc.) excluded."""
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def index_class_folders(
    image_dir: PathLike,
    folder_to_label: dict[str, int],
    extensions: tuple[str, ...],
    relative_to: PathLike,
    desc: str = "indexing",
) -> tuple[list[str], list[int], list[str]]:
    """Walk ``image_dir/<folder>/**`` for every folder of ``folder_to_label``, in the dict's order.

    Returns ``(files, labels, empty_folders)``: image paths relative to ``relative_to`` (POSIX
    separators, sorted within each folder), their integer labels, and the folders that held no file
    with one of ``extensions``.
    """
    prefix = os.path.join(str(Path(relative_to).expanduser()), "")
    files: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    for folder, label in tqdm(folder_to_label.items(), desc=desc, unit="class", leave=False):
        found = make_dataset(str(image_dir), {folder: label}, extensions=extensions, allow_empty=True)
        if not found:
            empty.append(folder)
        for path, _ in found:
            rel = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, prefix)
            files.append(Path(rel).as_posix())
            labels.append(label)
    return files, labels, empty


def read_class_list(path: PathLike) -> dict[str, str]:
    """Read a class-subset file: one class id (e.g. a WordNet id) per line, first token only.

    Blank lines and ``#`` comments are ignored; text after the id (SCAN's files carry the human
    readable name there) is kept as the description. Returns ``{class_id: description}`` in file
    order; a duplicated id or an empty list raises ValueError.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(
            f"class list file {str(p)!r} does not exist; expected a text file with one class id per line, "
            "e.g.\n  n01558993 robin, American robin\n  n01601694  # comment\n"
        )
    entries: dict[str, str] = {}
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            content = line.split("#", 1)[0].strip()
            if not content:
                continue
            parts = content.split(None, 1)
            class_id, description = parts[0], (parts[1].strip() if len(parts) > 1 else "")
            if class_id in entries:
                raise ValueError(f"class list {str(p)!r} line {lineno}: class {class_id!r} is listed twice")
            entries[class_id] = description
    if not entries:
        raise ValueError(f"class list {str(p)!r} contains no class ids (only blank or comment lines)")
    return entries


class ImageDataset(Dataset):
    """Base of every benchmark dataset: ``(image | None, label, index)`` items plus metadata.

    Subclasses set ``name``, ``split``, ``classes``, ``targets`` (int64, one label per sample, -1
    for unlabeled samples), ``transform`` and implement ``_load_image(i)`` (RGB PIL image or None)
    and ``sample_id(i)``.
    """

    name: str
    split: str
    classes: list[str]
    targets: np.ndarray
    transform: Callable[[Image.Image], Any] | None

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def _index(self, index: int) -> int:
        i = int(index)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} is out of range for {self.name!r} split {self.split!r} with {n} samples")
        return i

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        i = self._index(index)
        image = self._load_image(i)
        # The transform runs outside the decode error handling on purpose: a bug in a transform
        # must fail loudly rather than silently turn every sample into a "corrupt" one.
        if image is not None and self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[i]), i

    def _load_image(self, i: int) -> Image.Image | None:
        raise NotImplementedError

    def sample_id(self, index: int) -> str:
        """Stable identifier of sample ``index`` (relative path or ``"<file>:<index>"``)."""
        raise NotImplementedError

    def data_files(self) -> Iterator[tuple[str, str]]:
        """(name relative to ``root``, absolute path) of every file whose bytes decide the pixels, in a fixed
        order; the feature cache keys its entries on their sizes and times (or bytes). Lazy: ImageNet has 1.28M."""
        return iter(())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, "
            f"samples={len(self)}, classes={len(self.classes)})"
        )


class FileImageDataset(ImageDataset):
    """Base for datasets of one image file per sample, stored as paths relative to ``root``."""

    root: Path

    def _set_files(self, files: Sequence[str], labels: Sequence[int]) -> None:
        # Byte-string numpy array rather than a list of str: DataLoader workers forked from this
        # process would otherwise duplicate the list page by page through refcount updates.
        self._files = np.array([f.encode("utf-8") for f in files], dtype=np.bytes_)
        self.targets = np.asarray(labels, dtype=np.int64)

    def sample_id(self, index: int) -> str:
        """Path of sample ``index`` relative to ``root``, with ``/`` separators."""
        return self._files[self._index(index)].decode("utf-8")

    def path(self, index: int) -> Path:
        """Absolute path of the image file of sample ``index``."""
        return self.root / self.sample_id(index)

    def data_files(self) -> Iterator[tuple[str, str]]:
        prefix = os.path.join(str(self.root), "")
        for f in self._files:
            rel = f.decode("utf-8")
            yield rel, prefix + rel

    def _load_image(self, i: int) -> Image.Image | None:
        return _open_rgb(self.root / self._files[i].decode("utf-8"))


_FOLDER_LAYOUT = """\
  <root>/                      (or <root>/<split>/ when split is given)
      <class_a>/
          img_0001.jpg
          img_0002.png
      <class_b>/
          img_0003.jpg"""


class ImageFolderDataset(FileImageDataset):
    """Generic class-per-folder dataset: ``root/<class>/<img>`` or ``root/<split>/<class>/<img>``.

    ``classes`` defaults to every (non-hidden) sub-folder in sorted order; an explicit list selects
    a subset and fixes the label order (label ``k`` = ``classes[k]``). Files are matched by
    case-insensitive suffix (``extensions``) and may sit in nested folders below their class folder.
    ``split`` is ``"all"`` when no split folder is used. ``sample_id`` is the path relative to ``root``.
    """

    def __init__(
        self,
        root: PathLike,
        split: str | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
        classes: Sequence[str] | None = None,
        extensions: str | Sequence[str] = IMG_EXTENSIONS,
        name: str | None = None,
    ) -> None:
        self._init_folder(root, split, transform, classes, extensions, name, _FOLDER_LAYOUT)

    def _init_folder(
        self,
        root: PathLike,
        split: str | None,
        transform: Callable[[Image.Image], Any] | None,
        classes: Sequence[str] | None,
        extensions: str | Sequence[str],
        name: str | None,
        layout: str,
    ) -> None:
        self.root = _existing_dir(root, "root", layout)
        self.transform = transform
        self.extensions = _normalize_extensions(extensions)
        self.name = name if name is not None else self.root.name
        self.split = "all" if split is None else str(split)
        image_dir = self.root
        if split is not None:
            image_dir = self.root / split
            if not image_dir.is_dir():
                available = list_class_folders(self.root)
                raise FileNotFoundError(
                    f"split {split!r} not found: {str(image_dir)!r} is not a directory "
                    f"(folders under root: {_preview(available) or 'none'}).\nExpected layout:\n{layout}"
                )
        self._check_layout(image_dir, layout)
        found = list_class_folders(image_dir)
        if not found:
            raise FileNotFoundError(f"no class folders found in {str(image_dir)!r}.\nExpected layout:\n{layout}")

        if classes is None:
            self.classes = found
        else:
            if isinstance(classes, str):
                raise ValueError(f"classes must be a sequence of class folder names, got the string {classes!r}")
            self.classes = [str(c) for c in classes]
            if not self.classes:
                raise ValueError("classes must list at least one class folder name, got an empty sequence")
            duplicates = sorted({c for c in self.classes if self.classes.count(c) > 1})
            if duplicates:
                raise ValueError(f"classes lists these names more than once: {_preview(duplicates)}")
            unknown = sorted(set(self.classes) - set(found))
            if unknown:
                raise ValueError(
                    f"classes contains {len(unknown)} name(s) with no folder in {str(image_dir)!r}: "
                    f"{_preview(unknown)}; available class folders: {_preview(found)}"
                )

        files, labels, empty = index_class_folders(
            image_dir,
            {c: k for k, c in enumerate(self.classes)},
            self.extensions,
            relative_to=self.root,
            desc=f"indexing {self.name}/{self.split}",
        )
        if empty:
            raise FileNotFoundError(
                f"{len(empty)} class folder(s) in {str(image_dir)!r} contain no image with extension "
                f"{', '.join(self.extensions)}: {_preview(empty)}"
            )
        self._set_files(files, labels)

    def _check_layout(self, image_dir: Path, layout: str) -> None:
        """Hook for subclasses to reject a recognisably wrong layout with a specific message."""


_IMAGENET_LAYOUT = """\
  <root>/
      train/
          n01440764/
              n01440764_10026.JPEG
          n01443537/ ...
      val/
          n01440764/
              ILSVRC2012_val_00000293.JPEG
          n01443537/ ..."""


class ImageNetDataset(ImageFolderDataset):
    """ImageNet-1k (ILSVRC2012) in class-folder layout: ``root/{train,val}/<wnid>/*.JPEG``.

    ``subset`` restricts the classes: a path to a class-list file (one wnid per line, ``#``
    comments allowed, text after the wnid kept in ``descriptions``; SCAN's ImageNet-50/100/200
    lists use this format) or a sequence of wnids. Labels follow the **sorted wnid order** of the
    selected classes, so without a subset they equal the standard ImageNet-1k class indices, and
    with one they are re-indexed ``0..len(subset)-1``; ``classes`` holds the wnids in label order.
    The validation split must already be sorted into wnid folders.
    """

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        transform: Callable[[Image.Image], Any] | None = None,
        subset: PathLike | Sequence[str] | None = None,
        extensions: str | Sequence[str] = IMG_EXTENSIONS,
        name: str | None = None,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val' for ImageNet, got {split!r}")
        self.descriptions: dict[str, str] = {}
        classes: list[str] | None = None
        if subset is not None:
            if isinstance(subset, (str, os.PathLike)):
                self.descriptions = read_class_list(subset)
                wnids = list(self.descriptions)
            else:
                wnids = [str(w) for w in subset]
                if len(set(wnids)) != len(wnids):
                    raise ValueError("subset lists some wnids more than once")
            classes = sorted(wnids)
        if name is None:
            name = "imagenet" if classes is None else f"imagenet{len(classes)}"
        self._init_folder(root, split, transform, classes, extensions, name, _IMAGENET_LAYOUT)

    def _check_layout(self, image_dir: Path, layout: str) -> None:
        if list_class_folders(image_dir):
            return
        with os.scandir(image_dir) as entries:
            flat = sum(1 for e in entries if e.is_file() and e.name.lower().endswith(self.extensions))
        if flat:
            raise FileNotFoundError(
                f"{str(image_dir)!r} holds {flat} images directly but no wnid folders: the ImageNet "
                f"{self.split} split must be in class-folder layout. The official validation archive is "
                "flat; move each image into val/<wnid>/ using the devkit ground truth "
                "(e.g. LOC_val_solution.csv) before using it.\n"
                f"Expected layout:\n{layout}"
            )


class _ArrayImageDataset(ImageDataset):
    """Base for datasets stored as uint8 image arrays spread over one or more files.

    Subclasses fill ``_sources`` (file names) and ``_bounds`` (cumulative sample counts per file)
    so that ``sample_id(i)`` can say ``"<file>:<index within file>"``, and implement ``_array(i)``
    returning an HxWx3 uint8 array.
    """

    _sources: list[str]
    _bounds: np.ndarray

    def sample_id(self, index: int) -> str:
        """``"<file>:<index within that file>"`` of sample ``index``."""
        i = self._index(index)
        f = int(np.searchsorted(self._bounds, i, side="right"))
        start = int(self._bounds[f - 1]) if f > 0 else 0
        return f"{self._sources[f]}:{i - start}"

    def _array(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def data_files(self) -> Iterator[tuple[str, str]]:
        return ((name, str(Path(self.root) / name)) for name in self._sources)

    def _load_image(self, i: int) -> Image.Image | None:
        return Image.fromarray(np.ascontiguousarray(self._array(i)))


def _unpickle(path: Path) -> dict[str, Any]:
    """Load a CIFAR python-version pickle (Python 2 era), with keys decoded to str.

    Pickles can run code when loaded: only use CIFAR archives from a trusted source.
    """
    with open(path, "rb") as f:
        try:
            obj = pickle.load(f, encoding="latin1")
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise ValueError(f"{str(path)!r} is not a readable CIFAR pickle: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{str(path)!r} should hold a pickled dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _as_str_list(values: Sequence[Any]) -> list[str]:
    return [v.decode("latin1") if isinstance(v, bytes) else str(v) for v in values]


class _CIFARBase(_ArrayImageDataset):
    """Shared loader for the python versions of CIFAR-10 and CIFAR-100 (32x32 RGB, in RAM)."""

    _archive_dir: str
    _meta_file: str
    _split_files: dict[str, list[str]]
    _layout: str
    _title: str

    def _load_cifar(self, root: PathLike, split: str, label_key: str, names_key: str) -> None:
        if split not in self._split_files:
            raise ValueError(f"split must be one of {sorted(self._split_files)} for {self._title}, got {split!r}")
        data_dir = _find_data_dir(root, self._archive_dir, self._meta_file, self._title, self._layout)
        self.root = data_dir
        meta = _unpickle(_require_file(data_dir / self._meta_file, self._title, self._layout))
        if names_key not in meta:
            raise ValueError(f"{str(data_dir / self._meta_file)!r} has no {names_key!r} entry (keys: {sorted(meta)})")
        self.classes = _as_str_list(meta[names_key])

        images, labels, counts = [], [], []
        for fname in self._split_files[split]:
            path = _require_file(data_dir / fname, self._title, self._layout)
            batch = _unpickle(path)
            for key in ("data", label_key):
                if key not in batch:
                    raise ValueError(f"{str(path)!r} has no {key!r} entry (keys: {sorted(batch)})")
            data = np.asarray(batch["data"])
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise ValueError(
                    f"{str(path)!r}: 'data' must be an (N, 3072) uint8 array, got {data.shape} {data.dtype}"
                )
            y = np.asarray(batch[label_key], dtype=np.int64)
            if y.shape != (data.shape[0],):
                raise ValueError(f"{str(path)!r}: {len(y)} {label_key!r} for {data.shape[0]} images")
            if y.size and (y.min() < 0 or y.max() >= len(self.classes)):
                raise ValueError(
                    f"{str(path)!r}: {label_key!r} outside 0..{len(self.classes) - 1} "
                    f"(the number of {names_key!r})"
                )
            # Rows are channel-major (1024 R, 1024 G, 1024 B, each row-major): CHW -> HWC.
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(y)
            counts.append(data.shape[0])
        self._images = np.ascontiguousarray(np.concatenate(images))
        self.targets = np.concatenate(labels)
        self._sources = list(self._split_files[split])
        self._bounds = np.cumsum(counts)

    def _array(self, i: int) -> np.ndarray:
        return self._images[i]


_CIFAR10_LAYOUT = """\
  <root>/cifar-10-batches-py/      (python version, cifar-10-python.tar.gz extracted)
      batches.meta
      data_batch_1 ... data_batch_5
      test_batch"""


class CIFAR10Dataset(_CIFARBase):
    """CIFAR-10, python version: ``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``.

    Splits ``train`` (data_batch_1..5, 50k) and ``test`` (10k); ``root`` may also be the
    ``cifar-10-batches-py`` folder itself. Images are 32x32 RGB held in RAM; ``sample_id`` is
    ``"<batch file>:<index in file>"``.
    """

    name = "cifar10"
    _archive_dir = "cifar-10-batches-py"
    _meta_file = "batches.meta"
    _split_files = {"train": [f"data_batch_{k}" for k in range(1, 6)], "test": ["test_batch"]}
    _layout = _CIFAR10_LAYOUT
    _title = "CIFAR-10"

    def __init__(
        self, root: PathLike, split: str = "train", transform: Callable[[Image.Image], Any] | None = None
    ) -> None:
        self.split = split
        self.transform = transform
        self._load_cifar(root, split, label_key="labels", names_key="label_names")


_CIFAR100_LAYOUT = """\
  <root>/cifar-100-python/         (python version, cifar-100-python.tar.gz extracted)
      meta
      train
      test"""


class CIFAR100Dataset(_CIFARBase):
    """CIFAR-100, python version: ``root/cifar-100-python/{train,test,meta}``.

    ``label_type="coarse"`` (default) gives CIFAR-100-20, the 20-superclass benchmark used for
    clustering (``name`` "cifar100-20", classes from ``coarse_label_names``); ``"fine"`` gives
    the 100 classes (``name`` "cifar100"). ``sample_id`` is ``"<file>:<index>"``.
    """

    _archive_dir = "cifar-100-python"
    _meta_file = "meta"
    _split_files = {"train": ["train"], "test": ["test"]}
    _layout = _CIFAR100_LAYOUT
    _title = "CIFAR-100"

    def __init__(
        self,
        root: PathLike,
        split: str = "train",
        transform: Callable[[Image.Image], Any] | None = None,
        label_type: str = "coarse",
    ) -> None:
        if label_type not in ("coarse", "fine"):
            raise ValueError(
                f"label_type must be 'coarse' (20 superclasses) or 'fine' (100 classes), got {label_type!r}"
            )
        self.name = "cifar100-20" if label_type == "coarse" else "cifar100"
        self.label_type = label_type
        self.split = split
        self.transform = transform
        self._load_cifar(root, split, label_key=f"{label_type}_labels", names_key=f"{label_type}_label_names")


_STL10_LAYOUT = """\
  <root>/stl10_binary/             (binary version, stl10_binary.tar.gz extracted)
      class_names.txt
      train_X.bin  train_y.bin
      test_X.bin   test_y.bin
      unlabeled_X.bin              (only needed for split='unlabeled')"""

_STL10_IMAGE_BYTES = 3 * 96 * 96


class STL10Dataset(_ArrayImageDataset):
    """STL-10, binary version: ``root/stl10_binary/{split}_X.bin`` (+ ``{split}_y.bin``).

    Splits ``train`` (5k), ``test`` (8k) and ``unlabeled`` (100k, every target -1). Images are
    read through ``np.memmap`` one at a time, never loaded whole; labels 1..10 on disk become
    0..9. ``sample_id`` is ``"<split>_X.bin:<index>"``.
    """

    name = "stl10"
    _splits = ("train", "test", "unlabeled")

    def __init__(
        self, root: PathLike, split: str = "train", transform: Callable[[Image.Image], Any] | None = None
    ) -> None:
        if split not in self._splits:
            raise ValueError(f"split must be one of {list(self._splits)} for STL-10, got {split!r}")
        self.split = split
        self.transform = transform
        data_dir = _find_data_dir(root, "stl10_binary", "class_names.txt", "STL-10", _STL10_LAYOUT)
        self.root = data_dir
        names_path = _require_file(data_dir / "class_names.txt", "STL-10", _STL10_LAYOUT)
        self.classes = [line.strip() for line in names_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not self.classes:
            raise ValueError(f"{str(names_path)!r} lists no class names")

        self._images_path = _require_file(data_dir / f"{split}_X.bin", "STL-10", _STL10_LAYOUT)
        size = self._images_path.stat().st_size
        if size == 0 or size % _STL10_IMAGE_BYTES:
            raise ValueError(
                f"{str(self._images_path)!r} has {size} bytes, not a positive multiple of "
                f"{_STL10_IMAGE_BYTES} (3x96x96 uint8 per image): the file is truncated or not STL-10"
            )
        n = size // _STL10_IMAGE_BYTES
        if split == "unlabeled":
            self.targets = np.full(n, -1, dtype=np.int64)
        else:
            labels_path = _require_file(data_dir / f"{split}_y.bin", "STL-10", _STL10_LAYOUT)
            y = np.fromfile(labels_path, dtype=np.uint8).astype(np.int64)
            if y.shape != (n,):
                raise ValueError(
                    f"{str(labels_path)!r} holds {y.size} labels for {n} images in {self._images_path.name}"
                )
            if y.size and (y.min() < 1 or y.max() > len(self.classes)):
                raise ValueError(
                    f"{str(labels_path)!r}: labels must lie in 1..{len(self.classes)}, found {y.min()}..{y.max()}"
                )
            self.targets = y - 1
        self._sources = [self._images_path.name]
        self._bounds = np.array([n])
        self._memmap: np.ndarray | None = None

    def _images(self) -> np.ndarray:
        # Opened lazily (and dropped when pickled, see __getstate__) so each DataLoader worker maps
        # the file itself instead of receiving a pickled copy of the whole array.
        if self._memmap is None:
            self._memmap = np.memmap(self._images_path, dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96)
        return self._memmap

    def _array(self, i: int) -> np.ndarray:
        # Each channel is stored column-major (index = col * 96 + row): (C, W, H) -> (H, W, C).
        return self._images()[i].transpose(2, 1, 0)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_memmap"] = None
        return state


def _image_folder(root: PathLike, split: str, transform: Callable | None = None, **options: Any) -> ImageFolderDataset:
    # The registry always passes a split; "all" (its default) means the unsplit root/<class>/ layout.
    return ImageFolderDataset(root, None if split == "all" else split, transform, **options)


def _cifar100_fine(root: PathLike, split: str, transform: Callable | None = None, **options: Any) -> CIFAR100Dataset:
    return CIFAR100Dataset(root, split, transform, label_type="fine", **options)


def _register() -> None:
    from . import register_dataset

    # Defaults are the splits clustering benchmarks report on (ImageNet val, CIFAR/STL test).
    register_dataset("imagefolder", _image_folder, needs_root=True, default_split="all")
    register_dataset("imagenet", ImageNetDataset, needs_root=True, default_split="val")
    register_dataset("cifar10", CIFAR10Dataset, needs_root=True, default_split="test")
    register_dataset("cifar100-20", CIFAR100Dataset, needs_root=True, default_split="test")
    register_dataset("cifar100", _cifar100_fine, needs_root=True, default_split="test")
    register_dataset("stl10", STL10Dataset, needs_root=True, default_split="test")


_register()
