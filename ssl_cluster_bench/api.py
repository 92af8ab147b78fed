"""Python API: the same operations as the ``sscb`` CLI, each a function over plain arguments.

    import ssl_cluster_bench as sscb
    entry = sscb.extract("dino-vits16", "cifar10", data_root="~/data/cifar")     # -> cache entry
    rows = sscb.cluster_entry(entry, seeds=5, overcluster=(1.0, 1.5))            # -> DataFrame (one row/seed)
    sscb.run(backbones=["pixels", "random-resnet18"])                           # the embedded default

Stages talk through the feature cache and plain arrays: extract() writes an entry, cluster_entry() reads
features from it, reduces them (PCA), clusters them (k-means or a clustering head) and scores them.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from . import __version__
from .cache import CacheEntry, CacheKey, FeatureCache
from .cluster import KMeans
from .leaderboard import aggregate, append_rows, default_results_path, read_leaderboard, to_markdown
from .metrics import evaluate
from .reduce import PCA

__all__ = ["DEFAULT_BACKBONES", "cluster_entry", "cluster_features", "extract", "import_features", "run",
           "write_markdown"]

log = logging.getLogger(__name__)

DEFAULT_BACKBONES = ("pixels", "random-resnet18")
METHODS = ("kmeans", "scan", "scan+selflabel", "mmdc", "twostage")


def _versions() -> str:
    import importlib.metadata as md

    parts = [f"sscb={__version__}", f"python={platform.python_version()}"]
    for pkg, name in (("numpy", "numpy"), ("scikit-learn", "sklearn"), ("faiss-cpu", "faiss"),
                      ("faiss-gpu", "faiss"), ("torch", "torch"), ("timm", "timm")):
        try:
            parts.append(f"{name}={md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    return ";".join(parts)


def _resolve_cache(cache) -> FeatureCache:
    return cache if isinstance(cache, FeatureCache) else FeatureCache(cache)


def _dataset(name: str, root, split, transform=None, subset=None):
    from .data import get_dataset

    if subset is None:
        return get_dataset(name, root, split, transform=transform)
    if name != "imagenet":
        raise ValueError(f"a class subset (--subset) is only supported for imagenet, not {name!r}")
    return get_dataset(name, root, split, transform=transform, subset=subset)


def extract(backbone, dataset: str, data_root=None, split: str | None = None, cache=None, *,
            checkpoint=None, arch=None, subset=None, views: int = 0, batch_size: int = 128, num_workers=None,
            chunk_size: int = 8192, device: str = "auto", progress: bool = True, weights_only: bool = True,
            momentum_encoder: bool | None = None, checkpoint_key: str | None = None) -> CacheEntry:
    """Extract (or find in the cache) the features of ``backbone`` on ``dataset``; returns the cache entry.

    ``backbone`` is a model-card id, a card YAML path, or None with ``arch`` + ``checkpoint`` (a new SSL
    checkpoint). ``data_root`` is the local dataset folder (not needed for the embedded digits).
    ``subset`` (ImageNet only): a class-list file (one wnid per line), e.g. SCAN's 50/100/200-class lists.
    ``weights_only=False`` unpickles a trusted legacy checkpoint; ``momentum_encoder`` / ``checkpoint_key``
    choose which weights inside a checkpoint to load (see :func:`ssl_cluster_bench.backbones.create_backbone`).
    """
    from .backbones import create_backbone
    from .extraction import extract_features

    ds_probe = _dataset(dataset, data_root, split, subset=subset)  # fail on bad data before loading weights
    bb = create_backbone(backbone, checkpoint=checkpoint, arch=arch, device="cpu", weights_only=weights_only,
                         momentum_encoder=momentum_encoder, checkpoint_key=checkpoint_key)
    ds = _dataset(dataset, data_root, split or ds_probe.split, bb.transform, subset)
    return extract_features(bb, ds, _resolve_cache(cache), batch_size=batch_size, num_workers=num_workers,
                            chunk_size=chunk_size, device=device, views=views, progress=progress)


def import_features(features, labels, backbone: str, dataset: str, split: str = "all", cache=None,
                    weights: str = "") -> CacheEntry:
    """Store precomputed features (arrays, or paths to ``.npy`` files) as a cache entry.

    The entry is keyed by ``backbone``/``dataset``/``split`` and, unless ``weights`` is given, by a hash of
    the feature file (or array) so different feature sets under one name never collide.
    """
    def load(x, what):
        if isinstance(x, (str, os.PathLike)):
            p = Path(x)
            if not p.is_file():
                raise FileNotFoundError(f"{what} file {p} does not exist")
            return np.load(p, mmap_mode="r") if p.suffix == ".npy" else np.loadtxt(p)
        return np.asarray(x)

    feats, labs = load(features, "features"), load(labels, "labels")
    if not weights:
        h = hashlib.sha256()
        h.update(str(feats.shape).encode())
        flat = feats.reshape(feats.shape[0], -1) if feats.ndim else feats
        for start in range(0, flat.shape[0], 65536):
            h.update(np.ascontiguousarray(flat[start:start + 65536]).tobytes())
        weights = "imported:" + h.hexdigest()[:16]
    key = CacheKey(backbone=backbone, dataset=dataset, split=split, weights=weights, transform="imported")
    return _resolve_cache(cache).put(key, feats, labs, meta={"imported": True})


def cluster_features(features, labels, *, n_classes: int | None = None, overcluster: Sequence[float] = (1.0,),
                     n_clusters: Sequence[int] | None = None,
                     seeds: Iterable[int] = range(5), methods: Sequence[str] = ("kmeans",),
                     pca_dim: int | None = 256, whiten: bool = False, l2_normalize: bool = False,
                     backend: str = "faiss", kmeans_iter: int | None = None, n_init="auto",
                     max_points_per_centroid: int | None = None, progress: bool = True,
                     scan_options: dict | None = None, augmented=None) -> pd.DataFrame:
    """The clustering protocol on a feature matrix: PCA once, then every method × k × seed; one row each.

    k-means runs on the PCA-reduced features; clustering heads (scan, mmdc, twostage) on the features
    themselves, with ``augmented`` (views, n, dim) cached augmented views when available.
    ``n_clusters`` gives explicit k values instead of ``overcluster`` factors (k = round(factor × n_classes)).
    Rows carry the metrics (acc, nmi, ami, ari, top5 for heads), the effective PCA dim, the flag column
    (e.g. empty or degenerate clusters) and the fit time. Labels < 0 (unlabelled) are excluded from scoring.
    """
    labels = np.asarray(labels)
    if features.shape[0] != labels.shape[0]:
        raise ValueError(f"features ({features.shape[0]} rows) and labels ({labels.shape[0]}) differ in length")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    labelled = labels >= 0
    n_classes = n_classes or int(np.unique(labels[labelled]).size)
    if n_classes < 1:
        raise ValueError("no labelled samples: clustering metrics need labels")
    seeds = list(seeds)
    if n_clusters:  # explicit k values take precedence over overclustering factors
        ks = [(round(k / n_classes, 4), int(k)) for k in n_clusters]
    else:
        ks = [(f, max(2, int(round(n_classes * f)))) for f in overcluster]
    for f, k in ks:
        if k > features.shape[0]:
            raise ValueError(f"k={k} (overcluster {f} × {n_classes} classes) exceeds the {features.shape[0]} samples")
        if f <= 0:
            raise ValueError(f"overcluster factors must be positive, got {f}")
    n, dim = features.shape
    reduced, pca_seconds = None, 0.0
    if "kmeans" in methods:
        # PCA cannot give more components than samples or dims; at the input dim it is only a rotation
        eff_dim = None if pca_dim is None or pca_dim >= dim else int(min(pca_dim, n))
        t0 = time.perf_counter()
        reduced = PCA(eff_dim, whiten=whiten, l2_normalize=l2_normalize, progress=progress).fit_transform(features)
        pca_seconds = time.perf_counter() - t0
    heads = [m for m in methods if m != "kmeans"]
    neighbors = None
    if any(m.startswith("scan") for m in heads):
        # mined once per feature matrix and shared by every SCAN fit (seeds, k, self-labeling)
        from .heads import mine_neighbors

        neighbors = mine_neighbors(features, int((scan_options or {}).get("n_neighbors", 20)), verbose=progress)
    rows = []
    for method in methods:
        for f, k in ks:
            for seed in seeds:
                t0 = time.perf_counter()
                flag, probs = "", None
                if method == "kmeans":
                    km = KMeans(k, backend=backend, n_iter=kmeans_iter, n_init=n_init,
                                max_points_per_centroid=max_points_per_centroid, random_state=seed,
                                progress=progress)
                    pred = km.fit(reduced).labels_
                    empty = k - np.unique(pred).size
                    if empty:
                        flag = f"empty_clusters={empty}"
                    # what ran (the automatic settings resolved), so every row says how it was made
                    config = {"backend": backend, "pca_dim": reduced.shape[1], "whiten": whiten,
                              "l2_normalize": l2_normalize, "n_init": km.n_init_, "kmeans_iter": km.n_iter_,
                              "max_points_per_centroid": km.max_points_per_centroid_}
                    seconds = time.perf_counter() - t0 + pca_seconds / max(1, len(ks) * len(seeds))
                else:
                    # Heads see the cached features themselves: they standardise internally, and doing so on
                    # PCA components would amount to whitening, which costs them accuracy.
                    pred, probs, flag = _fit_head(method, features, k, seed, scan_options or {}, progress,
                                                  augmented=augmented, neighbors=neighbors)
                    config = {"backend": "torch", "pca_dim": dim, "whiten": False, "l2_normalize": False}
                    seconds = time.perf_counter() - t0
                scores = evaluate(labels[labelled], pred[labelled],
                                  probs[labelled] if probs is not None else None)
                rows.append({"method": method, "n_clusters": k, "overcluster": f, **config, "seed": seed,
                             "n_classes": n_classes, "n_samples": int(labelled.sum()), **scores, "flag": flag,
                             "seconds": round(seconds, 3)})
    return pd.DataFrame(rows)


def _fit_head(method: str, features, k: int, seed: int, options: dict, progress: bool, augmented=None,
              neighbors=None):
    """Fit the head named ``method``; ``options`` (scan_options) only apply to the SCAN methods."""
    if method == "mmdc":
        from .heads.mmdc import MMDC

        est = MMDC(n_clusters=k, random_state=seed, verbose=progress).fit(features, augmented=augmented)
    elif method == "twostage":
        from .heads.twostage import TwoStageUC

        est = TwoStageUC(n_clusters=k, random_state=seed, verbose=progress).fit(features, augmented=augmented)
    else:
        from .heads import SCAN

        est = SCAN(n_clusters=k, self_label=method == "scan+selflabel", random_state=seed, verbose=progress,
                   **options).fit(features, augmented=augmented, neighbors=neighbors)
    flag = "degenerate" if getattr(est, "degenerate_", False) else ""
    return est.labels_, est.probs_, flag


def _augmented_views(entry: CacheEntry):
    """The cached augmented views (views, n, dim) of the same samples, if ``sscb extract --views`` made them."""
    key = entry.key
    for other in FeatureCache(entry.path.parent).entries():
        k = other.key
        if (k.variant.startswith("aug:") and (k.backbone, k.weights, k.dataset, k.split, k.transform, k.data)
                == (key.backbone, key.weights, key.dataset, key.split, key.transform, key.data)
                and np.array_equal(other.indices, entry.indices)):
            log.info("using %d cached augmented views from %s", other.manifest.get("n_views", 0), other.path.name)
            return other.features
    return None


def cluster_entry(entry: CacheEntry, **protocol) -> pd.DataFrame:
    """:func:`cluster_features` on a cache entry, with the entry's identity columns filled in."""
    if entry.manifest.get("n_views"):
        raise ValueError(f"{entry.path.name} holds augmented views; cluster the plain entry instead")
    if any(m != "kmeans" for m in protocol.get("methods", ())) and protocol.get("augmented") is None:
        protocol["augmented"] = _augmented_views(entry)
    df = cluster_features(entry.features, entry.labels, **protocol)
    key = entry.key
    df.insert(0, "backbone", key.backbone)
    df.insert(1, "weights", key.weights)
    df.insert(2, "dataset", key.dataset)
    df.insert(3, "split", key.split)
    df.insert(4, "protocol", "direct")
    df["cache_key"] = entry.path.name
    df["versions"] = _versions()
    df["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return df


def _check_writable(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a"):
            pass
    except OSError as e:
        raise OSError(f"results path {path} is not writable: {e}") from e


def _entry_for(backbone, dataset, data_root, split, cache: FeatureCache, extract_options: dict) -> CacheEntry:
    """Extract with a model card, or fall back to features imported under that name."""
    from .backbones import load_card

    if extract_options.get("checkpoint") or Path(str(backbone)).suffix in (".yaml", ".yml"):
        return extract(backbone, dataset, data_root, split, cache, **extract_options)
    try:
        load_card(backbone)
    except ValueError:
        found = cache.find(backbone, dataset, split)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ValueError(f"several cache entries match backbone {backbone!r} on {dataset}: "
                             f"{[e.path.name for e in found]}; pass --split or remove the stale ones")
        raise
    return extract(backbone, dataset, data_root, split, cache, **extract_options)


def write_markdown(results_csv, markdown_path=None) -> Path:
    """Aggregate the leaderboard CSV (mean ± std over seeds) into a markdown table next to it."""
    results_csv = Path(results_csv)
    markdown_path = Path(markdown_path) if markdown_path else results_csv.with_suffix(".md")
    text = to_markdown(aggregate(read_leaderboard(results_csv)))
    tmp = markdown_path.with_name(f".{markdown_path.name}.tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, markdown_path)
    return markdown_path


def run(backbones: Sequence[str] | None = None, dataset: str = "digits", data_root=None,
        split: str | None = None, *, results=None, cache=None, checkpoint=None, arch=None, subset=None,
        weights_only: bool = True, momentum_encoder: bool | None = None, checkpoint_key: str | None = None,
        methods: Sequence[str] = ("kmeans",), overcluster: Sequence[float] = (1.0, 1.5),
        n_clusters: Sequence[int] | None = None, seeds: int = 5,
        pca_dim: int | None = 256, whiten: bool = False, l2_normalize: bool = False, backend: str = "faiss",
        n_init="auto", kmeans_iter: int | None = None, max_points_per_centroid: int | None = None,
        batch_size: int = 128, num_workers=None, device: str = "auto", progress: bool = True,
        scan_options: dict | None = None) -> pd.DataFrame:
    """Extract what is missing, run the clustering protocol, append to the leaderboard, write markdown.

    With no arguments: the embedded default (raw pixels and a random-init CNN on digits). Returns the new
    rows; each backbone's rows are appended as soon as that backbone is done.
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    results = Path(results) if results else default_results_path()
    _check_writable(results)
    cache = _resolve_cache(cache)
    if checkpoint:
        backbones = [None]
    backbones = list(backbones or DEFAULT_BACKBONES)
    extract_options = {"checkpoint": checkpoint, "arch": arch, "subset": subset, "weights_only": weights_only,
                       "momentum_encoder": momentum_encoder, "checkpoint_key": checkpoint_key, "batch_size": batch_size,
                       "num_workers": num_workers, "device": device, "progress": progress}
    frames = []
    for backbone in backbones:
        entry = _entry_for(backbone, dataset, data_root, split, cache, extract_options)
        df = cluster_entry(entry, overcluster=overcluster, n_clusters=n_clusters, seeds=range(seeds), methods=methods,
                           pca_dim=pca_dim, whiten=whiten, l2_normalize=l2_normalize, backend=backend,
                           n_init=n_init, kmeans_iter=kmeans_iter, max_points_per_centroid=max_points_per_centroid,
                           progress=progress, scan_options=scan_options)
        append_rows(results, df.to_dict("records"))
        frames.append(df)
    write_markdown(results)
    return pd.concat(frames, ignore_index=True)
