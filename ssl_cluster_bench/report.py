"""Benchmark report: a markdown file and one self-contained HTML file written next to the leaderboard.

Entry point:
    write_report(results_csv, state=None, cache=None) -> ReportPaths(markdown, html, figures)

In: the leaderboard CSV, the saved cluster assignments under ``<results dir>/predictions/`` and, when a suite
wrote it, the suite state (:class:`ssl_cluster_bench.suite.SuiteState`: the protocols by hash, which dataset
entries ran or did not run and why, the sweep grids). Out: ``report.md`` (figures as PNG files in
``report_files/``) and ``report.html`` (the same figures embedded as base64, so the file can be mailed or
attached alone). Contents: the protocol(s) as YAML, the datasets that did not run and why, one table per
dataset (mean ± std over seeds, published numbers beside measured where the model cards carry them), bar
charts of ACC and NMI per backbone × method, ACC and ARI against PCA dimension and against k (the sweep), the
label-free criterion against k of every ``--k auto`` configuration (the curves the run stored under
``predictions/k_selection/``: the chosen k and the true number of classes marked), the
confusion matrix of the best configuration per dataset (classes × clusters in matched order) and two pictures
of what its clusters hold: a grid of prototype images per cluster (read back from the dataset by sample id;
the images nearest the cluster's centre in the clustered space, or the most confident ones for methods that
give probabilities) and a 2-D map of the features (UMAP of a sample) coloured by cluster and by class.

Rows are only ever averaged within one protocol hash: two protocols that differ in any setting never share
a table row or a bar.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .leaderboard import aggregate, read_leaderboard
from .safeio import atomic_write_bytes

__all__ = ["Figure", "ReportPaths", "build_figures", "check_images", "confusion_figure", "feature_map_figure",
           "k_curve_figure", "matched_confusion", "prototype_figure", "prototypes", "published_columns", "select_rows",
           "write_report"]

log = logging.getLogger(__name__)

# the metrics the plots show, as (column, axis label)
BAR_METRICS = (("acc", "ACC"), ("nmi", "NMI"))
SWEEP_METRICS = (("acc", "ACC"), ("ari", "ARI"))
# at most this many classes get a labelled confusion matrix axis; larger ones are drawn without tick labels
MAX_TICK_LABELS = 40
# prototype grid: images per cluster, clusters shown (the largest), tile side in pixels
PROTOTYPES_PER_CLUSTER = 8
MAX_PROTOTYPE_CLUSTERS = 30
TILE = 56
# 2-D map: points embedded (a seeded sample beyond this), and the PCA width the embedding starts from
MAP_POINTS = 2000
MAP_PCA_DIM = 50
# how the 2-D map is made: umap (umap-learn; about 12 CPU-seconds of compilation once per process), pca (instant)
# or none; "auto" reads SSCB_FEATURE_MAP (default umap), so a suite run or a test can ask for the fast one
FEATURE_MAPS = ("umap", "pca", "none")


def resolve_feature_map(feature_map: str | None = "auto") -> str:
    """``feature_map`` checked, with "auto" (and None) read from ``SSCB_FEATURE_MAP`` (default "umap")."""
    name = feature_map if feature_map not in (None, "auto") else os.environ.get("SSCB_FEATURE_MAP", "umap")
    if name not in FEATURE_MAPS:
        where = "feature_map" if feature_map not in (None, "auto") else "environment variable SSCB_FEATURE_MAP"
        raise ValueError(f"{where} must be one of {', '.join(FEATURE_MAPS)}, got {name!r}")
    return name


@dataclass
class Figure:
    """One plot: a file-safe name, a caption and the PNG bytes."""

    name: str
    caption: str
    png: bytes
    dataset: str = ""


@dataclass
class ReportPaths:
    markdown: Path
    html: Path
    figures: list[Path] = field(default_factory=list)


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # no display; also keeps a headless CI run from picking an interactive backend
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in str(text)).strip("-") or "x"


def _k_text(row) -> str:
    """"k=9", or for a method that finds its own number of clusters (hdbscan: no k in the row) what it found."""
    if pd.notna(row.get("n_clusters")):
        return f"k={int(row['n_clusters'])}"
    found = row.get("n_found", row.get("n_found_mean"))
    return f"{int(found)} clusters found" if pd.notna(found) and "seed" in row.index else "own k"


def _config_label(row) -> str:
    return f"{row['method']} {_k_text(row)}"


# --------------------------------------------------------------------------------------------------- plots


def bar_figure(agg: pd.DataFrame, dataset: str) -> Figure | None:
    """ACC and NMI (mean ± std over seeds) per backbone, one bar per method × k."""
    sub = agg[agg["dataset"] == dataset]
    # rows of data without labels have no ACC / NMI to draw (the label-free numbers are in the table)
    sub = sub[sub["acc_mean"].notna()] if "acc_mean" in sub.columns else sub.iloc[:0]
    if sub.empty or any(f"{m}_mean" not in sub.columns for m, _ in BAR_METRICS):
        return None
    plt = _plt()
    backbones = list(dict.fromkeys(sub["backbone"]))
    configs = list(dict.fromkeys(_config_label(r) for _, r in sub.sort_values(["method", "n_clusters"]).iterrows()))
    width = 0.8 / len(configs)
    x = np.arange(len(backbones))
    fig, axes = plt.subplots(1, len(BAR_METRICS), figsize=(max(5.0, 1.1 * len(backbones) * max(1, len(configs) / 2) + 2.5)
                                                           * len(BAR_METRICS) / 2 + 2, 3.8))
    cmap = plt.get_cmap("tab10" if len(configs) <= 10 else "tab20")
    for ax, (metric, label) in zip(axes, BAR_METRICS):
        for j, config in enumerate(configs):
            rows = sub[[_config_label(r) == config for _, r in sub.iterrows()]].set_index("backbone")
            mean = rows[f"{metric}_mean"].reindex(backbones).to_numpy(dtype=float) * 100
            std = rows[f"{metric}_std"].reindex(backbones).fillna(0).to_numpy(dtype=float) * 100
            ax.bar(x - 0.4 + width * (j + 0.5), mean, width, yerr=std, capsize=2, label=config, color=cmap(j),
                   error_kw={"elinewidth": 0.8})
        ax.set_xticks(x, backbones, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(f"{label} (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"{dataset}: {label}", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return Figure(f"bars-{_slug(dataset)}", f"{dataset}: ACC and NMI per backbone and method "
                  "(mean ± std over seeds)", _png(fig), dataset)


def sweep_figure(rows: pd.DataFrame, dataset: str, axis: str) -> Figure | None:
    """ACC and ARI against ``axis`` ("pca_dim" or "n_clusters"), one line per backbone (mean ± std over seeds)."""
    sub = rows[rows["dataset"] == dataset]
    if "protocol_hash" in sub.columns and not sub.empty:
        # grid points that land on the same effective value (a PCA dim capped at the feature dim, two factors
        # rounding to one k) are one point, not one point with its seeds counted twice
        first = sub.groupby(["backbone", axis])["protocol_hash"].transform("first")
        sub = sub[sub["protocol_hash"] == first]
    if sub.empty or sub[axis].nunique() < 2:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(SWEEP_METRICS), figsize=(9.5, 3.6))
    for ax, (metric, label) in zip(axes, SWEEP_METRICS):
        for backbone, g in sub.groupby("backbone", sort=False):
            stats = g.groupby(axis)[metric].agg(["mean", "std"]).sort_index()
            ax.errorbar(stats.index.to_numpy(dtype=float), stats["mean"] * 100, yerr=stats["std"].fillna(0) * 100,
                        marker="o", ms=4, capsize=3, label=backbone)
        ax.set_xscale("log", base=2)
        ticks = sorted(sub[axis].unique())
        ax.set_xticks(ticks, [str(int(t)) for t in ticks], fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel("PCA dimension" if axis == "pca_dim" else "number of clusters k")
        ax.set_ylabel(f"{label} (%)")
        ax.set_title(f"{dataset}: {label} vs {'PCA dim' if axis == 'pca_dim' else 'k'}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=8, frameon=False)
    fig.tight_layout()
    what = "PCA dimension (k = #classes)" if axis == "pca_dim" else "number of clusters (suite PCA dim)"
    return Figure(f"sweep-{axis}-{_slug(dataset)}", f"{dataset}: k-means ACC and ARI against {what}, "
                  "mean ± std over seeds", _png(fig), dataset)


def k_curve_figure(curves: list[tuple[str, pd.DataFrame]], dataset: str) -> Figure | None:
    """The label-free criterion against k of every ``--k auto`` configuration of ``dataset``: one line per
    (label, curve) (:data:`ssl_cluster_bench.k_select.CURVE_COLUMNS`), the chosen k ringed, the true number of
    classes dashed where it is known; one panel per criterion (a run picks k by one)."""
    from .protocol import K_CRITERIA

    curves = [(label, c) for label, c in curves if len(c)]
    if not curves:
        return None
    plt = _plt()
    criteria = list(dict.fromkeys(str(c["criterion"].iloc[0]) for _, c in curves))
    fig, axes = plt.subplots(1, len(criteria), figsize=(6.4 * len(criteria), 3.6), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    for ax, criterion in zip(axes[0], criteria):
        classes = set()
        for i, (label, c) in enumerate(curves):
            if str(c["criterion"].iloc[0]) != criterion:
                continue
            c = c.sort_values("k")
            k, y = c["k"].to_numpy(dtype=float), c[criterion].to_numpy(dtype=float)
            chosen = c["chosen"].astype(bool).to_numpy()
            picked = f" (k={int(k[chosen][0])})" if chosen.any() else ""
            ax.plot(k, y, marker="o", ms=3, lw=1.2, color=cmap(i % cmap.N), label=label + picked)
            # rings of different sizes: two configurations that pick the same k at the same value stay visible
            ax.plot(k[chosen], y[chosen], "o", ms=9 + 3 * (i % 4), mfc="none", mew=1.6, color=cmap(i % cmap.N))
            classes.update(int(n) for n in c["n_classes"].dropna().unique())
        for n in sorted(classes):
            ax.axvline(n, color="0.35", ls="--", lw=1, label=f"{n} classes (true)")
        better = "higher" if K_CRITERIA.get(criterion) == "max" else "lower"
        ax.set_xlabel("number of clusters k")
        ax.set_ylabel(f"{criterion} ({better} is better)")
        ax.set_title(f"{dataset}: {criterion} against k (ringed: the k chosen)", fontsize=10)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return Figure(f"k-auto-{_slug(dataset)}", f"{dataset}: the label-free criterion of every k tried by --k auto "
                  "(first seed), the chosen k ringed and the true number of classes dashed", _png(fig), dataset)


def matched_confusion(y_true, y_pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Counts (classes × clusters) with the clusters in matched order.

    The matching is the one ACC uses (:func:`ssl_cluster_bench.metrics.match_clusters`). Clusters are grouped
    by the class they are matched to, in class order, and within a class the one holding most of that class
    comes first; with k = #classes and a one-to-one matching the diagonal is exactly the matched counts.
    Returns ``(counts, classes, clusters)``: ``counts[i, j]`` = samples of ``classes[i]`` in ``clusters[j]``.
    Samples with a negative label (unlabelled) are left out.
    """
    from .metrics import match_clusters

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    keep = y_true >= 0
    m = match_clusters(y_true[keep], y_pred[keep])
    conf = m.confusion.T  # classes × clusters
    own = conf[m.class_index, np.arange(m.clusters.size)]  # each cluster's count of its matched class
    order = np.lexsort((-own, m.class_index))
    return conf[:, order], m.classes, m.clusters[order]


def confusion_figure(y_true, y_pred, title: str) -> bytes:
    """Row-normalised confusion matrix (classes × clusters, matched order) as PNG bytes."""
    plt = _plt()
    counts, classes, clusters = matched_confusion(y_true, y_pred)
    frac = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n_cls, n_clu = counts.shape
    fig, ax = plt.subplots(figsize=(min(12, 2.5 + 0.32 * n_clu), min(11, 2.0 + 0.3 * n_cls)))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    if n_cls <= MAX_TICK_LABELS and n_clu <= MAX_TICK_LABELS:
        ax.set_yticks(range(n_cls), [str(c) for c in classes], fontsize=7)
        ax.set_xticks(range(n_clu), [str(c) for c in clusters], fontsize=7, rotation=90)
        if n_cls * n_clu <= 400:  # numbers stay readable up to about 20 × 20
            for i in range(n_cls):
                for j in range(n_clu):
                    if counts[i, j]:
                        ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                                color="white" if frac[i, j] > 0.5 else "black")
    ax.set_xlabel("cluster (matched order)")
    ax.set_ylabel("class")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04, label="fraction of the class")
    fig.tight_layout()
    return _png(fig)


def prototypes(table: pd.DataFrame, n: int = PROTOTYPES_PER_CLUSTER) -> dict[int, list[int]]:
    """Positions (rows of ``table``) of the ``n`` prototype samples of each cluster, largest cluster first.

    ``table`` is an assignments table (:func:`ssl_cluster_bench.assignments.assignment_table`): with a
    ``confidence`` column (methods that give probabilities) the most confident samples, else those with the
    smallest ``distance`` to their cluster's centre in the clustered space (for k-means, nearest the centroid).
    Ties keep the dataset order; noise (cluster -1) has no prototypes."""
    by = "confidence" if "confidence" in table.columns and table["confidence"].notna().any() else "distance"
    if by not in table.columns:
        raise ValueError("the assignments table has neither confidence nor distance: no prototypes to choose")
    kept = table[table["cluster"] >= 0]
    sizes = kept["cluster"].value_counts(sort=False)
    order = sorted(sizes.index, key=lambda c: (-sizes[c], c))
    key = -kept[by] if by == "confidence" else kept[by]
    ranked = kept.assign(_key=key.to_numpy(), _pos=np.arange(len(table))[table["cluster"].to_numpy() >= 0])
    ranked = ranked.sort_values(["_key", "_pos"], kind="stable", na_position="last")
    return {int(c): ranked.loc[ranked["cluster"] == c, "_pos"].head(n).astype(int).tolist() for c in order}


def _colour(i: int, n: int) -> tuple[int, int, int]:
    """Colour of cluster (or class) ``i`` of ``n``: tab10 up to 10, else tab20 (the grid and the map agree)."""
    import matplotlib

    r, g, b, _ = matplotlib.colormaps["tab10" if n <= 10 else "tab20"](int(i) % (10 if n <= 10 else 20))
    return int(r * 255), int(g * 255), int(b * 255)


def _thumbnail(image, side: int):
    """``image`` (a PIL image, or None when unreadable) fitted into a ``side`` square, aspect kept, on white."""
    from PIL import Image

    tile = Image.new("RGB", (side, side), (255, 255, 255))
    if image is None:
        return tile
    image = image.convert("RGB")
    image.thumbnail((side, side), Image.Resampling.BICUBIC if max(image.size) > side else Image.Resampling.NEAREST)
    if max(image.size) < side:  # small images (8x8 digits) are enlarged, pixels kept sharp
        scale = side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.NEAREST)
    tile.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return tile


def prototype_figure(table: pd.DataFrame, dataset, title: str, labels=None, classes=None,
                     n: int = PROTOTYPES_PER_CLUSTER, max_clusters: int = MAX_PROTOTYPE_CLUSTERS) -> bytes:
    """PNG of the prototype grid: one row per cluster (largest first, at most ``max_clusters``), its ``n``
    prototypes (:func:`prototypes`) read back from ``dataset`` at the positions ``table.attrs["indices"]``, framed
    in the cluster's colour; each row names the cluster, its size and, with ``labels``, its majority class."""
    from PIL import Image, ImageDraw

    chosen = prototypes(table, n)
    n_clusters = max(chosen, default=0) + 1  # colours by cluster id, as the map's
    clusters = list(chosen)[:max_clusters]
    indices = table.attrs.get("indices", np.arange(len(table)))
    pad, side = 3, TILE
    cell = side + 2 * pad
    grid = Image.new("RGB", (n * cell, len(clusters) * cell), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    names = []
    for r, c in enumerate(clusters):
        colour = _colour(c, n_clusters)
        for j, pos in enumerate(chosen[c]):
            x, y = j * cell, r * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour)
            grid.paste(_thumbnail(dataset[int(indices[pos])][0], side), (x + pad, y + pad))
        members = table["cluster"].to_numpy() == c
        name = f"cluster {c} (n={int(members.sum())})"
        if labels is not None:
            own = labels[members]
            own = own[own >= 0]
            if own.size:
                values, counts = np.unique(own, return_counts=True)
                top = int(values[np.argmax(counts)])
                cls = classes[top] if classes is not None and top < len(classes) else str(top)
                name += f": mostly {cls} ({counts.max() / own.size:.0%})"
        names.append(name)
    plt = _plt()
    width_in = n * cell / 80 + 2.4
    fig, ax = plt.subplots(figsize=(width_in, max(1.5, len(clusters) * cell / 80 + 0.8)))
    ax.imshow(np.asarray(grid), interpolation="nearest")
    ax.set_yticks([r * cell + cell / 2 for r in range(len(clusters))], names, fontsize=8)
    for tick, c in zip(ax.get_yticklabels(), clusters):
        tick.set_color(tuple(0.75 * v / 255 for v in _colour(c, n_clusters)))  # darker: pale ones stay legible
        tick.set_fontweight("bold")
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def embed_2d(features, method: str = "umap", seed: int = 0) -> tuple[np.ndarray, str]:
    """(n, 2) map of ``features`` and the name of what made it: a 2-D UMAP (umap-learn) of their PCA to
    :data:`MAP_PCA_DIM` dims, or with ``method="pca"`` (or umap-learn missing) the first two principal
    components."""
    from sklearn.decomposition import PCA

    x = np.asarray(features, dtype=np.float32)
    x = x - x.mean(axis=0)
    umap = None
    if method == "umap":
        try:
            import umap  # umap-learn; optional (the `report` extra)
        except ImportError:
            umap = None  # the principal components instead
    if umap is None or x.shape[0] < 10:
        return PCA(2, random_state=seed).fit_transform(x), "PCA (first two components)"
    if x.shape[1] > MAP_PCA_DIM:
        x = PCA(MAP_PCA_DIM, random_state=seed).fit_transform(x)
    import warnings

    with warnings.catch_warnings():  # "n_jobs overridden to 1 by setting random_state": seeded on purpose
        warnings.simplefilter("ignore", UserWarning)
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, x.shape[0] - 1), min_dist=0.1, random_state=seed)
        return reducer.fit_transform(x), f"UMAP (2-D, 15 neighbours, of the PCA to {min(MAP_PCA_DIM, x.shape[1])} dims)"


def feature_map_figure(coords: np.ndarray, clusters: np.ndarray, labels: np.ndarray | None, title: str,
                       classes=None) -> bytes:
    """PNG of the 2-D map: points coloured by cluster and, beside it, by class (when any label is known)."""
    plt = _plt()
    panels = [("cluster", clusters)] + ([("class", labels)] if labels is not None and (labels >= 0).any() else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
    size = float(np.clip(6000 / max(1, len(coords)), 4, 30))  # small samples: larger points
    for ax, (what, values) in zip(axes[0], panels):
        values = np.asarray(values)
        known = values >= 0
        if not known.all():
            ax.scatter(coords[~known, 0], coords[~known, 1], s=size, c="#bbbbbb", linewidths=0,
                       label="noise" if what == "cluster" else "no label")
        uniq = np.unique(values[known])
        # clusters by their id, as in the prototype grid (ids are 0..k-1); classes by their rank
        n_colours = int(uniq.max()) + 1 if what == "cluster" and uniq.size else uniq.size
        for i, v in enumerate(uniq):
            m = values == v
            name = (classes[v] if what == "class" and classes is not None and v < len(classes) else str(v))
            colour = _colour(v if what == "cluster" else i, n_colours)
            ax.scatter(coords[m, 0], coords[m, 1], s=size, color=tuple(c / 255 for c in colour), linewidths=0,
                       label=name)
        if len(uniq) <= 20:
            ax.legend(fontsize=6, markerscale=2.5, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False,
                      title=what, title_fontsize=7)
        ax.set_title(f"coloured by {what}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _pictures_for(df: pd.DataFrame, agg: pd.DataFrame, results_csv: Path, dataset: str, cache_dir,
                  notes: list[str], feature_map: str = "umap") -> list[Figure]:
    """The prototype grid and the 2-D feature map of the best configuration's typical run on ``dataset``."""
    from .assignments import assignment_table, dataset_of, entry_of

    row = _best_run(df, agg)
    if row is None:
        return []
    entry = entry_of(row.get("cache_key"), cache_dir)
    if entry is None:
        notes.append(f"{dataset}: no prototype images or feature map (cache entry {row.get('cache_key')} is not in "
                     "the feature cache; pass the cache the rows were made with)")
        return []
    try:
        table = assignment_table(results_csv, row["run_id"], entry=entry, dataset=dataset_of(entry))
    except (FileNotFoundError, ValueError) as e:
        notes.append(f"{dataset}: no prototype images or feature map ({e})")
        return []
    ds = table.attrs["dataset"]
    labels = np.asarray(entry.labels)
    classes = [str(c) for c in getattr(ds, "classes", [])] or None
    what = (f"{row['backbone']}, {row['method']} {_k_text(row)}, seed {int(row['seed'])}"
            + (f", ACC {row['acc'] * 100:.1f}%" if pd.notna(row.get("acc")) else ""))
    figures = []
    if ds is None:
        notes.append(f"{dataset}: no prototype images (the dataset of cache entry {entry.name} cannot be read back: "
                     "imported features, or the data moved)")
    else:
        if "distance" not in table.columns and "confidence" not in table.columns:
            from .api import sample_scores  # a run made before the per-sample scores were kept

            table["distance"] = sample_scores(entry.features, table["cluster"].to_numpy())["distance"]
        by = "most confident" if "confidence" in table.columns else "nearest their cluster's centre"
        title = f"{dataset}: prototypes of {what} ({by}, largest clusters first)"
        png = prototype_figure(table, ds, title, labels=labels, classes=classes)
        figures.append(Figure(f"prototypes-{_slug(dataset)}", title, png, dataset))
    if feature_map != "none":
        rng = np.random.default_rng(0)
        n = len(table)
        sample = np.sort(rng.choice(n, MAP_POINTS, replace=False)) if n > MAP_POINTS else np.arange(n)
        coords, how = embed_2d(np.asarray(entry.features[sample], dtype=np.float32), feature_map)
        title = f"{dataset}: {how} of {len(sample)} {row['backbone']} features; clusters of {what}"
        png = feature_map_figure(coords, table["cluster"].to_numpy()[sample], labels[sample], title, classes)
        figures.append(Figure(f"map-{_slug(dataset)}", title, png, dataset))
    return figures


def _k_curves_for(rows: pd.DataFrame, results_csv: Path, dataset: str, notes: list[str]) -> Figure | None:
    """The k-selection figure of ``dataset`` from the curves its ``--k auto`` rows stored (one per entry, method
    and protocol; the rows of every seed share it)."""
    from .api import k_selection_dir
    from .k_select import CURVE_COLUMNS, curve_file
    from .protocol import K_CRITERIA

    if "k_criterion" not in rows.columns or "cache_key" not in rows.columns:
        return None
    auto = rows[rows["k_criterion"].isin(list(K_CRITERIA))]  # "" (k given) and "method" (own k) have no curve
    configs = auto.drop_duplicates(["cache_key", "method", "protocol_hash"])
    if configs.empty:
        return None
    several = configs.groupby(["backbone", "method"])["protocol_hash"].transform("nunique") > 1
    curves = []
    for (_, row), ambiguous in zip(configs.iterrows(), several):
        # a run without labels keys its curves apart from the same data clustered with them (api._cluster_entry)
        unlabelled = "|unlabelled" if pd.isna(row.get("n_classes")) else ""
        path = curve_file(k_selection_dir(results_csv), f"{row['cache_key']}{unlabelled}", row["method"],
                          row["protocol_hash"])
        label = f"{row['backbone']} · {row['method']}" + (f" ({row['protocol_hash']})" if ambiguous else "")
        try:
            curve = pd.read_csv(path)
        except (FileNotFoundError, pd.errors.EmptyDataError):
            notes.append(f"{dataset}: no k-selection curve of {label} ({path} is missing; rerun it with --k auto "
                         "to store it again)")
            continue
        if list(curve.columns) != CURVE_COLUMNS:
            notes.append(f"{dataset}: k-selection curve {path} left out (its columns are not "
                         f"{', '.join(CURVE_COLUMNS)}; rerun with --k auto after deleting it)")
            continue
        curves.append((label, curve))
    return k_curve_figure(curves, dataset)


# ------------------------------------------------------------------------------------------------ content


def _with_protocol(df: pd.DataFrame) -> pd.DataFrame:
    if "protocol_hash" not in df.columns:
        df = df.assign(protocol_hash="")
    return df.assign(protocol_hash=df["protocol_hash"].fillna("").astype(str))


def published_columns(agg: pd.DataFrame, cards=None) -> pd.DataFrame:
    """Published numbers beside the measured ones: one column per metric that any row has a published value
    for (``"ACC published"``: ``"23.09 ± 0.16 (Δ +0.40, reproduced)"``), aligned with ``agg``'s rows.

    The figures and the matching (dataset, split, protocol, method, k) come from the model cards' ``reported:``
    blocks through :func:`ssl_cluster_bench.published.compare`; a row without a counterpart gets "".
    """
    from .published import compare

    out = pd.DataFrame(index=agg.index)
    for i in agg.index:
        for c in compare(agg.loc[[i]], cards).to_dict("records"):
            std = f" ± {c['reported_std']:.2f}" if c["reported_std"] is not None and pd.notna(c["reported_std"]) else ""
            column = f"{c['metric'].upper()} published"
            if column not in out.columns:
                out[column] = ""
            out.loc[i, column] = (f"{c['reported']:.2f}{std} (Δ {c['difference']:+.2f}, {c['verdict']}; "
                                  f"{c['source']})")
    return out


def _table(agg: pd.DataFrame, published: pd.DataFrame | None = None) -> pd.DataFrame:
    cols = ["backbone", "split", "protocol", "method", "n_clusters", "pca_dim"]
    out = pd.DataFrame({c: agg[c].to_numpy() for c in cols if c in agg.columns})
    out = out.rename(columns={"n_clusters": "k", "pca_dim": "PCA"})
    for metric in ("acc", "nmi", "ami", "ari", "top5"):
        if f"{metric}_mean" in agg.columns and agg[f"{metric}_mean"].notna().any():
            mean, std = agg[f"{metric}_mean"] * 100, agg[f"{metric}_std"].fillna(0.0) * 100
            out[metric.upper()] = [f"{a:.1f} ± {b:.1f}" if np.isfinite(a) else "" for a, b in zip(mean, std)]
    if "silhouette_mean" in agg.columns and agg["acc_mean"].isna().any():  # rows without labels: their one score
        out["silhouette"] = [f"{a:.3f}" if np.isfinite(a) else "" for a in agg["silhouette_mean"]]
    if published is not None:
        for column in published.columns:  # beside the measured metric it publishes
            metric = column.split()[0]
            at = list(out.columns).index(metric) + 1 if metric in out.columns else len(out.columns)
            out.insert(at, column, published[column].reindex(agg.index).fillna("").to_numpy())
    out["seeds"] = agg["n_seeds"].to_numpy()
    if "protocol_hash" in agg.columns:
        out["protocol"] = [f"{p} ({h})" if h else p for p, h in zip(agg["protocol"], agg["protocol_hash"])]
    if "flag" in agg.columns and agg["flag"].astype(bool).any():
        out["flag"] = agg["flag"].to_numpy()
    return out.reset_index(drop=True)


def _best_run(df: pd.DataFrame, agg: pd.DataFrame) -> pd.Series | None:
    """The best configuration by mean ACC (without labels: by silhouette), and in it the seed whose ACC is the
    median (a typical run)."""
    if agg.empty or "run_id" not in df.columns:
        return None
    best = agg.iloc[0]
    if pd.isna(best.get("acc_mean")) and "silhouette_mean" in agg.columns and agg["silhouette_mean"].notna().any():
        best = agg.loc[agg["silhouette_mean"].idxmax()]  # no labels: the best by the label-free score
    keys = [c for c in ("backbone", "weights", "dataset", "split", "protocol", "method", "n_clusters", "pca_dim",
                        "protocol_hash") if c in agg.columns and c in df.columns]
    rows = df
    for c in keys:
        rows = rows[(rows[c] == best[c]) | (rows[c].isna() & pd.isna(best[c]))]
    rows = rows.dropna(subset=["run_id"]).sort_values("acc", kind="stable")
    if rows.empty:
        return None
    return rows.iloc[(len(rows) - 1) // 2]


def _labels_for(row: pd.Series, cache_dir) -> np.ndarray | None:
    """The true labels of the rows' samples: from the feature-cache entry the row names."""
    from .cache import FeatureCache

    key = str(row.get("cache_key", ""))
    if not key or "+" in key:  # transfer rows span two entries: no single confusion matrix
        return None
    root = (cache_dir if isinstance(cache_dir, FeatureCache) else FeatureCache(cache_dir)).root
    path = Path(root) / key / "labels.npy"
    return np.load(path) if path.is_file() else None


def _confusion_for(df: pd.DataFrame, agg: pd.DataFrame, results_csv: Path, dataset: str, cache_dir,
                   notes: list[str]) -> Figure | None:
    row = _best_run(df, agg)
    if row is None:
        notes.append(f"{dataset}: no confusion matrix (the rows carry no run_id)")
        return None
    try:
        from .predictions import load_predictions

        pred = load_predictions(results_csv, row["run_id"])
    except (FileNotFoundError, ValueError, ImportError) as e:
        notes.append(f"{dataset}: no confusion matrix (predictions of run {row['run_id']} not found: {e})")
        return None
    labels = _labels_for(row, cache_dir)
    if labels is not None and labels.shape == pred.shape and not (labels >= 0).any():
        notes.append(f"{dataset}: no confusion matrix (the data has no labels)")
        return None
    if labels is None or labels.shape != pred.shape:
        notes.append(f"{dataset}: no confusion matrix (the labels of cache entry {row.get('cache_key')} are not "
                     "in the feature cache; pass the cache the suite used)")
        return None
    title = (f"{dataset}: {row['backbone']}, {row['method']} {_k_text(row)}, seed {int(row['seed'])} "
             f"(ACC {row['acc'] * 100:.1f}%, median seed of the best configuration)")
    png = confusion_figure(labels, pred, title)
    return Figure(f"confusion-{_slug(dataset)}", title, png, dataset)


def select_rows(df: pd.DataFrame, state=None) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """(main rows, {sweep axis: rows}): the rows the suite's protocols produced; without a state, every row."""
    df = _with_protocol(df)
    if state is None:
        return df, {}
    from .leaderboard import rows_of

    main = pd.Series(False, index=df.index)
    for protocol in state.main_protocols():
        main |= rows_of(df, protocol)
    sweeps = {}
    for axis in state.sweeps:
        mask = pd.Series(False, index=df.index)
        for protocol in state.sweep_protocols(axis):
            mask |= rows_of(df, protocol)
        sweeps[axis] = df[mask]
    return df[main], sweeps


def build_figures(main: pd.DataFrame, sweeps: dict, results_csv, cache=None,
                  feature_map: str | None = "auto") -> tuple[list[Figure], list[str]]:
    """All figures of the report, and notes on the ones that could not be drawn. ``feature_map``: how the 2-D
    map of the features is made (see :func:`resolve_feature_map`)."""
    results_csv = Path(results_csv)
    feature_map = resolve_feature_map(feature_map)
    figures, notes = [], []
    for dataset in _datasets(pd.concat([main] + list(sweeps.values()))):
        rows = main[main["dataset"] == dataset]
        agg = aggregate(rows) if not rows.empty else rows
        if not rows.empty:
            fig = bar_figure(agg, dataset)
            if fig:
                figures.append(fig)
        for axis, sweep in sweeps.items():
            fig = sweep_figure(sweep, dataset, axis)
            if fig:
                figures.append(fig)
        if not rows.empty:
            fig = _k_curves_for(rows, results_csv, dataset, notes)
            if fig:
                figures.append(fig)
        if not rows.empty:
            fig = _confusion_for(rows, agg, results_csv, dataset, cache, notes)
            if fig:
                figures.append(fig)
            figures += _pictures_for(rows, agg, results_csv, dataset, cache, notes, feature_map)
    return figures, notes


def _datasets(df: pd.DataFrame) -> list[str]:
    return sorted(df["dataset"].dropna().unique().tolist()) if len(df) else []


def _protocols_text(df: pd.DataFrame, state) -> list[tuple[str, str]]:
    """(title, YAML) for each protocol of the report."""
    dump = lambda d: yaml.safe_dump(d, sort_keys=False, default_flow_style=None).strip()  # noqa: E731
    if state is not None:
        from .protocol import Protocol

        out = []
        for h, d in state.protocols.items():
            p = Protocol.from_dict(d)
            rows = ", ".join(f"{m} {p.row_hash(m)}" for m in p.methods)
            out.append((f"protocol {h} ({', '.join(state.entries_using(h)) or 'unused'}; the rows' protocol_hash: "
                        f"{rows})", dump(d)))
        if state.sweep:
            out.append(("sweep grids (k-means; each PCA dim at k = #classes, each factor at the sweep protocol's "
                        "PCA dim)", dump(state.sweep)))
        return out
    hashes = sorted(h for h in df["protocol_hash"].unique() if h)
    return [("protocols", "rows of row-protocol hashes " + ", ".join(hashes) + " (the full protocol records are "
             "kept in suite.json by `sscb suite`)")] if hashes else []


# ---------------------------------------------------------------------------------------------- rendering


@dataclass
class _Content:
    title: str
    protocols: list[tuple[str, str]]
    status: pd.DataFrame | None
    tables: list[tuple[str, pd.DataFrame]]
    figures: list[Figure]
    notes: list[str]
    leaderboard: Path
    criteria: pd.DataFrame | None = None


CRITERIA_TEXT = ("How well each label-free criterion ranks the rows as ACC does: the silhouette of the clustering "
                 "(higher is better) over all rows of a dataset and k, and each method's own score (lower is "
                 "better) over its rows; Spearman ρ is signed so that positive means agreement. 'picked' is the "
                 "backbone · method the criterion would choose without labels, beside the best ACC.")


def criteria_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """The label-free criteria table (:mod:`ssl_cluster_bench.criteria`) for the report: the lines with a
    correlation, formatted; None when there is none (too few rows)."""
    from .criteria import criteria_correlations, format_table

    if df.empty or not {"silhouette", "score"} & set(df.columns):
        return None
    table = criteria_correlations(df)
    table = table[np.isfinite(table["spearman"].astype(float))]
    return format_table(table).reset_index(drop=True) if len(table) else None


def _md_table(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False)


def _markdown(c: _Content, fig_paths: dict[str, str]) -> str:
    lines = [f"# {c.title}", "", f"Leaderboard: `{c.leaderboard.name}` (one row per seed; tables show mean ± std "
             "over seeds, in %). Rows produced under different protocol hashes are never averaged together.", ""]
    if c.status is not None and not c.status.empty:
        lines += ["## Datasets", "", _md_table(c.status), ""]
    lines += ["## Protocol", ""]
    for title, text in c.protocols:
        lines += [f"**{title}**", "", "```yaml", text, "```", ""]
    by_ds: dict[str, list[Figure]] = {}
    for f in c.figures:
        by_ds.setdefault(f.dataset, []).append(f)
    for dataset, table in c.tables:
        lines += [f"## {dataset}", "", _md_table(table), ""]
        for f in by_ds.get(dataset, []):
            lines += [f"![{f.caption}]({fig_paths[f.name]})", "", f"*{f.caption}*", ""]
    if c.criteria is not None:
        lines += ["## Label-free criteria", "", CRITERIA_TEXT, "",
                  c.criteria.to_markdown(index=False, disable_numparse=True), ""]
    if c.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in c.notes] + [""]
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f3f3f3}
tr:nth-child(even) td{background:#fafafa}
pre{background:#f6f8fa;padding:0.8em;overflow-x:auto;font-size:12px}
figure{margin:1em 0}figcaption{font-size:13px;color:#555}img{max-width:100%;height:auto}
.notrun{color:#a33}
"""


def _html(c: _Content) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(c.title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{esc(c.title)}</h1>",
             f"<p>Leaderboard: <code>{esc(c.leaderboard.name)}</code> (one row per seed; tables show mean ± std over "
             "seeds, in %). Rows produced under different protocol hashes are never averaged together.</p>"]
    if c.status is not None and not c.status.empty:
        parts += ["<h2>Datasets</h2>", c.status.to_html(index=False, escape=True, border=0)]
    parts.append("<h2>Protocol</h2>")
    for title, text in c.protocols:
        parts += [f"<p><b>{esc(title)}</b></p>", f"<pre>{esc(text)}</pre>"]
    by_ds: dict[str, list[Figure]] = {}
    for f in c.figures:
        by_ds.setdefault(f.dataset, []).append(f)
    for dataset, table in c.tables:
        parts += [f"<h2>{esc(dataset)}</h2>", table.to_html(index=False, escape=True, border=0)]
        for f in by_ds.get(dataset, []):
            data = base64.b64encode(f.png).decode("ascii")
            parts.append(f'<figure><img alt="{esc(f.caption)}" data-name="{esc(f.name)}" '
                         f'src="data:image/png;base64,{data}"><figcaption>{esc(f.caption)}</figcaption></figure>')
    if c.criteria is not None:
        parts += ["<h2>Label-free criteria</h2>", f"<p>{esc(CRITERIA_TEXT)}</p>",
                  c.criteria.to_html(index=False, escape=True, border=0)]
    if c.notes:
        parts += ["<h2>Notes</h2>", "<ul>"] + [f"<li>{esc(n)}</li>" for n in c.notes] + ["</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(results_csv, state=None, cache=None, *, out_dir=None, title: str | None = None,
                 feature_map: str | None = "auto") -> ReportPaths:
    """Write ``report.md`` (+ ``report_files/*.png``) and the self-contained ``report.html``.

    ``results_csv``: the leaderboard; ``state``: a :class:`ssl_cluster_bench.suite.SuiteState` (protocols,
    dataset status, sweeps) or None for a report over every row of the leaderboard; ``cache``: the feature
    cache the rows were clustered from (for the true labels of the confusion matrices). The files go to
    ``out_dir`` (default: the leaderboard's folder). ``feature_map``: how the 2-D map of the features is made,
    "umap" (umap-learn; PCA when it is not installed), "pca" (instant) or "none"; "auto": ``$SSCB_FEATURE_MAP``,
    else umap.
    """
    feature_map = resolve_feature_map(feature_map)  # a wrong value fails before anything is drawn
    results_csv = Path(results_csv)
    out_dir = Path(out_dir) if out_dir else results_csv.parent
    df = _with_protocol(read_leaderboard(results_csv)) if results_csv.is_file() else None
    if df is None:
        df = _with_protocol(pd.DataFrame(columns=["backbone", "dataset", "method", "n_clusters", "seed", "acc"]))
    main, sweeps = select_rows(df, state)
    tables, n_published, reported_notes = [], 0, []
    for dataset in _datasets(main):
        agg = aggregate(main[main["dataset"] == dataset])
        try:
            published = published_columns(agg)
        except Exception as e:  # a broken card must not cost the whole report
            published = None
            reported_notes.append(f"published numbers left out: {e}")
        n_published += 0 if published is None else int((published != "").any(axis=1).sum())
        tables.append((dataset, _table(agg, published)))
    if tables and not n_published and not reported_notes:
        reported_notes.append("published numbers: no model card publishes a clustering result for these backbones "
                              "under these datasets, splits, methods and k, so the tables show measured numbers only")
    figures, notes = build_figures(main, sweeps, results_csv, cache, feature_map)
    content = _Content(
        title=title or (f"sscb suite {state.suite}" if state is not None else "sscb report"),
        protocols=_protocols_text(main, state), status=state.status_table() if state is not None else None,
        tables=tables, figures=figures, notes=notes + reported_notes, leaderboard=results_csv,
        criteria=criteria_table(main))

    out_dir.mkdir(parents=True, exist_ok=True)
    fig_dir = out_dir / "report_files"
    fig_dir.mkdir(exist_ok=True)
    fig_paths, written = {}, []
    for f in figures:
        p = fig_dir / f"{f.name}.png"
        atomic_write_bytes(p, f.png)
        fig_paths[f.name] = f"report_files/{p.name}"
        written.append(p)
    for stale in fig_dir.glob("*.png"):  # figures of datasets no longer in the report
        if stale not in written:
            stale.unlink()
    md, ht = out_dir / "report.md", out_dir / "report.html"
    atomic_write_bytes(md, _markdown(content, fig_paths).encode())
    atomic_write_bytes(ht, _html(content).encode())
    return ReportPaths(md, ht, written)


# ----------------------------------------------------------------------------------------------- checking

_CHECK_SCRIPT = """<script>window.addEventListener("load", function () {
  var out = [];
  document.querySelectorAll("img").forEach(function (img) {
    out.push({name: img.dataset.name || img.alt, width: img.naturalWidth, height: img.naturalHeight});
  });
  var pre = document.createElement("pre"); pre.id = "sscb-image-check"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


def _blank(png: bytes) -> bool:
    """True for a plot with no data drawn: every figure of the report draws its data in colour (bars, lines,
    the confusion matrix's blues), so an image where under 0.2% of pixels are coloured is empty or only axes."""
    from PIL import Image

    hsv = np.asarray(Image.open(io.BytesIO(png)).convert("RGB").convert("HSV"), dtype=np.int16)
    coloured = (hsv[..., 1] > 60) & (hsv[..., 2] > 40)
    return float(coloured.mean()) < 0.002


def check_images(html_path, chromium: str | None = "chromium", screenshot=None, timeout: float = 120) -> list[dict]:
    """Check every image of a report HTML as a reader would see it; returns one dict per ``<img>``.

    Each embedded PNG is decoded and tested for blankness (``blank``); with ``chromium`` (a headless-capable
    Chromium binary) the page is also rendered and each image's ``naturalWidth`` / ``naturalHeight`` read back
    from the browser (0 = a broken image). ``screenshot``: also save a full-page PNG of the rendering there.
    """
    import re
    import shutil
    import subprocess
    import tempfile

    text = Path(html_path).read_text()
    found = re.findall(r'<img[^>]*data-name="([^"]*)"[^>]*src="data:image/png;base64,([^"]*)"', text)
    checks = []
    for name, data in found:
        png = base64.b64decode(data)
        try:
            blank = _blank(png)
        except Exception:  # not a decodable image at all
            blank = True
        checks.append({"name": name, "bytes": len(png), "blank": blank})
    n_img = len(re.findall(r"<img\b", text))
    if n_img != len(checks):
        checks.append({"name": "(an <img> without an embedded PNG)", "bytes": 0, "blank": True})
    binary = shutil.which(chromium) if chromium else None
    if binary is None:
        return checks
    flags = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"]
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.html"
        probe.write_text(text.replace("</body>", _CHECK_SCRIPT + "</body>"))
        dom = subprocess.run(flags + ["--dump-dom", probe.as_uri()], capture_output=True, text=True,
                             timeout=timeout).stdout
        if screenshot:
            subprocess.run(flags + ["--window-size=1280,4000", f"--screenshot={Path(screenshot).resolve()}",
                                    Path(html_path).resolve().as_uri()], capture_output=True, timeout=timeout)
    m = re.search(r'<pre id="sscb-image-check">(.*?)</pre>', dom, re.S)
    rendered = json.loads(html.unescape(m.group(1))) if m else []
    for i, c in enumerate(checks):
        r = rendered[i] if i < len(rendered) else {}
        c["width"], c["height"] = r.get("width", 0), r.get("height", 0)
    return checks
