"""Unknown k on digits (raw pixels): how far the k picked by each label-free criterion lands from the 10 classes.

    python benchmarks/k_auto_digits.py                      # reducers pca, zscore+pca, umap (if umap-learn is there)
    python benchmarks/k_auto_digits.py --reduce pca --seeds 0,1,2

For each reducer × method × seed, ``cluster_features(..., n_clusters="auto")`` fits the method at every k of the
grid (2 .. 20 = 2 × #classes) and records the silhouette, Calinski-Harabasz and Davies-Bouldin of each labeling in
the reduced space (:mod:`ssl_cluster_bench.k_select`). The table gives the k each criterion picks and its distance
from 10, and the AMI of the rows at the k silhouette picked. The labels are used only for that AMI (and for the
number of classes that sets the default grid); no setting here was tuned on them.
"""
from __future__ import annotations

import argparse
import importlib.util
import time
import warnings

import numpy as np
import pandas as pd
from sklearn.datasets import load_digits

from ssl_cluster_bench.api import cluster_features
from ssl_cluster_bench.k_select import _best


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = "pca,zscore+pca" + (",umap" if importlib.util.find_spec("umap") else "")
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


def main(argv=None) -> pd.DataFrame:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    lines = []
    for reduce in args.reduce.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            t0 = time.perf_counter()
            df = cluster_features(x, y, methods=tuple(args.methods.split(",")), n_clusters="auto", seeds=(seed,),
                                  reduce=reduce, pca_dim=args.pca_dim, progress=False)
            seconds = time.perf_counter() - t0
            for method, curve in df.attrs["k_curves"].items():
                row = df[df["method"] == method].iloc[0]
                picks = {c: _best(curve, c) for c in ("silhouette", "calinski_harabasz", "davies_bouldin")}
                lines.append({"reduce": reduce, "method": method, "seed": seed,
                              **{f"k {c}": k for c, k in picks.items()},
                              **{f"|k-10| {c}": abs(k - 10) for c, k in picks.items()},
                              "AMI at k silhouette": round(float(row["ami"]), 3),
                              "AMI at k=10": None, "seconds (all methods)": round(seconds, 1)})
            ref = cluster_features(x, y, methods=tuple(args.methods.split(",")), n_clusters=(10,), seeds=(seed,),
                                   reduce=reduce, pca_dim=args.pca_dim, progress=False)
            for line in lines[-len(df.attrs["k_curves"]):]:
                line["AMI at k=10"] = round(float(ref[ref["method"] == line["method"]]["ami"].iloc[0]), 3)
    table = pd.DataFrame(lines)
    print(table.to_markdown(index=False))
    return table


if __name__ == "__main__":
    main()
