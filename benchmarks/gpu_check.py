"""The GPU path, measured: extraction, faiss k-means and the heads, each against its reference, in one table.

    python benchmarks/gpu_check.py            # on a machine with an NVIDIA GPU and faiss-gpu (pip install ".[gpu]")
    python benchmarks/gpu_check.py --smoke    # tiny sizes, any machine (the test suite runs this on the CPU)

1. Extraction images/s of ResNet-50 and ViT-S/16 at 224 px (random weights: speed only) through the real
   extraction path (JPEG files this script writes at ImageNet-like 500×375, decoded, resized and cropped by
   the card transform in DataLoader workers, forward pass, float16 cache chunks), against the forward pass
   alone on the same batch already on the device. ratio = extraction / forward.
2. k-means at 1.28M × 256, k = 1000 (ImageNet train after PCA), 20 Lloyd iterations, one restart, with faiss
   on the GPU, against faiss on the CPU run on ``--cpu-n`` rows (default 128k) and scaled linearly to 1.28M
   (Lloyd's cost is linear in n at fixed k and d; the row says it was extrapolated). ratio = CPU / GPU.
3. SCAN, TEMI and TURTLE at ImageNet-50 size (64,000 train rows × 2,048 dims, k = 50): seconds per epoch
   (SCAN, TEMI: one epoch after their set-up, neighbour mining timed apart; TURTLE: per 100 steps) on the
   GPU against the CPU.

On a CPU-only machine the GPU column is empty and the ratios are n/a. Numbers go to benchmarks/README.md
with the card named (this script prints it).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def write_jpegs(root: Path, n: int, size=(500, 375), n_classes: int = 10) -> None:
    """ImageNet-like JPEG files (smooth random colour fields + noise, quality 90) in class folders."""
    rng = np.random.default_rng(0)
    w, h = size
    for i in range(n):
        d = root / f"c{i % n_classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        small = rng.random((h // 25 + 1, w // 25 + 1, 3))
        img = Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
        noise = rng.normal(0, 12, (h, w, 3))
        arr = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(d / f"{i:06d}.jpg", quality=90)


def extraction(arch: str, n: int, batch: int, workers: int, device: str, tmp: Path) -> tuple[float, float]:
    """(extraction images/s, forward-only images/s) of ``arch`` with random weights."""
    from ssl_cluster_bench.backbones import create_backbone
    from ssl_cluster_bench.cache import FeatureCache
    from ssl_cluster_bench.data import get_dataset
    from ssl_cluster_bench.extraction import extract_features

    bb = create_backbone(None, arch=arch, pretrained=False)
    ds = get_dataset("imagefolder", tmp / "jpegs", transform=bb.transform)
    x = torch.stack([ds[i][0] for i in range(min(batch, len(ds)))]).to(device)
    model = bb.model.to(device).eval()
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu",
                                                                                                        enabled=False)
    with torch.inference_mode(), amp:
        model(x)
        _sync(device)
        start, done = time.perf_counter(), 0
        while done < n:
            model(x).float().cpu()
            done += x.shape[0]
        _sync(device)
    forward = done / (time.perf_counter() - start)
    start = time.perf_counter()
    extract_features(bb, ds, FeatureCache(tmp / f"cache-{arch}-{device}"), batch_size=batch, num_workers=workers,
                     chunk_size=max(batch, n // 4), device=device, progress=False)
    return n / (time.perf_counter() - start), forward


def kmeans_seconds(n: int, dim: int, k: int, gpu: bool) -> float:
    from ssl_cluster_bench.cluster import KMeans

    X = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    start = time.perf_counter()
    KMeans(k, n_init=1, n_iter=20, init="random", max_points_per_centroid=max(1, n // k + 1), gpu=gpu).fit(X)
    return time.perf_counter() - start


def head_seconds(name: str, n: int, dim: int, k: int, device: str, steps: int) -> float:
    """Seconds of one epoch (SCAN, TEMI: neighbours given, so mining is not in it) or of 100 steps (TURTLE)."""
    from ssl_cluster_bench.heads import SCAN, mine_neighbors
    from ssl_cluster_bench.heads.temi import TEMI
    from ssl_cluster_bench.heads.turtle import TURTLE

    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, dim)).astype(np.float32)
    if name == "turtle":
        est = TURTLE(k, n_steps=steps, device=device, verbose=False)
        start = time.perf_counter()
        est.fit([X])
        return (time.perf_counter() - start) * 100 / steps
    neighbors = mine_neighbors(X, 20, verbose=False, gpu=device.startswith("cuda") and "auto")
    est = (SCAN(k, epochs=1, device=device, verbose=False) if name == "scan"
           else TEMI(k, epochs=1, warmup_epochs=0, device=device, verbose=False))
    start = time.perf_counter()
    est.fit(X, neighbors=neighbors)
    return time.perf_counter() - start


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every step runs (any machine)")
    ap.add_argument("--images", type=int, default=2048, help="JPEG files for the extraction rows")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--cpu-n", type=int, default=128_000, help="k-means rows on the CPU (scaled to 1.28M)")
    args = ap.parse_args(argv)
    from ssl_cluster_bench.cluster import faiss_gpu_available

    gpu = torch.cuda.is_available()
    fgpu = faiss_gpu_available()
    if args.smoke:
        images, batch, workers = 8, 4, 0
        km_n, km_cpu_n, km_d, km_k = 4000, 2000, 32, 20
        h_n, h_d, h_k, t_steps = 600, 64, 10, 5
        archs = [("resnet50", 64), ("vit_small_patch16_224", 64)]
    else:
        images, batch, workers = args.images, args.batch_size, args.workers
        km_n, km_cpu_n, km_d, km_k = 1_281_167, args.cpu_n, 256, 1000
        h_n, h_d, h_k, t_steps = 64_000, 2048, 50, 100
        archs = [("resnet50", 224), ("vit_small_patch16_224", 224)]
    card = torch.cuda.get_device_name(0) if gpu else "no GPU"
    print(f"# gpu_check: {card}; torch {torch.__version__}; faiss GPU: {'yes' if fgpu else 'no'}; "
          f"{os.cpu_count()} CPU cores{'; SMOKE sizes' if args.smoke else ''}")
    rows = []  # (what, size, reference, reference value, gpu value, unit, ratio)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_jpegs(tmp / "jpegs", images, size=(64, 48) if args.smoke else (500, 375))
        for arch, _px in archs:
            dev = "cuda" if gpu else "cpu"
            ext, fwd = extraction(arch, images, batch, workers, dev, tmp)
            rows.append((f"extract {arch} ({dev})", f"{images} JPEG, batch {batch}, {workers} workers",
                         "forward only", fwd, ext, "img/s", ext / fwd))

    cpu_s = kmeans_seconds(km_cpu_n, km_d, km_k, gpu=False) * km_n / km_cpu_n
    gpu_s = kmeans_seconds(km_n, km_d, km_k, gpu=True) if fgpu else float("nan")
    rows.append(("k-means faiss", f"{km_n}×{km_d}, k={km_k}, 20 it", f"CPU ({km_cpu_n} rows ×{km_n / km_cpu_n:.1f})",
                 cpu_s, gpu_s, "s", cpu_s / gpu_s))

    for name in ("scan", "temi", "turtle"):
        unit = "s/100 steps" if name == "turtle" else "s/epoch"
        cpu_h = head_seconds(name, h_n, h_d, h_k, "cpu", t_steps)
        gpu_h = head_seconds(name, h_n, h_d, h_k, "cuda", t_steps) if gpu else float("nan")
        rows.append((name, f"{h_n}×{h_d}, k={h_k}", "CPU", cpu_h, gpu_h, unit, cpu_h / gpu_h))

    print("| what | size | reference | reference value | measured (GPU where one is) | unit | ratio |")
    print("|---|---|---|---:|---:|---|---:|")
    for what, size, ref, a, b, unit, ratio in rows:
        print(f"| {what} | {size} | {ref} | {a:.2f} | {'n/a' if b != b else f'{b:.2f}'} | {unit} | "
              f"{'n/a' if ratio != ratio else f'{ratio:.2f}'} |")


if __name__ == "__main__":
    main()
