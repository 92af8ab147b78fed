"""Leaderboard: tidy CSV of results (one row per backbone × dataset × split × method × k × PCA dim × seed).

Entry points:
    append_rows(path, rows) -> int        add rows; existing rows are never modified or lost
    check_appendable(path)                 raise unless ``path`` is missing, empty or a whole leaderboard we may write
    read_leaderboard(path) -> DataFrame
    aggregate(df) -> DataFrame            mean ± std over seeds, computed from the rows (one per run id)
    to_markdown(agg) -> str                 best mean in bold, rows within one std of it in italics

The file is guarded (see :func:`check_appendable`): rows are only added to a file whose header is a column set
this tool wrote (:data:`COLUMNS` or one of :data:`OLDER_COLUMNS`), never to another tool's table; a symlink is
followed (the rows, the lock and the temporary file go to its target, the link stays); a file without write
permission is refused. A row cut short (a full disk, an interrupted copy) is refused on read and on append
with its line number, never averaged. A last row without its final newline is accepted when it is whole: every
field there, the numbers parse and the timestamp is complete.
"""
from __future__ import annotations

import csv
import fcntl
import io
import os
import re
import stat
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd

from .safeio import atomic_write, write_error

__all__ = ["COLUMNS", "METRICS", "OLDER_COLUMNS", "LeaderboardFileError", "aggregate", "append_rows", "latest_runs",
           "check_appendable", "check_writable", "default_results_path", "lock_path", "mark_best", "read_leaderboard",
           "rows_of", "to_markdown"]

# Identity of a configuration: rows sharing all of these differ only by seed.
CONFIG_COLUMNS = [
    "backbone", "weights", "dataset", "split", "protocol", "method", "n_classes", "n_clusters",
    "overcluster", "pca_dim", "whiten", "l2_normalize", "backend", "n_init", "kmeans_iter",
    "max_points_per_centroid", "protocol_hash",
]
# Label metrics (higher is better). fmi, homogeneity, completeness: Lowe et al.'s set beside AMI. The *_clustered
# ones score only the points a method with noise (hdbscan) put in a cluster; the plain ones count its noise as one
# more cluster (both as Lowe et al. report them).
METRICS = ["acc", "nmi", "ami", "ari", "top5", "acc_tr", "acc_val", "acc_overlap", "acc_nonoverlap", "chance",
           "fmi", "homogeneity", "completeness", "acc_clustered", "nmi_clustered", "ami_clustered", "ari_clustered"]
_NEW_METRICS = ("fmi", "homogeneity", "completeness", "acc_clustered", "nmi_clustered", "ami_clustered",
                "ari_clustered")
# reduce: the reducer of the row's space; k_criterion: how k was picked ("" = given); n_found: clusters the method
# returned (noise not counted); noise_fraction: the share of points left unclustered; calinski_harabasz and
# davies_bouldin: label-free, on the reduced features, like silhouette.
COLUMNS = CONFIG_COLUMNS + ["reduce", "k_criterion", "n_found", "seed", "n_samples"] + METRICS + [
    "noise_fraction", "score", "silhouette", "calinski_harabasz", "davies_bouldin", "flag", "seconds", "run_id",
    "cache_key", "versions", "timestamp",
]
#: metrics ``--rank-by`` may order the leaderboard by
RANK_METRICS = ("acc", "nmi", "ami", "ari", "fmi", "homogeneity", "completeness")


def _without(*names: str) -> list[str]:
    return [c for c in COLUMNS if c not in names]


# The column sets earlier versions wrote (newest first; `git log -p ssl_cluster_bench/leaderboard.py`), each an
# ordered subset of COLUMNS. Their leaderboards are still appended to (the header is widened to COLUMNS); any
# other header is another tool's table, which is never rewritten.
_PEER = ("reduce", "k_criterion", "n_found", "noise_fraction", "calinski_harabasz", "davies_bouldin", *_NEW_METRICS)
OLDER_COLUMNS = [
    _without(*_PEER),
    _without(*_PEER, "silhouette"),
    _without(*_PEER, "silhouette", "protocol_hash", "score", "run_id"),
    _without(*_PEER, "silhouette", "protocol_hash", "score", "run_id", "n_init", "kmeans_iter",
             "max_points_per_centroid"),
    _without(*_PEER, "silhouette", "protocol_hash", "score", "run_id", "n_init", "kmeans_iter",
             "max_points_per_centroid", "acc_tr", "acc_val", "acc_overlap", "acc_nonoverlap", "chance"),
]
# What one mean ± std is taken over: the configuration and the data it ran on (a cache entry follows the data).
GROUP_COLUMNS = CONFIG_COLUMNS + ["cache_key"]
# Columns every row has: a file without them in its header is no leaderboard.
_REQUIRED = ("backbone", "dataset", "method", "n_clusters", "seed", "acc")
# Columns that are averaged or grouped on: a value there that is not a number means the row was damaged.
_NUMERIC = ["n_clusters", "seed", "n_samples", "seconds", "n_found", "noise_fraction", *METRICS]
# strftime("%Y-%m-%dT%H:%M:%S%z"): a last field shorter than this was cut.
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d([+-]\d{4})?")


class LeaderboardFileError(ValueError):
    """The results file is not a whole leaderboard this tool wrote; the message names the file, line and fix."""


def _damaged(shown, line: int, problem: str) -> LeaderboardFileError:
    return LeaderboardFileError(
        f"leaderboard {shown} line {line} {problem}: the row was cut short or damaged (a full disk, an interrupted "
        f"copy, an edit), so it is not averaged and nothing was appended; restore the file from a copy or delete "
        f"line {line} (the next read checks the rest)")


def _target(path) -> Path:
    """The file ``path`` names, its symlinks followed (the rows go to the shared target; the link stays)."""
    return Path(os.path.realpath(path))


def lock_path(path) -> Path:
    """The lock file of the leaderboard ``path``: next to the resolved target, so every link to one file shares it."""
    target = _target(path)
    return target.with_name(target.name + ".lock")


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _parse(data: bytes, shown) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a leaderboard's bytes; raises LeaderboardFileError at the first damaged line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _damaged(shown, _line_of(data, e.start), "is not UTF-8 text") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    # the line of a last row without its newline: the one row whose end is not proven by a line break
    unterminated = text.count("\n") + 1 if not text.endswith("\n") else 0
    rows, header, numeric, line = [], None, [], 0
    try:
        for record in reader:
            line = reader.line_num
            if not record:
                continue  # a blank line, as pandas skips it
            if header is None:
                header = record
                numeric = [(c, header.index(c)) for c in _NUMERIC if c in header]
                continue
            problem = None
            if len(record) != len(header):
                problem = f"has {len(record)} of the {len(header)} fields"
            else:
                for column, i in numeric:
                    try:
                        float(record[i] or 0)
                    except ValueError:
                        problem = f"has {column}={record[i]!r}, not a number"
                        break
            if (problem is None and line == unterminated and header[-1] == "timestamp" and record[-1]
                    and not _TIMESTAMP.fullmatch(record[-1])):
                problem = f"ends in the middle of its timestamp {record[-1]!r} and has no final newline"
            if problem:
                raise _damaged(shown, line, problem)
            rows.append(record)
    except csv.Error as e:
        raise _damaged(shown, reader.line_num or line, f"is not valid CSV ({e})") from None
    return header or [], rows


def _check_permission(target: Path, shown) -> os.stat_result | None:
    try:
        st = target.stat()
    except FileNotFoundError:
        return None
    except OSError as e:  # a parent that is a file, a folder we may not enter
        raise OSError(f"results path {shown} is not writable: {e}") from e
    if not stat.S_ISREG(st.st_mode):
        raise LeaderboardFileError(f"results path {shown} is not a regular file; pass a CSV file path for the "
                                   f"results")
    # The mode bits too: root may write any file, but a file nobody may write was made read-only on purpose.
    if not os.access(target, os.W_OK) or not st.st_mode & 0o222:
        raise PermissionError(f"results file {shown} is read-only (mode {stat.S_IMODE(st.st_mode):04o}), so it was "
                              f"left unchanged; make it writable (chmod u+w {shown}) or pass another results file")
    return st


def _check_header(header: list[str], shown) -> None:
    if header != COLUMNS and header not in OLDER_COLUMNS:
        start = ",".join(header[:4]) + (",..." if len(header) > 4 else "")
        raise LeaderboardFileError(
            f"results file {shown} is not a leaderboard written by sscb (its header starts {start!r}, a leaderboard's "
            f"starts {','.join(COLUMNS[:4]) + ',...'!r}), so it was left unchanged; pass another results file (a "
            f"missing or empty file becomes a new leaderboard)")


def check_appendable(path) -> None:
    """Raise unless rows may be appended to ``path``: missing, empty, or a whole leaderboard this tool wrote
    (known header, no row cut short) that we may write. Reads only; a refused file is left as it is."""
    target = _target(path)
    if _check_permission(target, path) is not None:
        data = target.read_bytes()
        if data.strip():
            header, _ = _parse(data, path)
            _check_header(header, path)


def check_writable(path: Path) -> None:
    """Raise before any work when rows could not be appended to ``path``: a file that is not a leaderboard of
    ours (:func:`check_appendable`), or a folder where its lock file cannot be made.

    Nothing is left behind: the folders and the lock file are made by the first append, so a run refused
    later (an unknown dataset, say) leaves no trace beside a mistyped ``--results``. The probe is an unnamed
    temporary file in the nearest existing folder (``tempfile.TemporaryFile``, gone when closed)."""
    check_appendable(path)  # before any file is made next to a file that is not ours
    lock = lock_path(path)
    try:
        if lock.exists():
            with open(lock, "a"):
                pass
            return
        folder = lock.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is a file, not a folder")
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OSError(f"results path {path} is not writable: {e}") from e


def rows_of(df: pd.DataFrame, protocol) -> pd.Series:
    """Which leaderboard rows ``protocol`` produced (or would): for each of its methods, the rows with that
    method's row hash (``protocol.row_hash(method)``), one of its k (``n_clusters``) or overcluster factors, and
    one of its seeds. Rows of another protocol that made the very same runs match too: they are the same runs."""
    mask = pd.Series(False, index=df.index)
    if df.empty or "protocol_hash" not in df.columns:
        return mask
    if protocol.n_clusters:
        k_ok = df["n_clusters"].isin(list(protocol.n_clusters))
    else:
        # factors are stored as given (1.5 -> 1.5); compare at the column's 4-decimal rounding
        k_ok = df["overcluster"].astype(float).round(4).isin([round(f, 4) for f in protocol.overcluster])
    seed_ok = df["seed"].isin(list(protocol.seeds))
    for method in protocol.methods:
        mask |= (df["method"] == method) & (df["protocol_hash"] == protocol.row_hash(method))
    return mask & k_ok & seed_ok


def default_results_path() -> Path:
    return Path("results") / "leaderboard.csv"


def _frame(rows) -> pd.DataFrame:
    df = pd.DataFrame(list(rows))
    unknown = sorted(set(df.columns) - set(COLUMNS))
    if unknown:
        raise ValueError(f"leaderboard rows have unknown columns {unknown}; known columns: {COLUMNS}")
    missing = [c for c in _REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"leaderboard rows lack required columns {missing}")
    return df.reindex(columns=COLUMNS)


def append_rows(path, rows, *, unique_run_ids: bool = False, known_counts: Mapping[str, int] | None = None,
                before_write: Callable[[list[dict]], None] | None = None) -> int:
    """Append ``rows`` (dicts) to the CSV at ``path`` and return how many were written.

    The new rows are formatted completely before the file is touched, and the file is replaced atomically
    (temporary file + rename next to the target, under an exclusive lock, keeping the file's mode), so an
    interrupted or failed append leaves the old file intact and concurrent appends never lose each other's rows.
    Existing lines are copied byte for byte; only a file with an older column set has its header widened. A
    file that is not a whole leaderboard this tool wrote is refused (:func:`check_appendable`).

    ``unique_run_ids``: rows whose ``run_id`` the file holds when the lock is taken are not written, so two
    identical runs started together store each run once. ``known_counts`` (run id -> rows the caller saw when it
    decided to run them again, e.g. rows copied without their assignment) raises the count a run id needs to
    count as stored. ``before_write(rows)`` is called under the lock with the rows about to be written (e.g. to
    store their assignments first); if it raises, nothing is appended.
    """
    shown = Path(path)
    target = _target(path)
    rows = list(rows)
    if not rows:
        return 0
    new = _frame(rows)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = open(lock_path(target), "a")
    except OSError as e:
        raise OSError(f"results path {shown} is not writable: {e}") from e
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        st = _check_permission(target, shown)
        old_bytes = target.read_bytes() if st is not None else b""
        header, old_rows = _parse(old_bytes, shown) if old_bytes.strip() else ([], [])
        if header:
            _check_header(header, shown)
        if unique_run_ids:
            # read under the lock: what a concurrent identical run stored since this one decided to run counts
            stored = Counter(r[header.index("run_id")] for r in old_rows) if "run_id" in header else Counter()
            known = known_counts or {}
            keep = []
            for run_id in new["run_id"]:
                if pd.isna(run_id):
                    keep.append(True)
                    continue
                keep.append(stored[run_id] <= known.get(run_id, 0))
                stored[run_id] += 1  # a run id twice among the new rows is written once
            new = new[keep]
            if new.empty:
                return 0
        if before_write is not None:
            before_write(new.to_dict("records"))
        if header == COLUMNS:
            body = new.to_csv(index=False, header=False, lineterminator="\n").encode()
            if not old_bytes.endswith(b"\n"):
                old_bytes += b"\n"  # a whole last row without its newline (checked by _parse)
            payload = old_bytes + body
        elif header:
            old = pd.read_csv(io.BytesIO(old_bytes), keep_default_na=False, na_values=[""])
            merged = pd.concat([old, new], ignore_index=True).reindex(columns=COLUMNS)
            payload = merged.to_csv(index=False, lineterminator="\n").encode()
        else:
            payload = new.to_csv(index=False, lineterminator="\n").encode()
        try:
            with atomic_write(target) as f:
                f.write(payload)
                if st is not None:  # the replacement keeps the file's permissions (and owner, where we may)
                    os.fchmod(f.fileno(), stat.S_IMODE(st.st_mode))
                    try:
                        os.fchown(f.fileno(), st.st_uid, st.st_gid)
                    except PermissionError:
                        pass  # only root may give a file away; the rows matter more than the owner
        except OSError as e:
            raise write_error(e, f"appending {len(new)} row(s) to the leaderboard", shown,
                              f"The leaderboard {shown.name} is unchanged (the new rows were not written).") from e
    return len(new)


def _cut_from(header: list[str], known: list[str]) -> bool:
    """Whether ``header`` is ``known`` cut off somewhere (inside its last field included)."""
    n = len(header)
    return 0 < n <= len(known) and header[:-1] == known[:n - 1] and known[n - 1].startswith(header[-1])


def read_leaderboard(path) -> pd.DataFrame:
    """The leaderboard's rows; an empty file is a leaderboard without rows. A row cut short or damaged is
    refused with its line number (it would otherwise be averaged as if it were a real result)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no leaderboard at {path}: run `sscb run` first or pass the CSV path")
    data = path.read_bytes()
    if not data.strip():
        return pd.DataFrame(columns=COLUMNS)
    header, _ = _parse(data, path)
    if header != COLUMNS and header not in OLDER_COLUMNS:
        if b"\n" not in data and any(_cut_from(header, known) for known in [COLUMNS, *OLDER_COLUMNS]):
            raise LeaderboardFileError(f"leaderboard {path} ends inside its header line (cut short: a full disk, an "
                                       f"interrupted copy), so it holds no rows; restore it from a copy")
        raise LeaderboardFileError(
            f"{path} is not a leaderboard written by sscb (its header starts {','.join(header[:4])!r}); pass the "
            f"leaderboard CSV that sscb run wrote")
    # a run id is 16 hex digits, which pandas would read as a number when they happen to look like one ("12e4...")
    return pd.read_csv(io.BytesIO(data), dtype={"run_id": str})


def latest_runs(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with one row per run id, the last one written: a run repeated (a committed leaderboard re-run on a
    fresh clone, where its assignments are missing; ``--rerun``) is the same run, so it must not count as two
    seeds in a standard deviation. Rows without a run id are all kept."""
    if "run_id" not in df.columns:
        return df
    repeated = df["run_id"].notna() & df["run_id"].duplicated(keep="last")
    return df[~repeated] if repeated.any() else df


def _check_rank_by(rank_by: str) -> None:
    if rank_by not in RANK_METRICS:
        from .errors import did_you_mean

        raise ValueError(f"rank_by must be one of {', '.join(RANK_METRICS)}, got {rank_by!r}"
                         f"{did_you_mean(rank_by, RANK_METRICS)}")


def aggregate(df: pd.DataFrame, rank_by: str = "acc") -> pd.DataFrame:
    """Mean and std over seeds of every metric, one row per configuration (sorted best ``rank_by`` first, e.g.
    "ami" as Lowe et al. rank; default ACC).

    A configuration includes its cache entry (``cache_key``): rows made on other data under the same dataset
    name (images rewritten between two runs, another folder) are never averaged together."""
    _check_rank_by(rank_by)
    df = latest_runs(df)
    keys = [c for c in GROUP_COLUMNS if c in df.columns]
    # ACC always (empty where no row had labels: the table and the sort need the column); silhouette, the label-free
    # score every row has, for the rows of data without labels
    metrics = [m for m in [*METRICS, "silhouette"] if m in df.columns and (m == "acc" or df[m].notna().any())]
    grouped = df.groupby(keys, sort=False, dropna=False)
    agg = grouped[metrics].agg(["mean", "std"])
    agg.columns = [f"{m}_{s}" for m, s in agg.columns]
    agg["n_seeds"] = grouped["seed"].nunique()
    if "flag" in df.columns:
        agg["flag"] = grouped["flag"].agg(lambda s: ";".join(sorted({str(v) for v in s.dropna() if str(v)})))
    # descriptive, not part of a configuration's identity (the protocol hash already names the reducer): the
    # rows written before these columns existed stay in their groups
    for column in ("reduce", "k_criterion"):
        if column in df.columns and df[column].notna().any():
            agg[column] = grouped[column].first()
    for column in ("noise_fraction", "n_found"):
        if column in df.columns and df[column].notna().any():
            agg[f"{column}_mean"] = grouped[column].mean()
    agg = agg.reset_index()
    if f"{rank_by}_mean" not in agg.columns:
        agg[f"{rank_by}_mean"] = np.nan
        agg[f"{rank_by}_std"] = np.nan
    agg.attrs["rank_by"] = rank_by
    return agg.sort_values(["dataset", f"{rank_by}_mean"], ascending=[True, False], kind="stable",
                           na_position="last").reset_index(drop=True)


# Rows compared for "best" and "within noise": one dataset split, one method, one k (the seed paper's Table 1
# compares the rows of one column this way).
MARK_GROUP = ["dataset", "split", "method", "n_clusters"]  # n_clusters: "k:<criterion>" where k was picked
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
    by = agg
    if "k_criterion" in agg.columns and "n_clusters" in keys:
        # k picked per backbone (--k auto) or found by the method: those rows compare with each other whatever k
        # each landed on, not with the rows of one given k
        how = agg["k_criterion"].fillna("").astype(str)
        by = agg.assign(n_clusters=agg["n_clusters"].astype(object).where(how == "", "k:" + how))
    groups = by.groupby(keys, sort=False, dropna=False).groups.values() if keys else [agg.index]
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
                mark: bool = True, intervals: pd.DataFrame | None = None, rank_by: str | None = None) -> str:
    """Markdown table of an aggregated frame: metrics as ``mean ± std`` (in %, 1 decimal).

    ``mark``: the best mean per dataset × method × k in bold and rows within one std of it in italics
    (:func:`mark_best`), with a legend under the table. ``intervals``: a frame aligned with ``agg`` holding
    ``{metric}_low`` / ``{metric}_high`` (see :func:`ssl_cluster_bench.significance.leaderboard_intervals`);
    those metrics then also show their interval in brackets. ``rank_by`` (default: the metric ``aggregate`` sorted
    by): its column comes first among the metrics and the legend says so.
    """
    rank_by = rank_by or agg.attrs.get("rank_by", "acc")
    _check_rank_by(rank_by)
    columns = list(columns)
    if "reduce" in agg.columns and "pca_dim" in columns and agg["reduce"].fillna("pca").ne("pca").any():
        columns.insert(columns.index("pca_dim"), "reduce")  # another space than PCA among the rows: say which
    out = pd.DataFrame({c: agg[c] for c in columns if c in agg.columns})
    if "n_clusters" in out.columns and "n_found_mean" in agg.columns and out["n_clusters"].isna().any():
        # methods that find their own k (hdbscan, affinity): the mean number found over seeds
        out["n_clusters"] = [f"{k:g}" if pd.notna(k) else f"{found:.1f} found" if pd.notna(found) else ""
                             for k, found in zip(agg["n_clusters"], agg["n_found_mean"])]
    if "cache_key" in agg.columns and "cache_key" not in out.columns and len(out.columns) and \
            out.duplicated(keep=False).any():
        # the same configuration on different data (e.g. images rewritten between runs): say which entry
        out["cache entry"] = agg["cache_key"]
    marks = mark_best(agg) if mark else None
    style = {"best": "**{}**", "within": "*{}*", "": "{}"}
    # rows of data without labels (flat image folders, --unlabelled): their label metrics show "–", not a blank
    # that reads as "does not apply", and the silhouette is shown beside them as the one score they have
    unlabelled = agg["acc_mean"].isna() if "acc_mean" in agg.columns else pd.Series(False, index=agg.index)
    for m in [rank_by] + [m for m in METRICS if m != rank_by]:
        if f"{m}_mean" in agg.columns:
            mean, std = agg[f"{m}_mean"] * 100, agg[f"{m}_std"].fillna(0.0) * 100
            cells = [f"{a:.1f} ± {b:.1f}" if np.isfinite(a) else "–" if none else ""
                     for a, b, none in zip(mean, std, unlabelled)]
            if intervals is not None and f"{m}_low" in intervals.columns:
                low, high = intervals[f"{m}_low"] * 100, intervals[f"{m}_high"] * 100
                cells = [f"{c} [{lo:.1f}, {hi:.1f}]" if c and np.isfinite(lo) else c
                         for c, lo, hi in zip(cells, low, high)]
            if marks is not None and m in marks.columns:
                cells = [style[k].format(c) if c else c for c, k in zip(cells, marks[m])]
            out[m.upper()] = cells
    if unlabelled.any() and "silhouette_mean" in agg.columns:
        out["SILHOUETTE"] = [f"{a:.3f} ± {b:.3f}" if np.isfinite(a) else "" for a, b in
                             zip(agg["silhouette_mean"], agg["silhouette_std"].fillna(0.0))]
    if "noise_fraction_mean" in agg.columns and (agg["noise_fraction_mean"] > 0).any():
        out["noise %"] = [f"{v * 100:.1f}" if np.isfinite(v) else "" for v in agg["noise_fraction_mean"]]
    out["seeds"] = agg["n_seeds"]
    if "flag" in agg.columns and agg["flag"].astype(bool).any():
        out["flag"] = agg["flag"]
    text = out.to_markdown(index=False)
    notes = []
    if rank_by != "acc":
        notes.append(f"Rows ranked by {rank_by.upper()} (best mean first per dataset).")
    if marks is not None and (marks == "best").to_numpy().any():
        notes.append(MARK_LEGEND)
    if intervals is not None:
        level = intervals.attrs.get("level", 0.95)
        notes.append(f"[low, high]: {level:.0%} interval of the mean over seeds (bootstrap over images with each "
                     f"clustering fixed, plus the seed-to-seed spread)")
    return text + "".join(f"\n\n{n}" for n in notes)
