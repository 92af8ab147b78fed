"""The zero-shot clustering protocol of Lowe et al. (2024) on our feature cache, beside our default.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/peer_protocol.py --csv /tmp/peer_protocol.csv
    python benchmarks/peer_protocol.py --datasets digits --seeds 3          # digits only, 3 seeds
    python benchmarks/peer_protocol.py --smoke                              # tiny: 300 digits, 2 seeds

For each (dataset, backbone) and seed, with k = the number of classes:

* ``kmeans (PCA)``: our default protocol (PCA to 256 dims, k-means), ``api.cluster_features(reduce="pca")``;
* ``UMAP + agglomerative``: UMAP to 50 dims (30 neighbours, min_dist 0: the protocol's ``umap`` reducer with its
  defaults, which are Lowe et al.'s), then Ward agglomerative clustering;
* ``UMAP + HDBSCAN``: the same UMAP space, then scikit-learn's HDBSCAN (it finds its own number of clusters). AMI
  is given with the noise points as one more cluster (the ranking column) and with them excluded.

The UMAP space of a seed is computed once with :func:`ssl_cluster_bench.reduce.reduce_features` and handed to
``cluster_features(reduce="none")`` for both UMAP rows: identical to ``reduce="umap"`` (same reducer, same seed)
at half the UMAP fits, and the same space scores the silhouette of every row. Each row's labeling gets a silhouette
in the PCA space and in the UMAP space of its seed (noise points left out, as ``k_select`` does); the last lines of
the table give, over all rows of a data set, over its rows at k = #classes (HDBSCAN left out) and within each
configuration (backbones × seeds: does it rank the backbones as AMI does?), the Spearman correlation of each
silhouette with AMI (Lowe et al.: the silhouette in UMAP space tracks AMI without labels).
Labels are used only for AMI and for k; nothing here was tuned on them.

Rows are appended to ``--csv`` after every (dataset, backbone, seed), so an interrupted run resumes where it
stopped; the table is computed from the CSV's rows.
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ssl_cluster_bench.api import cluster_features, extract
from ssl_cluster_bench.metrics import silhouette
from ssl_cluster_bench.protocol import Protocol
from ssl_cluster_bench.reduce import reduce_features

BACKBONES = {"digits": ("pixels", "random-resnet18", "efficientnet-lite0-96"),
             "fashion-mnist": ("pixels", "efficientnet-lite0-96")}
SPLITS = {"digits": None, "fashion-mnist": "test"}
KEY = ["dataset", "backbone", "config", "seed"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="digits,fashion-mnist")
    parser.add_argument("--fashion-root", default="/usr/share/datasets/fashion-mnist",
                        help="Fashion-MNIST folder (its test split is clustered)")
    parser.add_argument("--seeds", type=int, default=5,
                        help="seeds 0..n-1 per (dataset, backbone) (default 5; 0: the table of --csv only)")
    parser.add_argument("--fashion-seeds", type=int, default=None,
                        help="fewer seeds on Fashion-MNIST (default: --seeds)")
    parser.add_argument("--csv", type=Path, default=None, help="rows kept here; a rerun skips the rows it holds")
    parser.add_argument("--space", default="umap", help="the reducer of the peer rows (default umap; the smoke "
                                                        "test uses zscore+pca to skip UMAP's 35 s compilation)")
    parser.add_argument("--smoke", "--quick", action="store_true",
                        help="tiny: digits pixels, first 300 samples, 2 seeds")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    unknown = [d for d in args.datasets.split(",") if d not in BACKBONES]
    if unknown:
        parser.error(f"--datasets: {unknown[0]!r} is not one of {', '.join(BACKBONES)}")
    if args.seeds < 0:
        parser.error("--seeds must be >= 0 (0: only print the table of the rows --csv holds)")
    if args.smoke:
        args.datasets, args.seeds, args.fashion_seeds = "digits", 2, None
    return args


def _features(dataset: str, backbone: str, args) -> tuple[np.ndarray, np.ndarray]:
    root = args.fashion_root if dataset == "fashion-mnist" else None
    entry = extract(backbone, dataset, data_root=root, split=SPLITS[dataset], progress=False)
    x, y = np.asarray(entry.features, dtype=np.float32), np.asarray(entry.labels)
    return (x[:300], y[:300]) if args.smoke else (x, y)


def _silhouette(space: np.ndarray, pred: np.ndarray) -> float:
    kept = pred >= 0
    return silhouette(space[kept], pred[kept])


def run_seed(x, y, seed: int, space: str) -> list[dict]:
    """The three configurations' rows of one seed: AMI and the silhouette of each labeling in both spaces."""
    k = int(np.unique(y).size)
    ours = Protocol(reduce="pca", methods=("kmeans",), n_clusters=(k,), seeds=(seed,))
    peer = Protocol(reduce=space, methods=("agglomerative", "hdbscan"), n_clusters=(k,), seeds=(seed,))
    t0 = time.perf_counter()
    pca_space = reduce_features(x, ours, random_state=seed, progress=False)
    peer_space = reduce_features(x, peer, random_state=seed, progress=False)
    reduce_seconds = time.perf_counter() - t0
    frames = [cluster_features(x, y, ours, progress=False),
              cluster_features(peer_space, y, peer.replace(reduce="none", reduce_options={}), progress=False)]
    predictions = {run_id: pred for f in frames for run_id, pred in f.attrs["predictions"].items()}
    df = pd.concat(frames, ignore_index=True)
    df["config"] = df["method"].map({"kmeans": "kmeans (PCA)", "agglomerative": f"{space} + agglomerative",
                                     "hdbscan": f"{space} + HDBSCAN"})
    lines = []
    for _, row in df.iterrows():
        pred = np.asarray(predictions[row["run_id"]])
        lines.append({"config": row["config"], "seed": seed, "k": k, "n_found": int(row["n_found"]),
                      "ami": float(row["ami"]), "ami_noise_excluded": float(row.get("ami_clustered", np.nan)),
                      "noise_fraction": float(row.get("noise_fraction", 0.0)),
                      "silhouette_pca": _silhouette(pca_space, pred), "silhouette_umap": _silhouette(peer_space, pred),
                      "seconds": round(float(row["seconds"]) + reduce_seconds / 3, 2)})
    return lines


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """AMI mean ± std per (dataset, backbone, configuration), then per data set the Spearman of each silhouette
    with AMI over all its rows."""
    def pm(s):
        s = s.dropna()
        return f"{s.mean():.3f} ± {s.std() if len(s) > 1 else 0:.3f}" if len(s) else ""  # sample std, as aggregate

    out = []
    for (dataset, backbone, config), g in rows.groupby(["dataset", "backbone", "config"], sort=False):
        out.append({"dataset": dataset, "backbone": backbone, "configuration": config, "seeds": len(g),
                    "AMI": pm(g["ami"]), "AMI noise excluded": pm(g["ami_noise_excluded"]),
                    "noise": f"{g['noise_fraction'].mean():.2f}", "clusters": f"{g['n_found'].mean():.1f}",
                    "silhouette PCA": f"{g['silhouette_pca'].mean():.3f}",
                    "silhouette UMAP": f"{g['silhouette_umap'].mean():.3f}"})
    for dataset, g in rows.groupby("dataset", sort=False):
        # over every row, then over the rows at k = #classes only (HDBSCAN's own k left out: its many small
        # clusters score a high silhouette whatever their AMI)
        # and within each configuration (backbones × seeds): does the silhouette rank the backbones as AMI does?
        subsets = [("all", g), ("k = #classes", g[~g["config"].str.endswith("HDBSCAN")])]
        subsets += [(f"within {config}", sub) for config, sub in g.groupby("config", sort=False)]
        for which, sub in subsets:
            rho = {s: spearmanr(sub[s], sub["ami"], nan_policy="omit")[0]
                   for s in ("silhouette_pca", "silhouette_umap")}
            out.append({"dataset": dataset, "backbone": f"{which}: {len(sub)} rows",
                        "configuration": "Spearman ρ with AMI", "seeds": "", "AMI": "", "AMI noise excluded": "",
                        "noise": "", "clusters": "", "silhouette PCA": f"{rho['silhouette_pca']:.2f}",
                        "silhouette UMAP": f"{rho['silhouette_umap']:.2f}"})
    return pd.DataFrame(out)


def main(argv=None) -> pd.DataFrame:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    rows = pd.read_csv(args.csv) if args.csv is not None and args.csv.is_file() else pd.DataFrame(columns=KEY)
    done = set(map(tuple, rows[["dataset", "backbone", "seed"]].astype(str).to_numpy()))
    for dataset in args.datasets.split(","):
        n_seeds = args.fashion_seeds if dataset == "fashion-mnist" and args.fashion_seeds else args.seeds
        for backbone in (("pixels",) if args.smoke else BACKBONES[dataset]):
            x = y = None
            for seed in range(n_seeds):
                if (dataset, backbone, str(seed)) in done:
                    continue
                if x is None:
                    x, y = _features(dataset, backbone, args)
                new = pd.DataFrame(run_seed(x, y, seed, args.space)).assign(dataset=dataset, backbone=backbone)
                rows = pd.concat([rows, new], ignore_index=True) if len(rows) else new
                if args.csv is not None:  # kept at once: an interrupted run loses at most this seed
                    tmp = args.csv.with_name(f".{args.csv.name}.tmp")
                    rows.to_csv(tmp, index=False)
                    tmp.replace(args.csv)
                if not args.no_progress:
                    print(f"{dataset} {backbone} seed {seed}: " + ", ".join(
                        f"{r.config} AMI {r.ami:.3f}" for r in new.itertuples()), flush=True)
    table = summary(rows)
    print(table.to_markdown(index=False))
    return table


if __name__ == "__main__":
    main()
