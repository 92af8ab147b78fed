"""ObjectNet (test-only) from a local copy of the official release.

Layout: ``root/objectnet-1.0/images/<folder>/<file>.png`` (or ``root/images/...``) with the
release's ``mappings/folder_to_objectnet_label.json`` next to ``images/``. Items follow the
dataset protocol of :mod:`ssl_cluster_bench.data.images`; labels index the ObjectNet class names
sorted alphabetically. The 1-pixel border every ObjectNet image carries is cropped off before the
transform, as the dataset authors recommend.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from .images import (
    IMG_EXTENSIONS,
    FileImageDataset,
    PathLike,
    existing_dir,
    index_class_folders,
    list_class_folders,
    logger,
    normalize_extensions,
    preview_names,
)

__all__ = ["ObjectNetDataset", "MAPPING_FILE"]

MAPPING_FILE = "folder_to_objectnet_label.json"

_OBJECTNET_LAYOUT = """\
  <root>/objectnet-1.0/            (or these two folders directly under <root>)
      images/
          air_freshener/
              0a1b2c3d.png
          alarm_clock/ ...
      mappings/
          folder_to_objectnet_label.json   {"air_freshener": "Air freshener", ...}"""


class ObjectNetDataset(FileImageDataset):
    """ObjectNet images with their ObjectNet class labels (313 classes in the full release).

    ``classes`` are the distinct ObjectNet class names of the image folders present on disk,
    sorted by name; ``folder_to_label`` is the release's whole folder -> class-name mapping (kept for
    the ObjectNet -> ImageNet transfer protocol). ``border_crop`` removes the 1-pixel frame, so
    images shrink by 2 pixels in each dimension. ``sample_id`` is the path relative to ``root``.
    """

    name = "objectnet"

    def __init__(
        self,
        root: PathLike,
        split: str = "test",
        transform: Callable[[Image.Image], Any] | None = None,
        border_crop: bool = True,
        extensions: str | Sequence[str] = IMG_EXTENSIONS,
    ) -> None:
        if split != "test":
            raise ValueError(f"ObjectNet has a single split 'test', got split={split!r}")
        self.split = split
        self.transform = transform
        self.border_crop = bool(border_crop)
        self.extensions = normalize_extensions(extensions)
        self.root = existing_dir(root, "ObjectNet root", _OBJECTNET_LAYOUT)
        base = self.root / "objectnet-1.0" if (self.root / "objectnet-1.0" / "images").is_dir() else self.root
        image_dir = base / "images"
        if not image_dir.is_dir():
            raise FileNotFoundError(
                f"ObjectNet: neither {str(self.root / 'objectnet-1.0' / 'images')!r} nor {str(image_dir)!r} "
                f"is a directory.\nExpected layout:\n{_OBJECTNET_LAYOUT}"
            )
        mapping_path = base / "mappings" / MAPPING_FILE
        self.folder_to_label = self._read_mapping(mapping_path)

        folders = list_class_folders(image_dir)
        if not folders:
            raise FileNotFoundError(f"no image folders in {str(image_dir)!r}.\nExpected layout:\n{_OBJECTNET_LAYOUT}")
        unmapped = [f for f in folders if f not in self.folder_to_label]
        if unmapped:
            raise ValueError(
                f"{len(unmapped)} folder(s) in {str(image_dir)!r} have no entry in {str(mapping_path)!r}: "
                f"{preview_names(unmapped)}; is the mapping file from the same ObjectNet release?"
            )
        self.classes = sorted({self.folder_to_label[f] for f in folders})
        class_to_idx = self.class_to_idx
        files, labels, empty = index_class_folders(
            image_dir,
            {f: class_to_idx[self.folder_to_label[f]] for f in folders},
            self.extensions,
            relative_to=self.root,
            desc="indexing objectnet",
        )
        if empty:
            raise FileNotFoundError(
                f"{len(empty)} ObjectNet folder(s) in {str(image_dir)!r} contain no image with extension "
                f"{', '.join(self.extensions)}: {preview_names(empty)}"
            )
        self._set_files(files, labels)

    @staticmethod
    def _read_mapping(path: Path) -> dict[str, str]:
        if not path.is_file():
            raise FileNotFoundError(
                f"ObjectNet mapping file {str(path)!r} is missing; it ships with the dataset.\n"
                f"Expected layout:\n{_OBJECTNET_LAYOUT}"
            )
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{str(path)!r} is not valid JSON: {exc}") from exc
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
        ):
            raise ValueError(f"{str(path)!r} must be a JSON object mapping folder names to class names")
        return mapping

    def _load_image(self, i: int) -> Image.Image | None:
        image = super()._load_image(i)
        if image is None or not self.border_crop:
            return image
        width, height = image.size
        if width <= 2 or height <= 2:
            logger.debug(
                "skipping %s: %dx%d is too small for the 1-pixel border crop", self.sample_id(i), width, height
            )
            return None
        return image.crop((1, 1, width - 1, height - 1))


def _register() -> None:
    from .registry import register_dataset

    register_dataset("objectnet", ObjectNetDataset, needs_root=True, default_split="test")


_register()
