"""Label-free model selection: how well each unsupervised criterion of the leaderboard rows tracks accuracy.

Entry points:
    criteria_correlations(df, target="acc") -> DataFrame, one line per dataset × k × criterion × scope
    format_table(table) -> the same as display strings; criteria_markdown(table) -> markdown

Every leaderboard row carries two criteria computed without labels: ``silhouette`` (the silhouette coefficient of
the clustering on the reduced features; higher is better, Lowe et al. 2024) and ``score`` (the method's own
criterion: SCAN/TEMI loss of the kept head, 1 − TURTLE's generalisation score, k-means inertia per row; lower is
better). A criterion is useful for choosing a backbone or a method without labels when it ranks the rows as the
accuracy does. For each scope this reports

- the Spearman correlation ρ between the criterion, signed so that larger means better, and ``target`` over the
  rows (seeds × backbones × methods of the scope), with its two-sided p-value;
- the selection it makes: the configuration (backbone × method × protocol, seeds averaged) with the best mean
  criterion, its mean ``target``, and the best mean ``target`` of the scope (what an oracle with labels picks).

Scopes: per dataset × split × k, the silhouette over all methods and backbones, and each method's score over its
backbones; a method whose score does not compare across feature spaces (``score_across_spaces = False``:
k-means inertia, in feature units; TURTLE's linear accuracy, which rises with the dimension) over the seeds of
one backbone only. Then pooled over the datasets, at k = the number of classes, correlations only (a selection
happens within one dataset).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

__all__ = ["CRITERIA", "LEGEND", "criteria_correlations", "format_table", "criteria_markdown"]

#: criterion column -> sign that makes larger better
CRITERIA = {"silhouette": 1.0, "score": -1.0}

#: how to read the table (printed above it by the CLI and the benchmark)
LEGEND = ("silhouette: higher is better; score: the method's own, lower is better; ρ is signed so that positive "
          "means the criterion agrees with ACC")

COLUMNS = ["dataset", "split", "n_clusters", "criterion", "scope", "rows", "spearman", "p_value", "configs",
           "picked", "picked_target", "best_target"]


def _across_spaces(method: str) -> bool:
    from .methods import get_method

    try:
        return bool(get_method(method).score_across_spaces)
    except ValueError:  # a method no longer registered: compare its scores only within one space
        return False


def _rho(crit: pd.Series, target: pd.Series) -> tuple[float, float]:
    if len(crit) < 3 or crit.nunique() < 2 or target.nunique() < 2:
        return float("nan"), float("nan")
    res = spearmanr(crit, target)
    return float(res.statistic), float(res.pvalue)


def _line(rows: pd.DataFrame, criterion: str, target: str, select: bool) -> dict:
    ok = rows[np.isfinite(rows[criterion].astype(float)) & np.isfinite(rows[target].astype(float))]
    signed = CRITERIA[criterion] * ok[criterion].astype(float)
    rho, p = _rho(signed, ok[target].astype(float))
    out = {"rows": len(ok), "spearman": rho, "p_value": p}
    keys = [c for c in ("backbone", "method", "protocol_hash") if c in ok.columns]
    if select and len(ok) and keys:
        configs = ok.assign(_crit=signed).groupby(keys, sort=False, dropna=False)[["_crit", target]].mean()
        pick = configs["_crit"].idxmax()
        pick = pick if isinstance(pick, tuple) else (pick,)
        out.update(configs=len(configs), picked=" · ".join(str(v) for v in pick[:2]),
                   picked_target=float(configs.loc[pick if len(pick) > 1 else pick[0], target]),
                   best_target=float(configs[target].max()))
    return out


def criteria_correlations(df: pd.DataFrame, target: str = "acc") -> pd.DataFrame:
    """Spearman ρ of every label-free criterion with ``target`` and the selection it makes (see module doc).

    ``df``: leaderboard rows (one per seed), with at least dataset, split, n_clusters, method, backbone,
    ``target`` and the criterion columns present. Returns a frame with :data:`COLUMNS`; ``scope`` names the rows
    a line covers ("all methods", a method, or "method · backbone"); ρ is NaN with fewer than 3 rows or a
    constant column.
    """
    missing = [c for c in ("dataset", "split", "n_clusters", "method", "backbone", target) if c not in df.columns]
    if missing:
        raise ValueError(f"the leaderboard lacks the column(s) {missing}")
    criteria = [c for c in CRITERIA if c in df.columns and df[c].notna().any()]
    lines = []
    for (dataset, split, k), g in df.groupby(["dataset", "split", "n_clusters"], sort=True, dropna=False):
        base = {"dataset": dataset, "split": split, "n_clusters": k}
        if "silhouette" in criteria:
            lines.append({**base, "criterion": "silhouette", "scope": "all methods",
                          **_line(g, "silhouette", target, select=True)})
        if "score" in criteria:
            for method, gm in g.groupby("method", sort=True):
                if _across_spaces(method):
                    lines.append({**base, "criterion": "score", "scope": method,
                                  **_line(gm, "score", target, select=True)})
                else:
                    for backbone, gb in gm.groupby("backbone", sort=True):
                        lines.append({**base, "criterion": "score", "scope": f"{method} · {backbone}",
                                      **_line(gb, "score", target, select=False)})
    if "n_classes" in df.columns and df["dataset"].nunique() > 1:
        at_classes = df[df["n_clusters"] == df["n_classes"]]
        base = {"dataset": "all", "split": "", "n_clusters": "#classes"}
        if "silhouette" in criteria:
            lines.append({**base, "criterion": "silhouette", "scope": "all methods",
                          **_line(at_classes, "silhouette", target, select=False)})
        if "score" in criteria:
            for method, gm in at_classes.groupby("method", sort=True):
                if _across_spaces(method) and gm["dataset"].nunique() > 1:
                    lines.append({**base, "criterion": "score", "scope": method,
                                  **_line(gm, "score", target, select=False)})
    return pd.DataFrame(lines, columns=COLUMNS)


def format_table(table: pd.DataFrame, target: str = "acc") -> pd.DataFrame:
    """The table of :func:`criteria_correlations` as display strings (``target`` values in %, blanks for NaN)."""
    def cell(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float, np.number)) and np.isfinite(v) else ""

    name = target.upper()
    return pd.DataFrame({
        "dataset": table["dataset"], "split": table["split"], "k": table["n_clusters"],
        "criterion": table["criterion"], "rows of": table["scope"], "n": table["rows"],
        f"Spearman ρ with {name}": [cell(v, "+.2f") for v in table["spearman"]],
        "p": [cell(v, ".2g") for v in table["p_value"]],
        "configs": [cell(v, ".0f") for v in table["configs"]],
        "picked (best criterion)": table["picked"].fillna(""),
        f"its {name}": [cell(100 * v, ".1f") if pd.notna(v) else "" for v in table["picked_target"]],
        f"best {name}": [cell(100 * v, ".1f") if pd.notna(v) else "" for v in table["best_target"]]})


def criteria_markdown(table: pd.DataFrame, target: str = "acc") -> str:
    """The table of :func:`criteria_correlations` as markdown (:func:`format_table`)."""
    return format_table(table, target).to_markdown(index=False, disable_numparse=True)
