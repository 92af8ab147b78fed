"""Assignments: which cluster every sample of a leaderboard row went to, as a table a person can open.

Entry points:
    assignment_table(results_csv, run_id, cache=None) -> DataFrame   sample_id, path, cluster, confidence, distance
    write_assignments(results_csv, run_ids, cache=None) -> list[Path] ``<results dir>/assignments/<run_id>.csv``
    dataset_of(entry) -> dataset | None                              the dataset a cache entry was extracted from

In: the row's stored assignment and per-sample scores (:mod:`ssl_cluster_bench.predictions`, kept by every run
for resuming; nothing is clustered again), the cache entry the row names (``cache_key``: which dataset positions
its features are, skipped images left out) and the dataset itself, rebuilt from the entry's manifest, for the
sample ids and file paths. Columns: ``sample_id`` (the dataset's id: a path relative to the root for image
folders, ``digits:17`` or ``t10k-images-idx3-ubyte:17`` for arrays), ``path`` (absolute, for datasets of
files), ``cluster`` (-1 = noise), ``confidence`` (probability of that cluster, methods that give one),
``distance`` (to the cluster's centre in the space the method clustered; for k-means, the centroid).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .leaderboard import read_leaderboard
from .predictions import SAMPLE_SCORES, load_predictions, load_sample_scores, predictions_dir

__all__ = ["assignment_table", "assignments_dir", "dataset_of", "entry_of", "write_assignments"]

log = logging.getLogger(__name__)


def assignments_dir(results_csv) -> Path:
    """``<results dir>/assignments/``, beside ``predictions/`` (of a symlinked leaderboard's target)."""
    return predictions_dir(results_csv).parent / "assignments"


def entry_of(cache_key: str, cache=None):
    """The feature-cache entry named ``cache_key`` (a joint row's first one), or None when it is not there."""
    from .cache import CacheEntry, FeatureCache, load_manifest

    name = str(cache_key or "").split("+")[0]
    root = (cache if isinstance(cache, FeatureCache) else FeatureCache(cache)).root
    path = Path(root) / name
    if not name or not (path / "manifest.json").is_file():
        return None
    return CacheEntry(path, load_manifest(path))


def dataset_of(entry):
    """The dataset ``entry`` was extracted from, rebuilt from its key and manifest (images not decoded), or None
    when it cannot be (imported features, data moved away): its sample positions must still exist."""
    from .data import get_dataset, list_datasets

    key = entry.key
    root = (entry.manifest.get("data_source") or {}).get("root")
    try:
        if key.dataset in list_datasets():
            ds = get_dataset(key.dataset, root, key.split)
        elif root and os.path.isdir(root):  # an image folder: named after the folder, not registered
            ds = get_dataset("imagefolder", root, key.split)
        else:
            return None
    except (OSError, ValueError) as e:
        log.info("dataset of cache entry %s not available: %s", entry.name, e)
        return None
    indices = entry.indices
    if indices.size and int(indices.max()) >= len(ds):
        return None
    source = entry.manifest.get("data_source") or {}
    if source.get("fingerprint") == "stat":
        from .extraction import dataset_fingerprint

        # the files' sizes and times as at extraction: else the images shown would not be the ones clustered
        if dataset_fingerprint(ds) != key.data:
            log.info("the data of cache entry %s changed since extraction; its images are not shown", entry.name)
            return None
    return ds


def _row(results_csv, run_id: str) -> pd.Series:
    board = read_leaderboard(results_csv)
    rows = board[board["run_id"] == run_id] if "run_id" in board.columns else board.iloc[:0]
    if rows.empty:
        raise ValueError(f"leaderboard {results_csv} has no row with run_id {run_id!r}")
    return rows.iloc[-1]


def assignment_table(results_csv, run_id: str, cache=None, *, entry=None, dataset=None) -> pd.DataFrame:
    """The assignment of row ``run_id`` of the leaderboard ``results_csv``, one line per clustered sample.

    ``cache``: the feature cache the row was made from (default cache when None); ``entry`` / ``dataset`` skip
    looking them up. Without the cache entry the ids are the row positions; without the dataset, the dataset
    positions (``#17``) and no paths."""
    clusters = load_predictions(results_csv, run_id)
    if entry is None:
        entry = entry_of(_row(results_csv, run_id).get("cache_key"), cache)
    if entry is not None and entry.indices.shape != clusters.shape:
        raise ValueError(f"run {run_id}: {clusters.size} assignments but cache entry {entry.name} holds "
                         f"{entry.indices.size} samples (the entry was made again since); re-run the row")
    indices = entry.indices if entry is not None else np.arange(clusters.size)
    if dataset is None and entry is not None:
        dataset = dataset_of(entry)
    table = pd.DataFrame({"sample_id": [dataset.sample_id(int(i)) for i in indices] if dataset is not None
                          else [f"#{int(i)}" for i in indices]})
    if dataset is not None and hasattr(dataset, "path"):
        table["path"] = [str(dataset.path(int(i))) for i in indices]
    table["cluster"] = clusters
    scores = load_sample_scores(results_csv, run_id)
    for name in SAMPLE_SCORES:
        if name in scores and scores[name].shape == clusters.shape:
            table[name] = scores[name]
    table.attrs["indices"] = np.asarray(indices)
    table.attrs["dataset"] = dataset
    return table


def write_assignments(results_csv, run_ids, cache=None) -> list[Path]:
    """Write :func:`assignment_table` of each run id to ``<results dir>/assignments/<run_id>.csv`` (atomic; the
    same run written again gives the same file). Entries and datasets are looked up once per cache entry."""
    out_dir = assignments_dir(results_csv)
    board = read_leaderboard(results_csv)
    keys = dict(zip(board["run_id"], board["cache_key"])) if "run_id" in board.columns else {}
    found: dict[str, tuple] = {}
    paths = []
    for run_id in dict.fromkeys(run_ids):
        if run_id not in keys:
            raise ValueError(f"leaderboard {results_csv} has no row with run_id {run_id!r}")
        key = str(keys[run_id])
        if key not in found:
            entry = entry_of(key, cache)
            found[key] = (entry, dataset_of(entry) if entry is not None else None)
        entry, dataset = found[key]
        table = assignment_table(results_csv, run_id, cache, entry=entry, dataset=dataset)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{run_id}.csv"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            table.to_csv(tmp, index=False, lineterminator="\n")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        paths.append(path)
    return paths
