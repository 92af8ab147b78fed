"""Leaderboard: tidy CSV of results (one row per backbone × dataset × split × method × k × PCA dim × seed).

Entry points:
    append_rows(path, rows) -> int        add rows; existing rows are never modified or lost
    read_leaderboard(path) -> DataFrame
    aggregate(df) -> DataFrame            mean ± std over seeds, computed from the rows
    to_markdown(agg) -> str                 best mean in bold, rows within one std of it in italics
"""
from __future__ import annotations

import fcntl
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .safeio import write_error

__all__ = ["COLUMNS", "METRICS", "aggregate", "append_rows", "default_results_path", "mark_best", "read_leaderboard",
           "to_markdown"]

# Identity of a configuration: rows sharing all of these differ only by seed.
CONFIG_COLUMNS = [
    "backbone", "weights", "dataset", "split", "protocol", "method", "n_classes", "n_clusters",
    "overcluster", "pca_dim", "whiten", "l2_normalize", "backend", "n_init", "kmeans_iter",
    "max_points_per_centroid", "protocol_hash",
]
METRICS = ["acc", "nmi", "ami", "ari", "top5", "acc_tr", "acc_val", "acc_overlap", "acc_nonoverlap", "chance"]
COLUMNS = CONFIG_COLUMNS + ["seed", "n_samples"] + METRICS + [
    "score", "silhouette", "flag", "seconds", "run_id", "cache_key", "versions", "timestamp",
]


def default_results_path() -> Path:
    return Path("results") / "leaderboard.csv"


def _frame(rows) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    unknown = sorted(set(df.columns) - set(COLUMNS))
    if unknown:
        raise ValueError(f"leaderboard rows have unknown columns {unknown}; known columns: {COLUMNS}")
    missing = [c for c in ("backbone", "dataset", "method", "n_clusters", "seed", "acc") if c not in df.columns]
    if missing:
        raise ValueError(f"leaderboard rows lack required columns {missing}")
    return df.reindex(columns=COLUMNS)


def append_rows(path, rows) -> int:
    """Append ``rows`` (dicts) to the CSV at ``path`` and return how many were written.

    The new rows are formatted completely before the file is touched, and the file is replaced atomically
    (temporary file + rename, under an exclusive lock), so an interrupted or failed append leaves the old
    file intact and concurrent appends never lose each other's rows. Existing lines are copied byte for
    byte; only a file with an older column set has its header widened.
    """
    path = Path(path)
    rows = list(rows)
    if not rows:
        return 0
    new = _frame(rows)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = path.with_name(path.name + ".lock")
        lock = open(lock_path, "a")
    except OSError as e:
        raise OSError(f"results path {path} is not writable: {e}") from e
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old_bytes = path.read_bytes() if path.exists() else b""
        if old_bytes.strip():
            header = old_bytes.split(b"\n", 1)[0].decode().strip().split(",")
            if header == COLUMNS:
                body = new.to_csv(index=False, header=False, lineterminator="\n").encode()
                if not old_bytes.endswith(b"\n"):
                    old_bytes += b"\n"
                payload = old_bytes + body
            else:
                old = pd.read_csv(io.BytesIO(old_bytes), keep_default_na=False, na_values=[""])
                extra = [c for c in old.columns if c not in COLUMNS]
                merged = pd.concat([old, new], ignore_index=True).reindex(columns=COLUMNS + extra)
                payload = merged.to_csv(index=False, lineterminator="\n").encode()
        else:
            payload = new.to_csv(index=False, lineterminator="\n").encode()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # report the write error, not the cleanup's
            raise write_error(e, f"appending {len(new)} row(s) to the leaderboard", path,
                              f"The leaderboard {path.name} is unchanged (the new rows were not written).") from e
    return len(new)


def read_leaderboard(path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no leaderboard at {path}: run `sscb run` first or pass the CSV path")
    return pd.read_csv(path)


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of every metric, one row per configuration (sorted best ACC first)."""
    keys = [c for c in CONFIG_COLUMNS if c in df.columns]
    metrics = [m for m in METRICS if m in df.columns and df[m].notna().any()]
    grouped = df.groupby(keys, sort=False, dropna=False)
    agg = grouped[metrics].agg(["mean", "std"])
    agg.columns = [f"{m}_{s}" for m, s in agg.columns]
    agg["n_seeds"] = grouped["seed"].nunique()
    if "flag" in df.columns:
        agg["flag"] = grouped["flag"].agg(lambda s: ";".join(sorted({str(v) for v in s.dropna() if str(v)})))
    agg = agg.reset_index()
    return agg.sort_values(["dataset", "acc_mean"], ascending=[True, False], kind="stable").reset_index(drop=True)


# Rows compared for "best" and "within noise": one dataset split, one method, one k (the seed paper's Table 1
# compares the rows of one column this way).
MARK_GROUP = ["dataset", "split", "method", "n_clusters"]
MARK_LEGEND = ("**bold**: best mean per dataset × method × k; *italic*: within one standard deviation of it "
               "(the larger of the two rows' std over seeds), so not distinguishable from the best by seed noise")


def mark_best(agg: pd.DataFrame, metrics=None) -> pd.DataFrame:
    """Per ``MARK_GROUP`` and metric: "best" for the highest mean, "within" for rows within one std of it.

    Returns a frame aligned with ``agg`` with one column per metric (values "best", "within" or "").
    A row is within noise when best_mean - mean <= max(best_std, std); a row without a std (one seed)
    counts as std 0. Ties for the highest mean are all "best".
    """
    metrics = [m for m in (metrics or METRICS) if f"{m}_mean" in agg.columns]
    keys = [c for c in MARK_GROUP if c in agg.columns]
    out = pd.DataFrame(index=agg.index, columns=metrics, data="")
    groups = agg.groupby(keys, sort=False, dropna=False).groups.values() if keys else [agg.index]
    for m in metrics:
        mean, std = agg[f"{m}_mean"], agg[f"{m}_std"].fillna(0.0)
        for index in groups:
            g = mean.loc[index].dropna()
            if g.empty:
                continue
            best = g.max()
            best_std = std.loc[g.index[g == best]].max()
            for i in g.index:
                if g[i] == best:
                    out.at[i, m] = "best"
                elif best - g[i] <= max(best_std, std[i]):
                    out.at[i, m] = "within"
    return out


def to_markdown(agg: pd.DataFrame, columns=("backbone", "dataset", "split", "method", "n_clusters", "pca_dim"),
                mark: bool = True, intervals: pd.DataFrame | None = None) -> str:
    """Markdown table of an aggregated frame: metrics as ``mean ± std`` (in %, 1 decimal).

    ``mark``: the best mean per dataset × method × k in bold and rows within one std of it in italics
    (:func:`mark_best`), with a legend under the table. ``intervals``: a frame aligned with ``agg`` holding
    ``{metric}_low`` / ``{metric}_high`` (see :func:`ssl_cluster_bench.significance.leaderboard_intervals`);
    those metrics then also show their interval in brackets.
    """
    out = pd.DataFrame({c: agg[c] for c in columns if c in agg.columns})
    marks = mark_best(agg) if mark else None
    style = {"best": "**{}**", "within": "*{}*", "": "{}"}
    for m in METRICS:
        if f"{m}_mean" in agg.columns:
            mean, std = agg[f"{m}_mean"] * 100, agg[f"{m}_std"].fillna(0.0) * 100
            cells = [f"{a:.1f} ± {b:.1f}" if np.isfinite(a) else "" for a, b in zip(mean, std)]
            if intervals is not None and f"{m}_low" in intervals.columns:
                low, high = intervals[f"{m}_low"] * 100, intervals[f"{m}_high"] * 100
                cells = [f"{c} [{lo:.1f}, {hi:.1f}]" if c and np.isfinite(lo) else c
                         for c, lo, hi in zip(cells, low, high)]
            if marks is not None and m in marks.columns:
                cells = [style[k].format(c) if c else c for c, k in zip(cells, marks[m])]
            out[m.upper()] = cells
    out["seeds"] = agg["n_seeds"]
    if "flag" in agg.columns and agg["flag"].astype(bool).any():
        out["flag"] = agg["flag"]
    text = out.to_markdown(index=False)
    notes = []
    if marks is not None and (marks == "best").to_numpy().any():
        notes.append(MARK_LEGEND)
    if intervals is not None:
        level = intervals.attrs.get("level", 0.95)
        notes.append(f"[low, high]: {level:.0%} interval of the mean over seeds (bootstrap over images with each "
                     f"clustering fixed, plus the seed-to-seed spread)")
    return text + "".join(f"\n\n{n}" for n in notes)
