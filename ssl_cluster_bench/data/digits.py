"""The embedded default dataset: scikit-learn's bundled digits (1,797 real 8x8 images, 10 classes)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


class DigitsDataset(torch.utils.data.Dataset):
    """``load_digits`` as an image dataset following the extraction protocol (image, label, index).

    Pixel intensities 0..16 are scaled to 0..255 grey levels so image backbones see ordinary 8-bit images;
    the split is "all" (the 1,797 images have no official train/test split).
    """

    name = "digits"

    def __init__(self, root=None, split: str | None = None, transform=None):
        from sklearn.datasets import load_digits

        split = split or "all"
        if split != "all":
            raise ValueError(f"digits has a single split 'all'; got split={split!r}")
        bunch = load_digits()
        self.split = split
        self.transform = transform
        self.images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
        self.targets = bunch.target.astype(np.int64)
        self.classes = [str(c) for c in bunch.target_names]

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __getitem__(self, i: int):
        image = Image.fromarray(self.images[i], mode="L").convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[i]), i

    def sample_id(self, i: int) -> str:
        return f"digits:{i}"
