"""Unknown k: pick the number of clusters of a method on one data set by a label-free criterion over a grid.

Entry points:
    k_grid(protocol, n_classes, n_samples) -> [k, ...]      the protocol's k_grid, else 2 .. 2 × #classes
    choose_k(cls, inputs, protocol, n_classes, seed=..., curve_path=None) -> (k, curve)
    curve_file(curve_dir, identity, method, row_hash) -> Path    where a run keeps one (entry, method) curve

For each k of the grid the method is fitted once (with the protocol's first seed) and its labeling scored on the
reduced features: silhouette (on the same fixed row sample as every row's), Calinski-Harabasz, Davies-Bouldin, and
the method's own score where it has one. The k with the best ``protocol.k_criterion`` is chosen (ties: the smaller
k); the rows of every seed then run at that k. ``curve`` is one row per k (a DataFrame, columns :data:`CURVE_COLUMNS`)
for plotting the criterion against k; with ``curve_path`` it is written there as CSV (atomically) and a curve
already there is read back instead of fitting the grid again (a resumed run picks the same k).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .metrics import label_free, silhouette
from .predictions import make_run_id
from .protocol import K_CRITERIA, Protocol

__all__ = ["CURVE_COLUMNS", "choose_k", "curve_file", "k_grid"]

CURVE_COLUMNS = ["method", "k", "silhouette", "calinski_harabasz", "davies_bouldin", "score", "n_found", "criterion",
                 "chosen", "n_classes", "seed", "protocol_hash"]


def curve_file(curve_dir, identity: str, method: str, row_hash: str) -> Path:
    """The CSV of the curve of ``method`` on the data named ``identity`` (a row's ``cache_key``; data clustered
    without its labels adds ``|unlabelled``) under the protocol of ``row_hash`` (the row's ``protocol_hash``): the
    run writes it there and the report reads it back from the row."""
    return Path(curve_dir) / f"{make_run_id(identity, method, 'k-auto', row_hash)}.csv"


def k_grid(protocol: Protocol, n_classes: int | None, n_samples: int) -> list[int]:
    """The k values ``n_clusters="auto"`` tries: ``protocol.k_grid``, else 2 .. 2 × #classes (at most n - 1).
    Data without labels (``n_classes`` None) has no class count to size the grid: it must be given."""
    if not protocol.k_grid and n_classes is None:
        raise ValueError("n_clusters='auto' on data without labels: there is no class count to size the grid of k "
                         "values from, so give it (k_grid, e.g. --k-grid 2-30)")
    grid = list(protocol.k_grid) if protocol.k_grid else list(range(2, max(3, 2 * int(n_classes)) + 1))
    too_large = [k for k in grid if k >= n_samples]
    if too_large:
        raise ValueError(f"k_grid holds k={too_large[0]}, not below the {n_samples} samples: the silhouette needs "
                         f"fewer clusters than samples; give a k_grid below {n_samples}")
    return grid


def _best(curve: pd.DataFrame, criterion: str) -> int:
    values = curve[criterion].to_numpy(dtype=float)
    if not np.isfinite(values).any():
        raise ValueError(f"k selection: {criterion} is undefined for every k of the grid (each labeling used a single "
                         f"cluster): give n_clusters explicitly")
    values = np.where(np.isfinite(values), values, -np.inf if K_CRITERIA[criterion] == "max" else np.inf)
    i = int(np.argmax(values) if K_CRITERIA[criterion] == "max" else np.argmin(values))  # first = smallest k
    return int(curve["k"].iloc[i])


def choose_k(cls, inputs, protocol: Protocol, n_classes: int, *, seed: int | None = None, curve_path=None,
             verbose: bool = False, bar=None) -> tuple[int, pd.DataFrame]:
    """(chosen k, per-k criterion values) of method class ``cls`` on ``inputs`` (see the module docstring).
    ``verbose``: each fit shows its own bars; ``bar``: a caller's bar (tqdm) that gains one step per k fitted."""
    seed = protocol.seeds[0] if seed is None else int(seed)
    row_hash = protocol.row_hash(cls.name)
    if curve_path is not None and Path(curve_path).is_file():
        curve = pd.read_csv(curve_path)
        if list(curve.columns) == CURVE_COLUMNS and curve["chosen"].any():
            return int(curve.loc[curve["chosen"].astype(bool), "k"].iloc[0]), curve
    reduced = inputs.reduced_for(seed)
    lines = []
    grid = k_grid(protocol, n_classes, reduced.shape[0])
    if bar is not None:
        bar.total = (bar.total or 0) + len(grid)
        bar.refresh()
    for k in grid:
        if bar is not None:
            bar.set_postfix_str(f"choosing k: k={k}", refresh=False)
        est = cls.from_protocol(protocol, k, seed, verbose=verbose).fit(inputs)
        if bar is not None:
            bar.update()
        labels = np.asarray(est.labels_)
        kept = labels >= 0  # noise is no cluster of the labeling being judged
        lines.append({"method": cls.name, "k": k, "silhouette": silhouette(reduced[kept], labels[kept]),
                      **label_free(reduced[kept], labels[kept]), "score": getattr(est, "score_", None),
                      "n_found": int(np.unique(labels[kept]).size), "criterion": protocol.k_criterion,
                      "chosen": False, "n_classes": None if n_classes is None else int(n_classes), "seed": seed, "protocol_hash": row_hash})
    curve = pd.DataFrame(lines, columns=CURVE_COLUMNS)
    k = _best(curve, protocol.k_criterion)
    curve["chosen"] = curve["k"] == k
    if curve_path is not None:
        path = Path(curve_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            curve.to_csv(tmp, index=False)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return k, curve
