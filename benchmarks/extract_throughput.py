"""Extraction throughput vs forward-only throughput of the same model and batch size.

The extraction path adds image decoding, the eval transform, the DataLoader, float16 conversion and
atomic chunk writes around the forward pass; the ratio says how much of the model's speed survives.
Both are measured in this process on the same images (a generated ImageFolder of JPEGs).

    python benchmarks/extract_throughput.py [--n 512] [--arch resnet18] [--batch-size 64] [--workers 2]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ssl_cluster_bench.backbones import create_backbone
from ssl_cluster_bench.cache import FeatureCache
from ssl_cluster_bench.data import get_dataset
from ssl_cluster_bench.extraction import extract_features


def make_tree(root: Path, n: int, size: int = 160, n_classes: int = 10) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class{i % n_classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(d / f"{i:06d}.jpg", quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512, help="images")
    ap.add_argument("--arch", default="resnet18", help="timm/torchvision architecture (random init)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    bb = create_backbone(None, arch=args.arch, pretrained=False)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_tree(tmp / "imgs", args.n)
        ds = get_dataset("imagefolder", tmp / "imgs", transform=bb.transform)

        # forward only: pre-transformed tensors already in memory, same model and batch size
        x = torch.stack([ds[i][0] for i in range(min(args.n, args.batch_size))])
        model = bb.model.to(device).eval()
        with torch.inference_mode():
            model(x.to(device))  # warm-up
            start = time.perf_counter()
            done = 0
            while done < args.n:
                b = x[: min(args.batch_size, args.n - done)].to(device)
                model(b).float().cpu()
                done += b.shape[0]
            if device.type == "cuda":
                torch.cuda.synchronize()
        forward_ips = args.n / (time.perf_counter() - start)

        start = time.perf_counter()
        entry = extract_features(bb, ds, FeatureCache(tmp / "cache"), batch_size=args.batch_size,
                                 num_workers=args.workers, chunk_size=max(args.batch_size, args.n // 4),
                                 device=str(device), progress=False)
        extract_ips = args.n / (time.perf_counter() - start)
        assert entry.count == args.n

    print(f"{args.arch} on {device}, batch {args.batch_size}, {args.n} images "
          f"({bb.transform_id}), {args.workers} loader workers, {torch.get_num_threads()} torch threads")
    print(f"| path | images/s |\n|---|---|\n| forward only | {forward_ips:.1f} |\n| extraction (decode + transform "
          f"+ forward + cache) | {extract_ips:.1f} |")
    print(f"ratio extraction / forward-only: {extract_ips / forward_ips:.2f}")


if __name__ == "__main__":
    main()
