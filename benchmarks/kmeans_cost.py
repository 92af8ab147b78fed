"""Cost of the default k-means at ImageNet size against the previous code's "fast" faiss call, same process.

    PYTHONPATH=.:benchmarks python3 benchmarks/kmeans_cost.py --reduced X.npy   # a saved (n, 256) PCA output
    PYTHONPATH=.:benchmarks python3 benchmarks/kmeans_cost.py --quick           # smoke run

At k = 1000 on 200k rows the automatic settings resolve to one restart, random seeding, 10 Lloyd iterations
on 64 sampled rows per centroid: the setting that the previous benchmarks/README.md timed as "fast" (there a
plain ``faiss.Kmeans(niter=10, max_points_per_centroid=64)`` with faiss's own sampling). This script times
both, interleaved (``--reps`` rounds), plus the final assignment of every row, and prints the ratio
new / old. A ratio near 1 means the reference-vs-ours ratios measured for the "fast" setting on an idle
machine carry over to the defaults.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ssl_cluster_bench.cluster import KMeans, _nearest
from synthetic import GaussianMixtureFeatures, limit_threads, markdown_table


def old_fast(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The previous code's path with n_iter=10, max_points_per_centroid=64: faiss samples and seeds itself."""
    import faiss

    km = faiss.Kmeans(X.shape[1], k, niter=10, seed=seed + 1, max_points_per_centroid=64,
                      min_points_per_centroid=1, verbose=False)
    km.train(X)
    return _nearest(X, km.centroids)[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reduced", type=Path, default=None, help=".npy of PCA-reduced features (n, dim)")
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        limit_threads(args.threads)
    if args.quick or args.reduced is None:
        n, k = (5_000, 100) if args.quick else (200_000, args.k)
        X = GaussianMixtureFeatures(n, 256, k, seed=1)[0:n]
        args.k = k
    else:
        X = np.load(args.reduced)
    rows = []
    for rep in range(args.reps):
        for name, fit in (("previous fast faiss call (10 it, 64/centroid)", lambda: old_fast(X, args.k, rep)),
                          ("KMeans defaults", lambda: KMeans(args.k, random_state=rep, progress=False).fit(X))):
            t0 = time.perf_counter()
            out = fit()
            seconds = time.perf_counter() - t0
            inertia = out.inertia_ if isinstance(out, KMeans) else float(out.sum(dtype=np.float64))
            rows.append({"rep": rep, "kmeans": name, "seconds": round(seconds, 2), "inertia": f"{inertia:.6g}"})
    plan = KMeans(args.k)._plan(*X.shape)
    old = np.median([r["seconds"] for r in rows if r["kmeans"].startswith("previous")])
    new = np.median([r["seconds"] for r in rows if r["kmeans"] == "KMeans defaults"])
    print(markdown_table(rows))
    print(f"\n{X.shape[0]} × {X.shape[1]}, k = {args.k}; defaults resolve to max_points_per_centroid={plan[0]}, "
          f"n_iter={plan[1]}, n_init={plan[2]}; median seconds new / old = {new / old:.2f} (both include the "
          f"final assignment of every row)")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ratio_new_over_old": new / old}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
