"""Published clustering numbers next to measured ones.

The model cards carry published results (``reported.clustering``: dataset, split, protocol, method, k or
overcluster, ACC/NMI/AMI/ARI in % with their std, source). This module matches them with aggregated
leaderboard rows and says whether each published figure is reproduced.

Entry points:
    compare(agg, cards=None) -> DataFrame    one row per (measured configuration, published entry, metric)
    comparison_markdown(comparison) -> str   the comparison as a markdown table ("" when it is empty)
    summarize(card) -> str                   one line for `sscb models`: which published clustering numbers a card has
    section(agg, cards=None) -> str          "## Reported vs measured" + table, or "" when nothing matches

Matching: the row's ``backbone`` is the card id, and dataset, split, protocol (``direct`` when the row has no
protocol column), method and k agree. k agrees when the entry gives ``k`` and the row's ``n_clusters`` equals
it, or when the entry gives ``overcluster`` and the row's overcluster factor equals it (or, for rows without a
factor, ``n_clusters == round(overcluster x classes)``). An entry that gives ``classes`` also needs the row's
``n_classes`` to equal it (so an ImageNet-100 row never meets a full-ImageNet figure). Rows with other PCA
settings still match: the published protocol is described by each entry's ``source`` and ``notes``.

Verdict: ``reproduced`` when |measured mean - published| <= 2 x the published std, or <= 1 point when the
source gives no std (the tolerance is in percentage points, like the figures); else ``not reproduced``.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import pandas as pd

__all__ = ["COLUMNS", "NO_STD_TOLERANCE", "STD_FACTOR", "compare", "comparison_markdown", "summarize", "section",
           "matches"]


STD_FACTOR = 2.0          # reproduced within this many published standard deviations ...
NO_STD_TOLERANCE = 1.0    # ... or within this many points when the source gives no std
COLUMNS = ["backbone", "dataset", "split", "protocol", "method", "n_classes", "n_clusters", "pca_dim", "metric",
           "measured", "measured_std", "n_seeds", "reported", "reported_std", "difference", "tolerance", "verdict",
           "source", "notes"]


def _same(a, b) -> bool:
    return a is not None and b is not None and str(a) == str(b)


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def matches(row: Mapping, entry: Mapping) -> bool:
    """Whether an aggregated leaderboard row was run under the protocol of a published ``entry``."""
    if entry.get("split") is None:  # legacy entries name no split or k: listed, never compared
        return False
    protocol = row.get("protocol")
    protocol = "direct" if protocol is None or (isinstance(protocol, float) and math.isnan(protocol)) else protocol
    if not (_same(row.get("dataset"), entry["dataset"]) and _same(row.get("split"), entry["split"])
            and _same(protocol, entry["protocol"]) and _same(row.get("method"), entry["method"])):
        return False
    n_classes, n_clusters = _number(row.get("n_classes")), _number(row.get("n_clusters"))
    if entry.get("classes") is not None and n_classes != entry["classes"]:
        return False
    if entry.get("k") is not None:
        return n_clusters == entry["k"]
    factor = _number(row.get("overcluster"))
    if factor is not None:
        return abs(factor - entry["overcluster"]) < 1e-9
    return entry.get("classes") is not None and n_clusters == round(entry["overcluster"] * entry["classes"])


def _cards_by_id(cards) -> dict:
    if cards is None:
        from .backbones import list_cards

        cards = list_cards()
    return {c.id: c for c in cards}


def compare(agg: pd.DataFrame, cards: Iterable | None = None) -> pd.DataFrame:
    """Published figures beside every matching row of ``aggregate(df)`` (metrics there are fractions).

    ``cards``: the model cards to take the published numbers from (default: every card on the search path).
    Returns one row per (measured configuration, published entry, metric), numbers in %, columns :data:`COLUMNS`.
    """
    by_id = _cards_by_id(cards)
    out = []
    for row in agg.to_dict("records"):
        card = by_id.get(str(row.get("backbone")))
        if card is None:
            continue
        for entry in card.reported_clustering:
            if not matches(row, entry):
                continue
            for metric, (published, std) in entry["metrics"].items():
                measured = _number(row.get(f"{metric}_mean"))
                if measured is None:
                    continue
                measured *= 100
                measured_std = _number(row.get(f"{metric}_std"))
                tolerance = STD_FACTOR * std if std is not None else NO_STD_TOLERANCE
                difference = measured - published
                out.append({
                    "backbone": card.id, "dataset": row.get("dataset"), "split": row.get("split"),
                    "protocol": entry["protocol"], "method": row.get("method"), "n_classes": row.get("n_classes"),
                    "n_clusters": row.get("n_clusters"), "pca_dim": row.get("pca_dim"), "metric": metric,
                    "measured": measured, "measured_std": None if measured_std is None else measured_std * 100,
                    "n_seeds": row.get("n_seeds"), "reported": published, "reported_std": std,
                    "difference": difference, "tolerance": tolerance,
                    # the tiny slack keeps a difference of exactly the tolerance (in decimal %) on the right side
                    "verdict": "reproduced" if abs(difference) <= tolerance + 1e-9 else "not reproduced",
                    "source": entry["source"], "notes": entry.get("notes"),
                })
    return pd.DataFrame(out, columns=COLUMNS)


def _pm(mean, std) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f}"


def comparison_markdown(comparison: pd.DataFrame) -> str:
    """Markdown table of :func:`compare` (measured and published in %, difference in points)."""
    if comparison.empty:
        return ""
    table = pd.DataFrame({
        "backbone": comparison["backbone"], "dataset": comparison["dataset"], "split": comparison["split"],
        "method": comparison["method"], "k": comparison["n_clusters"],
        "metric": comparison["metric"].str.upper().str.replace("_", "-"),
        "measured": [_pm(m, s) for m, s in zip(comparison["measured"], comparison["measured_std"])],
        "reported": [_pm(m, s) for m, s in zip(comparison["reported"], comparison["reported_std"])],
        "Δ": [f"{d:+.2f}" for d in comparison["difference"]],
        "verdict": [f"{v} (±{t:.2f})" for v, t in zip(comparison["verdict"], comparison["tolerance"])],
        "source": comparison["source"],
    })
    if (comparison["protocol"] != "direct").any():
        table.insert(3, "protocol", comparison["protocol"])
    return table.to_markdown(index=False, disable_numparse=True)  # keep "+0.30" signed and padded


def section(agg: pd.DataFrame, cards: Iterable | None = None) -> str:
    """A markdown section comparing ``agg`` with the published numbers, or "" when no row has a counterpart."""
    table = comparison_markdown(compare(agg, cards))
    if not table:
        return ""
    return ("## Reported vs measured\n\nPublished clustering results of the model cards next to the matching "
            f"measured rows (in %). Reproduced: within {STD_FACTOR:g}x the published std, or "
            f"{NO_STD_TOLERANCE:g} point where none is given.\n\n" + table)


def summarize(card) -> str:
    """e.g. "clustering: imagenet/val kmeans k=1000,1500; objectnet/test kmeans k=313" (or "")."""
    groups: dict[tuple, list[str]] = {}
    for e in card.reported_clustering:
        protocol = "" if e["protocol"] == "direct" else f" ({e['protocol']})"
        key = (e["dataset"], e["split"] or "?", e["method"] + protocol)
        if e.get("k") is not None:
            size = str(e["k"])
        elif e.get("overcluster") is not None and e.get("classes"):
            size = str(round(e["overcluster"] * e["classes"]))
        elif e.get("overcluster") is not None:
            size = f"{e['overcluster']:g}x"
        else:
            size = "?"
        groups.setdefault(key, [])
        if size not in groups[key]:
            groups[key].append(size)
    return "; ".join(f"{d}/{s} {m} k={','.join(sizes)}" for (d, s, m), sizes in groups.items())
