"""How the k-means defaults were chosen: label-free numbers only (inertia, seed-to-seed agreement, time).

    PYTHONPATH=.:benchmarks python3 benchmarks/kmeans_defaults.py            # digits + 100- and 1000-class synthetic
    PYTHONPATH=.:benchmarks python3 benchmarks/kmeans_defaults.py --skip-large   # without the 200k × 2048 part
    PYTHONPATH=.:benchmarks python3 benchmarks/kmeans_defaults.py --quick        # smoke run

No class label is read here. For each k-means setting the script reports, over seeds:
- ``inertia``: sum of squared distances of all rows to their centre (mean over seeds; lower is better);
- ``agreement``: mean ARI between the partitions of every pair of seeds (1 = every seed gives the same
  clustering; this is the seed noise a leaderboard reader sees);
- ``seconds``: k-means wall time per seed (seeding, restarts, training and the final assignment).

Data: digits pixels as ``sscb run`` reduces them (k = 10, 15), and synthetic mixtures with a generator seed
(1) that no reported benchmark uses: 100 classes (25,600 × 512 -> PCA 128) and 1000 classes
(200,000 × 2048 -> PCA 256, the ImageNet-size setting). The table for ``ours (defaults)`` shows what the
automatic settings resolve to on that data.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score

from ssl_cluster_bench.cluster import KMeans
from ssl_cluster_bench.reduce import PCA
from synthetic import GaussianMixtureFeatures, limit_threads, markdown_table


def measure(data: str, X: np.ndarray, k: int, name: str, options: dict, seeds: int) -> dict:
    labels, inertias, seconds, fitted = [], [], 0.0, None
    for seed in range(seeds):
        t0 = time.perf_counter()
        fitted = KMeans(k, random_state=seed, progress=False, **options).fit(X)
        seconds += time.perf_counter() - t0
        labels.append(fitted.labels_)
        inertias.append(fitted.inertia_)
    pairs = list(itertools.combinations(labels, 2))
    return {"data": data, "k": k, "setting": name, "init": ",".join(sorted(set(fitted.inits_))),
            "n_init": fitted.n_init_, "n_iter": fitted.n_iter_, "points_per_centroid": fitted.max_points_per_centroid_,
            "seeds": seeds, "inertia": float(np.mean(inertias)), "inertia_std": float(np.std(inertias, ddof=1)),
            "agreement_ari": round(float(np.mean([adjusted_rand_score(a, b) for a, b in pairs])), 4),
            "seconds_per_fit": round(seconds / seeds, 3)}


def small_grid() -> dict:
    grid = {"ours (defaults)": {}}
    for init, n_init, n_iter in itertools.product(("k-means++", "random"), (1, 3, 10), (20, 50)):
        grid[f"{init} n_init={n_init} n_iter={n_iter}"] = {"init": init, "n_init": n_init, "n_iter": n_iter}
    return grid


def synthetic_reduced(n: int, dim: int, classes: int, pca_dim: int, cache: Path | None) -> np.ndarray:
    path = cache / f"gmm-n{n}-d{dim}-c{classes}-p{pca_dim}-seed1.npy" if cache else None
    if path is not None and path.is_file():
        return np.load(path)
    features = GaussianMixtureFeatures(n, dim, classes, seed=1)
    reduced = PCA(pca_dim, progress=False).fit_transform(features[0:n])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, reduced)
    return reduced


def main(argv=None) -> int:
    from sklearn.datasets import load_digits

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds on digits and on the 100-class data")
    parser.add_argument("--large-seeds", type=int, default=2, help="seeds on the 200k × 2048 data")
    parser.add_argument("--skip-large", action="store_true", help="skip the 200k × 2048, k = 1000 part")
    parser.add_argument("--cache", type=Path, default=None, help="keep the PCA-reduced synthetic data here")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 seeds, small grid, no large part")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        limit_threads(args.threads)
    if args.quick:
        args.seeds, args.skip_large = 3, True
    rows = []
    pixels = load_digits().data.astype(np.float32)
    X = PCA(None, progress=False).fit_transform(pixels)  # what `sscb run` does with 64 dims and pca_dim 256
    grid = small_grid()
    if args.quick:
        grid = dict(list(grid.items())[:3])
    for k in (10, 15):
        for name, options in grid.items():
            rows.append(measure("digits", X, k, name, options, args.seeds))
        print(f"digits k={k} done", flush=True)
    X = synthetic_reduced(25_600, 512, 100, 128, args.cache) if not args.quick else \
        synthetic_reduced(4000, 128, 20, 32, None)
    k = 100 if not args.quick else 20
    for name, options in {"ours (defaults)": {}, "k-means++ n_init=1": {"init": "k-means++", "n_init": 1},
                          "random n_init=1": {"init": "random", "n_init": 1}}.items():
        rows.append(measure(f"gmm {X.shape[0]}×{X.shape[1]}", X, k, name, options, args.seeds))
    print("100-class synthetic done", flush=True)
    if not args.skip_large:
        X = synthetic_reduced(200_000, 2048, 1000, 256, args.cache)
        large = {"ours (defaults)": {},
                 "k-means++, budget-resolved iterations and sample": {"init": "k-means++"},
                 "random n_iter=20, 256 points/centroid (before issue 15)": {"init": "random", "n_init": 1,
                                                                             "n_iter": 20,
                                                                             "max_points_per_centroid": 256}}
        for name, options in large.items():
            rows.append(measure("gmm 200000×256", X, 1000, name, options, args.large_seeds))
            print(f"large: {name} done", flush=True)
    for row in rows:
        row["inertia"], row["inertia_std"] = f"{row['inertia']:.6g}", f"{row['inertia_std']:.3g}"
    print(markdown_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
