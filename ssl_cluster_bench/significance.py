"""Which differences are real: intervals for a configuration's ACC / NMI and a two-backbone comparison.

Entry points (plain arrays in, numbers out; the leaderboard and ``sscb compare`` load the arrays):
    metric_interval(y_true, predictions, metric="acc") -> Interval      95 % interval of the mean over seeds
    compare_predictions(y_true, predictions_a, predictions_b) -> Comparison   A - B, paired over images
    leaderboard_intervals(df, results_csv, cache) -> frame aligned with aggregate(df): {metric}_low/_high
    compare_backbones(df, results_csv, "a", "b", dataset, cache) -> [Comparison per metric]

A reported number is the mean over seeds of a metric on one finite image set. Two noises move it: the seed
(which local optimum k-means or a head lands in) and the sample (which images the dataset happens to hold).
The sample part is a bootstrap over images with every clustering held fixed (the same resampled images for
every seed, since every seed saw the same images); the seed part is the spread of the per-seed values, whose
mean has variance s² / S. The two add, and the interval is mean ± t · se with Welch-Satterthwaite degrees of
freedom (the seed variance is estimated from S values only, the bootstrap one from many replicates).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats

from .metrics import confusion_matrix, match_confusion, nmi_from_confusion

__all__ = ["Comparison", "Interval", "compare_backbones", "compare_predictions", "leaderboard_intervals",
           "metric_interval"]


def _acc(confusion: np.ndarray) -> float:
    total = confusion.sum()
    index = match_confusion(confusion)
    return float(confusion[np.arange(confusion.shape[0]), index].sum() / total) if total else float("nan")


METRIC_FUNCTIONS = {"acc": _acc, "nmi": nmi_from_confusion}


@dataclass(frozen=True)
class Interval:
    """Mean over seeds and its ``level`` interval; ``se`` combines ``seed_se`` and ``sample_se``."""

    metric: str
    mean: float
    low: float
    high: float
    se: float
    seed_se: float
    sample_se: float
    df: float
    n_seeds: int
    n_samples: int
    level: float

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    """Difference A - B of the seed means, its interval, and whether the interval excludes 0."""

    metric: str
    mean_a: float
    mean_b: float
    diff: float
    low: float
    high: float
    se: float
    df: float
    p_value: float
    level: float
    significant: bool

    def as_dict(self) -> dict:
        return asdict(self)


def _prepare(y_true, predictions, name: str):
    y_true = np.asarray(y_true)
    if y_true.ndim != 1 or y_true.size == 0:
        raise ValueError(f"y_true must be a non-empty 1-D label array, got shape {y_true.shape}")
    if not isinstance(predictions, (list, tuple)) or not predictions:
        raise ValueError(f"{name} must be a non-empty list of per-seed cluster assignments (one array per seed)")
    tables = []
    for i, pred in enumerate(predictions):
        pred = np.asarray(pred)
        if pred.shape != y_true.shape:
            raise ValueError(f"{name}[{i}] has shape {pred.shape}, y_true has {y_true.shape}: every seed's "
                             f"assignment must cover the same images as y_true")
        # Cells of the confusion matrix per image, so a resample's table is one weighted bincount.
        _, clusters, classes = confusion_matrix(y_true, pred)
        p = np.searchsorted(clusters, pred)
        t = np.searchsorted(classes, y_true)
        tables.append((p * classes.size + t, (clusters.size, classes.size)))
    return y_true, tables


def _metric(table, weights, metric: str) -> float:
    cells, shape = table
    counts = np.bincount(cells, weights=weights, minlength=shape[0] * shape[1]).reshape(shape)
    counts = counts.astype(np.int64)
    counts = counts[counts.sum(axis=1) > 0]  # clusters absent from a resample play no part in it
    return METRIC_FUNCTIONS[metric](counts)


def _check_options(metric: str, level: float, n_boot: int) -> None:
    if metric not in METRIC_FUNCTIONS:
        raise ValueError(f"metric must be one of {sorted(METRIC_FUNCTIONS)}, got {metric!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 20:
        raise ValueError(f"n_boot must be at least 20 for a usable variance estimate, got {n_boot}")


def _seed_means(tables_list, weights, metric):
    return [np.mean([_metric(t, weights, metric) for t in tables]) for tables in tables_list]


def _bootstrap(n: int, tables_list, metric: str, n_boot: int, random_state) -> np.ndarray:
    """(n_boot, len(tables_list)) seed means on image resamples (multinomial counts, shared by all sets)."""
    rng = np.random.default_rng(random_state)
    out = np.empty((n_boot, len(tables_list)))
    for b in range(n_boot):
        weights = np.bincount(rng.integers(n, size=n), minlength=n).astype(np.float64)
        out[b] = _seed_means(tables_list, weights, metric)
    return out


def _welch_df(seed_var: float, n_seeds: int, sample_var: float) -> float:
    total = seed_var + sample_var
    if seed_var <= 0 or n_seeds < 2:
        return float("inf")
    return total ** 2 / (seed_var ** 2 / (n_seeds - 1))


def metric_interval(y_true, predictions: Sequence, metric: str = "acc", *, level: float = 0.95,
                    n_boot: int = 200, random_state=0) -> Interval:
    """Interval for the mean over seeds of ``metric`` ("acc" or "nmi"), from seed and image noise.

    ``predictions``: one cluster-assignment array per seed, each aligned with ``y_true`` (score only the
    labelled images: pass ``y_true[y_true >= 0]`` and the matching entries). The images are resampled with
    replacement ``n_boot`` times with every seed's clustering fixed; the variance of the seed mean over
    those resamples is the sample part, s²/S over the S seeds the seed part.
    """
    _check_options(metric, level, n_boot)
    y_true, tables = _prepare(y_true, list(predictions), "predictions")
    n, n_seeds = y_true.size, len(tables)
    per_seed = np.array([_metric(t, None, metric) for t in tables])
    mean = float(per_seed.mean())
    seed_var = float(per_seed.var(ddof=1) / n_seeds) if n_seeds > 1 else 0.0
    boot = _bootstrap(n, [tables], metric, n_boot, random_state)[:, 0]
    sample_var = float(boot.var(ddof=1))
    se = float(np.sqrt(seed_var + sample_var))
    df = _welch_df(seed_var, n_seeds, sample_var)
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return Interval(metric, mean, mean - half, mean + half, se, float(np.sqrt(seed_var)), float(np.sqrt(sample_var)),
                    df, n_seeds, n, level)


def compare_predictions(y_true, predictions_a: Sequence, predictions_b: Sequence, metric: str = "acc", *,
                        level: float = 0.95, n_boot: int = 200, random_state=0) -> Comparison:
    """Does A beat B beyond seed and sample noise? Paired bootstrap over the images both were scored on.

    The same image resample is applied to both, so what the two share (hard images, class balance) cancels
    in the difference; the seed parts of A and B are independent and add. ``significant`` is True when the
    ``level`` interval of A - B excludes 0; ``p_value`` is the matching two-sided t-test value.
    """
    _check_options(metric, level, n_boot)
    y_true, tables_a = _prepare(y_true, list(predictions_a), "predictions_a")
    _, tables_b = _prepare(y_true, list(predictions_b), "predictions_b")
    per_a = np.array([_metric(t, None, metric) for t in tables_a])
    per_b = np.array([_metric(t, None, metric) for t in tables_b])
    diff = float(per_a.mean() - per_b.mean())
    var_a = float(per_a.var(ddof=1) / per_a.size) if per_a.size > 1 else 0.0
    var_b = float(per_b.var(ddof=1) / per_b.size) if per_b.size > 1 else 0.0
    boot = _bootstrap(y_true.size, [tables_a, tables_b], metric, n_boot, random_state)
    sample_var = float((boot[:, 0] - boot[:, 1]).var(ddof=1))
    seed_var = var_a + var_b
    total = seed_var + sample_var
    # Welch-Satterthwaite over the two seed variances; the bootstrap variance counts as exactly known.
    parts = [(v, s) for v, s in ((var_a, per_a.size), (var_b, per_b.size)) if v > 0 and s > 1]
    df = total ** 2 / sum(v ** 2 / (s - 1) for v, s in parts) if parts else float("inf")
    se = float(np.sqrt(total))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    p_value = float(2 * stats.t.sf(abs(diff) / se, df)) if se > 0 else float(diff == 0)
    return Comparison(metric, float(per_a.mean()), float(per_b.mean()), diff, diff - half, diff + half, se, float(df),
                      p_value, level, bool(diff - half > 0 or diff + half < 0))


# --- on a leaderboard: predictions from the predictions store, labels from the feature cache -----------------
def _labels_for(cache_key: str, cache, entries: dict) -> tuple[np.ndarray, np.ndarray]:
    """(labels, dataset indices) of the cache entry a row was clustered from."""
    from .cache import FeatureCache

    if cache_key not in entries:
        root = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
        entries.update({e.path.name: e for e in root.entries()})
    if cache_key not in entries:
        raise FileNotFoundError(f"cache entry {cache_key!r} (the rows' cache_key) is not in the feature cache; "
                                f"pass --cache-dir with the cache the rows were made from")
    entry = entries[cache_key]
    return np.asarray(entry.labels), np.asarray(entry.indices)


def _seed_predictions(rows, results_csv) -> list[np.ndarray]:
    from .predictions import load_predictions

    if "run_id" not in rows.columns or rows["run_id"].isna().any():
        raise FileNotFoundError("these rows have no run_id: they were written before predictions were kept; "
                                "re-run the configuration to get intervals")
    return [load_predictions(results_csv, run_id) for run_id in rows.sort_values("seed")["run_id"]]


def leaderboard_intervals(df, results_csv, cache=None, metrics=("acc", "nmi"), *, level: float = 0.95,
                          n_boot: int = 200, progress: bool = True):
    """Intervals (:func:`metric_interval`) for every configuration of a leaderboard frame.

    Returns a frame aligned row by row with ``leaderboard.aggregate(df)``, with ``{metric}_low`` and
    ``{metric}_high`` (NaN where a configuration's predictions or cache entry are missing; the reason is in
    ``interval_note``). Only labelled images (label >= 0) count, as in the rows' own scores.
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from .leaderboard import GROUP_COLUMNS, aggregate

    keys = [c for c in GROUP_COLUMNS if c in df.columns]
    agg = aggregate(df)
    entries: dict = {}
    out = pd.DataFrame(index=agg.index, columns=[f"{m}_{s}" for m in metrics for s in ("low", "high")],
                       dtype=float)
    out["interval_note"] = ""
    for i in tqdm(agg.index, desc="intervals", unit="config", disable=not progress, leave=False):
        match = np.ones(len(df), dtype=bool)
        for key in keys:
            value = agg.at[i, key]
            match &= (df[key].isna() if pd.isna(value) else df[key] == value).to_numpy()
        rows = df[match]
        try:
            labels, _ = _labels_for(rows["cache_key"].iloc[0], cache, entries)
            predictions = _seed_predictions(rows, results_csv)
            labelled = labels >= 0
            if any(p.shape != labels.shape for p in predictions):
                raise ValueError("the stored assignments do not cover the rows' cache entry (e.g. transfer rows)")
            for m in metrics:
                iv = metric_interval(labels[labelled], [p[labelled] for p in predictions], m, level=level,
                                     n_boot=n_boot)
                out.at[i, f"{m}_low"], out.at[i, f"{m}_high"] = iv.low, iv.high
        except (FileNotFoundError, ValueError, KeyError) as e:
            out.at[i, "interval_note"] = str(e).split(";")[0]
    out.attrs["level"] = level
    return out


def compare_backbones(df, results_csv, backbone_a: str, backbone_b: str, dataset: str, cache=None, *,
                      method: str = "kmeans", n_clusters: int | None = None, metrics=("acc", "nmi"),
                      level: float = 0.95, n_boot: int = 200) -> list[Comparison]:
    """:func:`compare_predictions` for two backbones' rows on ``dataset`` (one configuration each).

    ``n_clusters`` defaults to the number of classes. Both are scored on the images both entries hold
    (matched by dataset index), labelled ones only.
    """
    picked = []
    for backbone in (backbone_a, backbone_b):
        rows = df[(df["backbone"] == backbone) & (df["dataset"] == dataset) & (df["method"] == method)]
        if rows.empty:
            raise ValueError(f"no {method} rows for backbone {backbone!r} on {dataset!r} in {results_csv}")
        k = n_clusters or int(rows["n_classes"].iloc[0])
        rows = rows[rows["n_clusters"] == k]
        if "run_id" in rows.columns:
            rows = rows[rows["run_id"].notna()]
        if rows.empty:
            raise ValueError(f"no {method} rows with k={k} and stored predictions for {backbone!r} on {dataset!r}; "
                             f"pass --k or re-run that configuration")
        # the most recent configuration (its protocol) when the backbone was run several ways
        config = "protocol_hash" if "protocol_hash" in rows.columns and rows["protocol_hash"].notna().all() \
            else "cache_key"
        latest = rows.sort_values("timestamp")[config].iloc[-1] if "timestamp" in rows.columns \
            else rows[config].iloc[-1]
        rows = rows[rows[config] == latest].drop_duplicates("seed", keep="last")
        picked.append(rows)
    entries: dict = {}
    (labels_a, index_a), (labels_b, index_b) = (_labels_for(r["cache_key"].iloc[0], cache, entries) for r in picked)
    common, pos_a, pos_b = np.intersect1d(index_a, index_b, return_indices=True)
    if common.size == 0:
        raise ValueError(f"{backbone_a!r} and {backbone_b!r} share no images on {dataset!r}")
    keep = labels_a[pos_a] >= 0
    pos_a, pos_b = pos_a[keep], pos_b[keep]
    preds_a = [p[pos_a] for p in _seed_predictions(picked[0], results_csv)]
    preds_b = [p[pos_b] for p in _seed_predictions(picked[1], results_csv)]
    return [compare_predictions(labels_a[pos_a], preds_a, preds_b, m, level=level, n_boot=n_boot) for m in metrics]
