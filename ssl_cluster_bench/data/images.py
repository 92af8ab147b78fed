"""Image datasets read from local roots, in the form the extraction engine consumes.

Every dataset here is a ``torch.utils.data.Dataset`` whose ``__getitem__(i)`` returns
``(image, label, i)``: ``image`` is ``transform(PIL RGB image)`` (the PIL image itself when
``transform`` is None) or ``None`` when the file cannot be decoded, so one corrupt JPEG costs one
sample instead of the whole run; the engine's collate drops the ``None`` items and reports
``sample_id(i)`` for each. Labels are available without opening any image via ``targets``.

Image files are decoded upright (EXIF orientation) to 8-bit RGB with high bit depths scaled, not
clipped, and transparency composited on white (:func:`_to_rgb8`). Folders are walked with symlinks
followed but each real folder and file listed once (:func:`index_class_folders`); a file whose
name is not valid UTF-8 is kept as a position, skipped like a corrupt image and listed with an
escaped id (``caf\\xe9.png``), so every id can go through JSON and CSV.

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
from PIL import ExifTags, Image, ImageOps
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS
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
    "loose_images",
    "ArrayImageDataset",
    "existing_dir",
    "normalize_extensions",
    "preview_names",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# What PIL raises for unreadable, truncated or malformed files (UnidentifiedImageError is an
# OSError; some plugins raise SyntaxError/ValueError/struct.error on broken headers or chunks).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


def _open_rgb(path: PathLike) -> Image.Image | None:
    """Decode ``path`` fully into an 8-bit RGB PIL image; ``None`` (logged at debug level) if unreadable.

    The image is turned upright by its EXIF orientation, then brought to 8-bit RGB by
    :func:`_to_rgb8` (high bit depths scaled, not clipped; transparency composited on white).
    Truncated files count as unreadable unless the caller has set
    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True``, in which case PIL pads them instead.
    """
    try:
        with Image.open(path) as img:
            if _exif_orientation(img, path) != 1:
                img = ImageOps.exif_transpose(img)
            # The conversion forces the full decode inside the try, so truncation is caught here.
            return _to_rgb8(img)
    except _DECODE_ERRORS as exc:
        logger.debug("skipping unreadable image %s: %s: %s", path, type(exc).__name__, exc)
        return None


def _exif_orientation(img: Image.Image, path: PathLike) -> int:
    """EXIF orientation tag (1 = upright); a malformed EXIF block costs the rotation, not the image."""
    try:
        return int(img.getexif().get(ExifTags.Base.Orientation, 1) or 1)
    except (*_DECODE_ERRORS, KeyError, TypeError) as exc:
        logger.debug("ignoring unreadable EXIF data of %s: %s: %s", path, type(exc).__name__, exc)
        return 1


def _to_rgb8(img: Image.Image) -> Image.Image:
    """``img`` as 8-bit RGB, every mode scaled by its own range convention.

    - 16-bit modes (``I;16``, ``I;16B``, ``I;16L``, ...): divided by 257, rounded (65535 -> 255),
      where PIL's own ``convert`` would clip every value above 255 to white.
    - ``I`` (32-bit integer; how PIL opens 16-bit PGM and some 16-bit PNG/TIFF files): read as
      16-bit data, i.e. clipped to 0..65535 and divided by 257.
    - ``F`` (32-bit float), by the range of its finite values: within [0, 1] -> x 255; within
      [0, 255] -> taken as 8-bit values; within [0, 65535] -> divided by 257; anything else (negative
      or larger values) -> the image's own min..max stretched to 0..255. NaN counts as the minimum.
    - Transparency (``RGBA``, ``LA``, ``PA``, palette or ``L``/``RGB`` with a transparent colour) is
      composited on a white background, as a browser shows it on a white page, rather than dropped
      (dropping shows whatever colour the transparent pixels happen to store, often black).
    - Everything else (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ...) goes through PIL's ``convert``;
      embedded ICC profiles are not applied (as in torchvision's loader).
    Grey images come back with the grey value in all three channels.
    """
    mode = img.mode
    if mode.startswith("I") or mode.startswith("F"):
        values = np.asarray(img)
        if mode.startswith("I;16") or mode == "I":
            grey = (np.clip(values.astype(np.int64), 0, 65535) + 128) // 257
        else:
            grey = _float_to_8bit(values.astype(np.float64))
        return Image.fromarray(grey.astype(np.uint8), mode="L").convert("RGB")
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def _float_to_8bit(values: np.ndarray) -> np.ndarray:
    """Float pixels to 0..255 by the convention their range reveals (see :func:`_to_rgb8`)."""
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
    if low >= 0 and high <= 1:
        scaled = values * 255
    elif low >= 0 and high <= 255:
        scaled = values
    elif low >= 0 and high <= 65535:
        scaled = values / 257
    else:  # a constant image out of every range comes back black
        scaled = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    return np.clip(np.rint(scaled), 0, 255)


def normalize_extensions(extensions: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    exts = tuple(str(e).lower() for e in extensions)
    if not exts or not all(exts):
        raise ValueError(f"extensions must be a non-empty sequence of file suffixes like '.jpg', got {extensions!r}")
    return exts


def existing_dir(path: PathLike, what: str, layout: str) -> Path:
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
    base = existing_dir(root, f"{what} root", layout)
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


def preview_names(names: Sequence[str], limit: int = 8) -> str:
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
    separators, sorted within each folder as torchvision's ``make_dataset`` sorts them), their
    integer labels, and the folders that held no file with one of ``extensions``.

    Symlinked folders are followed, but every real folder (device, inode) is walked once: a link
    back to ``image_dir``, to one of its ancestors or to a folder already walked (a symlink loop
    such as ``cat/loop -> ..``) is not followed again. The whole tree without links is walked
    before any link, so a file reached under several names (a symlink or hard link to a file
    already listed) is counted once, under its real name when that is in the tree (else under the
    first link in walking order). Folders that cannot be listed are logged and left out.
    """
    image_dir = Path(image_dir).expanduser()
    prefix = os.path.join(str(Path(relative_to).expanduser()), "")
    folders = list(folder_to_label)
    walker = _Walker(tuple(e.lower() for e in extensions), image_dir)
    # datasets are built deep inside every command with no progress flag: `sscb -q` says so through SSCB_QUIET
    quiet = os.environ.get("SSCB_QUIET") == "1"
    for position, folder in enumerate(tqdm(folders, desc=desc, unit="class", leave=False, disable=quiet)):
        walker.walk_class(os.path.join(str(image_dir), folder), position)
    walker.follow_links()
    found = walker.unique_files()
    walker.warn_dropped(prefix)

    files: list[str] = []
    labels: list[int] = []
    for path, position in found:
        rel = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, prefix)
        files.append(Path(rel).as_posix())
        labels.append(folder_to_label[folders[position]])
    present = {position for _, position in found}
    empty = [folder for position, folder in enumerate(folders) if position not in present]
    return files, labels, empty


def _show(path: str, prefix: str = "") -> str:
    """``path`` (relative to ``prefix`` when under it) quoted for a message, whatever bytes its name holds."""
    rel = path[len(prefix):] if prefix and path.startswith(prefix) else path
    # quoted by hand: repr() would double the backslash of an escaped byte (\\xff)
    return "'" + os.fsencode(rel).decode("utf-8", "backslashreplace") + "'"


class _Walker:
    """The file listing of :func:`index_class_folders`: class trees first, then the symlinked folders."""

    def __init__(self, extensions: tuple[str, ...], image_dir: Path) -> None:
        self.extensions = extensions
        # A link to the root or above it would list the whole dataset (or disk) again under one class.
        self.visited: set[tuple[int, int]] = set()
        for folder in (image_dir, *Path(os.path.abspath(image_dir)).parents, *image_dir.resolve().parents):
            try:
                st = folder.stat()
            except OSError:
                continue
            self.visited.add((st.st_dev, st.st_ino))
        self.links: list[tuple[str, int]] = []  # symlinked folders met, walked after every real tree
        self.not_followed: list[str] = []
        self.unlisted: list[str] = []
        # (class position, folder, file name, identity or None, reached through a link)
        self.records: list[tuple[int, str, str, tuple[int, int] | None, bool]] = []
        self.duplicates: list[tuple[str, str]] = []

    def walk_class(self, start: str, label: int) -> None:
        if os.path.islink(start):
            self.links.append((start, label))
        elif os.path.isdir(start):
            self._walk(start, label, through_link=False)

    def follow_links(self) -> None:
        while self.links:
            start, label = self.links.pop(0)
            self._walk(start, label, through_link=True)

    def _walk(self, start: str, label: int, through_link: bool) -> None:
        try:
            st = os.stat(start)
        except OSError as exc:  # a dangling folder link
            self.unlisted.append(f"{start} ({exc.strerror or exc})")
            return
        if (st.st_dev, st.st_ino) in self.visited:
            self.not_followed.append(start)
            return
        self.visited.add((st.st_dev, st.st_ino))
        stack = [(start, st.st_dev)]
        while stack:
            folder, device = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                self.unlisted.append(f"{folder} ({exc.strerror or exc})")
                continue
            subfolders = []
            for entry in entries:
                try:
                    is_link, is_dir = entry.is_symlink(), entry.is_dir()
                except OSError:
                    is_link, is_dir = False, False
                if is_dir and is_link:
                    self.links.append((entry.path, label))
                elif is_dir:
                    try:
                        sub = entry.stat(follow_symlinks=False)
                    except OSError as exc:
                        self.unlisted.append(f"{entry.path} ({exc.strerror or exc})")
                        continue
                    if (sub.st_dev, sub.st_ino) not in self.visited:
                        self.visited.add((sub.st_dev, sub.st_ino))
                        subfolders.append((entry.path, sub.st_dev))
                elif entry.name.lower().endswith(self.extensions):
                    identity: tuple[int, int] | None = (device, entry.inode())
                    if is_link:
                        try:
                            target = entry.stat()
                            identity = (target.st_dev, target.st_ino)
                        except OSError:  # dangling: listed, then reported unreadable at extraction
                            identity = None
                    self.records.append((label, folder, entry.name, identity, through_link or is_link))
            stack.extend(reversed(subfolders))

    def unique_files(self) -> list[tuple[str, int]]:
        """``(path, class position)`` in make_dataset's order (class, folder path, name), each real file once."""
        self.records.sort(key=lambda r: r[:3])
        keep: dict[tuple[int, int], int] = {}
        for i, (_, _, _, identity, through_link) in enumerate(self.records):
            if identity is None:
                continue
            j = keep.get(identity)
            if j is None or (self.records[j][4] and not through_link):
                keep[identity] = i
        chosen = {i for i, r in enumerate(self.records) if r[3] is None or keep[r[3]] == i}
        out = []
        for i, (label, folder, name, identity, _) in enumerate(self.records):
            if i in chosen:
                out.append((os.path.join(folder, name), label))
            else:
                kept = self.records[keep[identity]]
                self.duplicates.append((os.path.join(folder, name), os.path.join(kept[1], kept[2])))
        return out

    def warn_dropped(self, prefix: str) -> None:
        if self.not_followed:
            logger.warning("%d symlinked folder(s) lead to a folder already listed (a loop or a second link) and "
                           "were not followed again, e.g. %s", len(self.not_followed),
                           _show(self.not_followed[0], prefix))
        if self.duplicates:
            twin, kept = self.duplicates[0]
            logger.warning("%d file(s) are a second name (symlink or hard link) of an image already listed and "
                           "count once, e.g. %s is %s", len(self.duplicates), _show(twin, prefix),
                           _show(kept, prefix))
        if self.unlisted:
            logger.warning("%d folder(s) could not be listed and their images are left out, e.g. %s",
                           len(self.unlisted), _show(self.unlisted[0], prefix))


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
        # os.fsencode keeps a name's raw bytes, so names that are not valid UTF-8 survive too.
        self._files = np.array([os.fsencode(f) for f in files], dtype=np.bytes_)
        self.targets = np.asarray(labels, dtype=np.int64)
        undecodable = [i for i, f in enumerate(self._files) if not _is_utf8(f)]
        if undecodable:
            logger.warning(
                "%d file(s) under %s have names that are not valid UTF-8 and are skipped like unreadable "
                "images (listed in the cache manifest; rename them to UTF-8, e.g. with convmv, to include "
                "them), e.g. '%s'", len(undecodable), self.root, self.sample_id(undecodable[0]))

    def sample_id(self, index: int) -> str:
        """Path of sample ``index`` relative to ``root``, with ``/`` separators.

        Bytes of a name that are not valid UTF-8 are written as ``\\xNN``, so every id can go
        through JSON and CSV; such files are never decoded (see ``_load_image``).
        """
        return self._files[self._index(index)].decode("utf-8", "backslashreplace")

    def path(self, index: int) -> Path:
        """Absolute path of the image file of sample ``index`` (its real name, whatever its bytes)."""
        return self.root / os.fsdecode(self._files[self._index(index)])

    def data_files(self) -> Iterator[tuple[str, str]]:
        prefix = os.path.join(str(self.root), "")
        for f in self._files:
            # the escaped spelling names the file in the key; fsdecode keeps its real bytes for the stat
            yield f.decode("utf-8", "backslashreplace"), prefix + os.fsdecode(f)

    def _load_image(self, i: int) -> Image.Image | None:
        name = self._files[i]
        if not _is_utf8(name):
            # Its id is an escaped spelling that no file has: skipped like a corrupt image, so the
            # manifest and the leaderboard only ever name files that can be found again.
            logger.debug("skipping %s: its name is not valid UTF-8", self.sample_id(i))
            return None
        return _open_rgb(self.root / name.decode("utf-8"))


def loose_images(folder: Path, extensions: tuple[str, ...]) -> list[str]:
    """Paths of the image files directly in ``folder`` (hidden ones left out), sorted by name."""
    with os.scandir(folder) as entries:
        return sorted(e.path for e in entries if not e.name.startswith(".") and e.name.lower().endswith(extensions)
                      and e.is_file())


def _is_utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_FOLDER_LAYOUT = """\
  <root>/                      (or <root>/<split>/ when split is given)
      <class_a>/
          img_0001.jpg
          img_0002.png
      <class_b>/
          img_0003.jpg
  or, without labels, the images directly in <root>/ (no class folders)"""


class ImageFolderDataset(FileImageDataset):
    """Generic class-per-folder dataset: ``root/<class>/<img>`` or ``root/<split>/<class>/<img>``; a folder that
    holds images but no class folders is an unlabelled dataset (``classes`` empty, every label -1).

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
        self.root = existing_dir(root, "root", layout)
        self.transform = transform
        self.extensions = normalize_extensions(extensions)
        self.name = name if name is not None else self.root.name
        self.split = "all" if split is None else str(split)
        image_dir = self.root
        if split is not None:
            image_dir = self.root / split
            if not image_dir.is_dir():
                available = list_class_folders(self.root)
                raise FileNotFoundError(
                    f"split {split!r} not found: {str(image_dir)!r} is not a directory "
                    f"(folders under root: {preview_names(available) or 'none'}).\nExpected layout:\n{layout}"
                )
        self._check_layout(image_dir, layout)
        found = list_class_folders(image_dir)
        if not found and classes is None:
            loose = loose_images(image_dir, self.extensions)
            if loose:
                # A folder of images without class folders is data without labels: clustered all the same (k given),
                # every label -1, so the label metrics are left empty instead of scored against one made-up class.
                self.classes = []
                self._set_files([os.path.relpath(f, self.root) for f in loose], [-1] * len(loose))
                return
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
                raise ValueError(f"classes lists these names more than once: {preview_names(duplicates)}")
            unknown = sorted(set(self.classes) - set(found))
            if unknown:
                raise ValueError(
                    f"classes contains {len(unknown)} name(s) with no folder in {str(image_dir)!r}: "
                    f"{preview_names(unknown)}; available class folders: {preview_names(found)}"
                )

        undecodable = [c for c in self.classes if not _is_utf8(os.fsencode(c))]
        if undecodable:
            # A class name goes into reports and leaderboards: one spelled with stray bytes cannot.
            raise ValueError(
                f"class folder {_show(os.path.join(str(image_dir), undecodable[0]))} has a name that is not valid "
                "UTF-8; rename it to UTF-8 (e.g. with convmv)"
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
                f"{', '.join(self.extensions)}: {preview_names(empty)}"
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


class ArrayImageDataset(ImageDataset):
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


class _CIFARBase(ArrayImageDataset):
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


class STL10Dataset(ArrayImageDataset):
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
    from .registry import register_dataset

    # Defaults are the splits clustering benchmarks report on (ImageNet val, CIFAR/STL test).
    register_dataset("imagefolder", _image_folder, needs_root=True, default_split="all")
    register_dataset("imagenet", ImageNetDataset, needs_root=True, default_split="val")
    register_dataset("cifar10", CIFAR10Dataset, needs_root=True, default_split="test")
    register_dataset("cifar100-20", CIFAR100Dataset, needs_root=True, default_split="test")
    register_dataset("cifar100", _cifar100_fine, needs_root=True, default_split="test")
    register_dataset("stl10", STL10Dataset, needs_root=True, default_split="test")


_register()
