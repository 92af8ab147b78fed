"""Stand-ins shared by the extraction and cache tests: a tiny random ResNet-18 backbone that counts the images
it sees, and a small image folder with one unreadable file."""
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import timm
import torch
from PIL import Image
from torchvision import transforms as T


@dataclass
class FakeBackbone:
    """The fields of ssl_cluster_bench.backbones.Backbone the extraction engine uses."""
    model: torch.nn.Module
    transform: object
    card: object
    weights_id: str = "random:resnet18:seed=0"
    transform_id: str = "resize16"
    feature_dim: int = 512


class Counting(torch.nn.Module):
    """Counts the images it sees; ``delay`` seconds per batch make racing jobs overlap."""

    def __init__(self, inner, delay=0.0):
        super().__init__()
        self.inner, self.seen, self.delay = inner, 0, delay

    def forward(self, x):
        self.seen += x.shape[0]
        if self.delay:
            time.sleep(self.delay)
        return self.inner(x)


def tiny_backbone(delay=0.0) -> FakeBackbone:
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    transform = T.Compose([T.Resize(16), T.CenterCrop(16), T.ToTensor(), T.Normalize([0.5] * 3, [0.25] * 3)])
    return FakeBackbone(Counting(model, delay), transform, SimpleNamespace(id="test-r18"))


def write_image_tree(tmp_path):
    """3 classes × 7 random 20×24 PNGs plus one unreadable file: 22 positions, 21 readable."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(7):
            Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(root / f"class{c}" / f"{i}.png")
    (root / "class1" / "broken.jpg").write_bytes(b"not an image at all")
    return root
