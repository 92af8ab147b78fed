"""Unknown k on digits or Fashion-MNIST: how far the k picked by each label-free criterion lands from the classes.

    python benchmarks/k_auto.py                      # digits, pixels; reducers pca, zscore+pca, umap (if there)
    python benchmarks/k_auto.py --reduce pca --seeds 0,1,2
    python benchmarks/k_auto.py --dataset fashion-mnist --backbone efficientnet-lite0-96 --reduce pca --seeds 0

The features come from the feature cache through ``api.extract(backbone, dataset, ...)`` (extracted once if the
cache lacks them; Fashion-MNIST: its test split, read from ``--data-root``). For each reducer × method × seed,
``cluster_features(..., n_clusters="auto")`` fits the method at every k of the grid (2 .. 2 × #classes) and
records the silhouette, Calinski-Harabasz and Davies-Bouldin of each labeling in the reduced space
(:mod:`ssl_cluster_bench.k_select`). The table gives the k each criterion picks and its distance from the number of
classes (10 on both datasets), and the AMI of the rows at the k silhouette picked and at the true k. The labels are
used only for those AMIs (and for the number of classes that sets the default grid); no setting here was tuned on
them.
"""
from __future__ import annotations

import argparse
import importlib.util
import time
import warnings

import numpy as np
import pandas as pd

from ssl_cluster_bench.api import cluster_features, extract
from ssl_cluster_bench.k_select import _best

SPLITS = {"digits": None, "fashion-mnist": "test"}  # Fashion-MNIST: the 10,000 test images, as peer_protocol.py


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = "pca,zscore+pca" + (",umap" if importlib.util.find_spec("umap") else "")
    parser.add_argument("--dataset", default="digits", choices=sorted(SPLITS))
    parser.add_argument("--backbone", default="pixels", help="model-card id whose cached features are clustered")
    parser.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist",
                        help="Fashion-MNIST folder (not needed for the embedded digits)")
    parser.add_argument("--reduce", default=default, help=f"comma-separated reducers (default {default})")
    parser.add_argument("--methods", default="kmeans,agglomerative")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (the grid is fitted with each)")
    parser.add_argument("--pca-dim", type=int, default=50, help="PCA dim of the pca reducers (default 50, UMAP's)")
    parser.add_argument("--quick", action="store_true", help="smoke size: pca, kmeans, seed 0")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.reduce, args.methods, args.seeds = "pca", "kmeans", "0"
    return args


def _features(args) -> tuple[np.ndarray, np.ndarray]:
    root = args.data_root if args.dataset == "fashion-mnist" else None
    entry = extract(args.backbone, args.dataset, data_root=root, split=SPLITS[args.dataset], progress=False)
    return np.asarray(entry.features, dtype=np.float32), np.asarray(entry.labels)


def main(argv=None) -> pd.DataFrame:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    x, y = _features(args)
    n_classes = len(np.unique(y[y >= 0]))
    methods = tuple(args.methods.split(","))
    lines = []
    for reduce in args.reduce.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            t0 = time.perf_counter()
            df = cluster_features(x, y, methods=methods, n_clusters="auto", seeds=(seed,),
                                  reduce=reduce, pca_dim=args.pca_dim, progress=False)
            seconds = time.perf_counter() - t0
            for method, curve in df.attrs["k_curves"].items():
                row = df[df["method"] == method].iloc[0]
                picks = {c: _best(curve, c) for c in ("silhouette", "calinski_harabasz", "davies_bouldin")}
                lines.append({"reduce": reduce, "method": method, "seed": seed,
                              **{f"k {c}": k for c, k in picks.items()},
                              **{f"|k-{n_classes}| {c}": abs(k - n_classes) for c, k in picks.items()},
                              "AMI at k silhouette": round(float(row["ami"]), 3),
                              f"AMI at k={n_classes}": None, "seconds (all methods)": round(seconds, 1)})
            ref = cluster_features(x, y, methods=methods, n_clusters=(n_classes,), seeds=(seed,),
                                   reduce=reduce, pca_dim=args.pca_dim, progress=False)
            for line in lines[-len(df.attrs["k_curves"]):]:
                line[f"AMI at k={n_classes}"] = round(float(ref[ref["method"] == line["method"]]["ami"].iloc[0]), 3)
    table = pd.DataFrame(lines)
    print(f"{args.dataset}, {args.backbone} ({len(x):,} × {x.shape[1]})\n")
    print(table.to_markdown(index=False))
    return table


if __name__ == "__main__":
    main()
