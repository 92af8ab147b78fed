"""Predictions: the cluster assignment of every leaderboard row, kept so that plots, confusion matrices and
bootstrap intervals are drawn later without clustering again.

Entry points:
    predictions_dir(results_csv) -> Path          ``<results dir>/predictions/`` (of a symlink's target)
    save_predictions(results_csv, run_id, labels) -> Path   compact .npy (int16 when k allows), atomic
    load_predictions(results_csv, run_id) -> (n,) int64
    save_sample_scores(results_csv, run_id, confidence=..., distance=...) / load_sample_scores(...) -> dict
        per-sample numbers beside the assignment (``<run_id>.samples.npz``): what the assignments table and the
        report's prototype images are chosen by
    done_runs(results_csv) -> DataFrame            the leaderboard rows that count as done (assignment stored)

Rows name their file by ``run_id``: a digest of (cache entry, method, k, seed, row protocol hash), so the same
configuration run again writes the same file with the same content.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

from .safeio import atomic_write

__all__ = ["done_runs", "has_predictions", "load_predictions", "load_sample_scores", "make_run_id",
           "predictions_dir", "save_predictions", "save_sample_scores"]

#: the per-sample numbers a run may store beside its assignment: ``confidence``, the probability of the cluster
#: the sample went to (methods that give probabilities: the heads); ``distance``, the Euclidean distance to its
#: cluster's centre (the mean of its members) in the space the method clustered (every method; NaN for noise)
SAMPLE_SCORES = ("confidence", "distance")

_RUN_ID = re.compile(r"^[0-9a-f]{16}$")


def make_run_id(*parts) -> str:
    return hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:16]


def predictions_dir(results_csv) -> Path:
    # next to the file a symlinked leaderboard points to, where its rows are (and every link finds them)
    return Path(os.path.realpath(results_csv)).parent / "predictions"


def _path(results_csv, run_id: str) -> Path:
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise ValueError(f"run_id must be 16 hex characters, got {run_id!r}")
    return predictions_dir(results_csv) / f"{run_id}.npy"


def has_predictions(results_csv, run_id) -> bool:
    """Whether the assignment of run ``run_id`` is stored next to the leaderboard ``results_csv``."""
    return isinstance(run_id, str) and bool(_RUN_ID.match(run_id)) and _path(results_csv, run_id).is_file()


def save_predictions(results_csv, run_id: str, labels) -> Path:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    dtype = np.int16 if labels.size == 0 or (labels.min() >= -1 and labels.max() < 2 ** 15) else np.int32
    path = _path(results_csv, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        np.save(f, labels.astype(dtype))
    return path


def load_predictions(results_csv, run_id: str) -> np.ndarray:
    path = _path(results_csv, run_id)
    if not path.is_file():
        raise FileNotFoundError(f"no predictions for run {run_id} under {path.parent} (rows written before "
                                f"predictions were kept have none: re-run that configuration)")
    return np.load(path).astype(np.int64)


def _scores_path(results_csv, run_id: str) -> Path:
    return _path(results_csv, run_id).with_suffix(".samples.npz")


def save_sample_scores(results_csv, run_id: str, **arrays) -> Path | None:
    """Store per-sample numbers of run ``run_id`` (keys of :data:`SAMPLE_SCORES`; None values are left out) as
    float32 next to its assignment, atomically; None when there is nothing to store."""
    unknown = sorted(set(arrays) - set(SAMPLE_SCORES))
    if unknown:
        raise ValueError(f"unknown per-sample scores {unknown}; known: {', '.join(SAMPLE_SCORES)}")
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items() if v is not None}
    if not arrays:
        return None
    path = _scores_path(results_csv, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        np.savez(f, **arrays)
    return path


def load_sample_scores(results_csv, run_id: str) -> dict[str, np.ndarray]:
    """The per-sample numbers stored for run ``run_id`` (empty for runs made before they were kept)."""
    path = _scores_path(results_csv, run_id)
    if not path.is_file():
        return {}
    with np.load(path) as z:
        return {k: z[k] for k in z.files if k in SAMPLE_SCORES}


def done_runs(results_csv, board=None):
    """The rows of the leaderboard ``results_csv`` that count as done: a run id whose assignment is stored next to
    it. The one resume rule of ``sscb run``, ``sscb suite`` and ``sscb objectnet``: rows that came from elsewhere
    (a committed or merged CSV, without ``predictions/``) are run again on this machine. ``board``: the
    leaderboard already read (``read_leaderboard(results_csv)``). Always has a ``run_id`` column."""
    import pandas as pd

    from .leaderboard import read_leaderboard

    if board is None:
        board = read_leaderboard(results_csv) if Path(results_csv).is_file() else pd.DataFrame()
    if "run_id" not in board.columns:
        return board.iloc[0:0].assign(run_id=pd.Series(dtype=object))
    return board[board["run_id"].map(lambda run_id: has_predictions(results_csv, run_id)).astype(bool)]
