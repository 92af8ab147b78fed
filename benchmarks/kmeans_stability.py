"""Seed-to-seed stability of k-means on real pixels: digits (10 seeds) and Fashion-MNIST (all 70,000, 5 seeds).

    PYTHONPATH=. python3 benchmarks/kmeans_stability.py                 # digits k = 10, 15 + Fashion-MNIST k = 10
    PYTHONPATH=. python3 benchmarks/kmeans_stability.py --skip-fashion  # digits only (seconds)
    PYTHONPATH=. python3 benchmarks/kmeans_stability.py --quick         # smoke run

Features as ``sscb run`` makes them for the ``pixels`` backbone: raw pixels, PCA to 256 (digits: 64 pixels,
so a centring rotation). Each k-means configuration runs once per seed in this process and prints ACC / NMI
mean ± std and the wall time summed over seeds, with the time ratio against scikit-learn
``KMeans(n_init=10)`` (the baseline, run in the same process). Configurations:

- ``ours (defaults)``: :class:`ssl_cluster_bench.cluster.KMeans` with its defaults;
- ``ours before issue 15``: faiss random init, one restart, 20 iterations, 256 points per centroid;
- ``sklearn KMeans(n_init=10)``: k-means++ (greedy), 10 restarts, Lloyd to convergence.

Targets (issue 15): digits k = 10 mean ACC >= 0.790 with std <= 0.01, k = 15 mean ACC >= 0.89; Fashion-MNIST
std of ACC <= 0.01 and mean >= the published k-means figures (ACC 0.474, NMI 0.512). The defaults were
chosen on label-free numbers (benchmarks/kmeans_defaults.py), not on these accuracies.
"""
from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

from ssl_cluster_bench.cluster import KMeans
from ssl_cluster_bench.metrics import evaluate
from ssl_cluster_bench.reduce import PCA

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
TARGETS = {("digits", 10): {"acc_mean": 0.790, "acc_std": 0.01}, ("digits", 15): {"acc_mean": 0.89},
           ("fashion-mnist", 10): {"acc_mean": 0.474, "nmi_mean": 0.512, "acc_std": 0.01}}


def _idx(path: Path) -> np.ndarray:
    """An MNIST-format idx file (gzip): magic (dtype, ndim), the shape, then the raw array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion(root: Path = FASHION_DIR) -> tuple[np.ndarray, np.ndarray]:
    files = ["train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz"]
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"Fashion-MNIST files {missing} not under {root}; install the Debian package "
                                f"dataset-fashion-mnist or pass --fashion-root, or run with --skip-fashion")
    images = np.concatenate([_idx(root / files[0]), _idx(root / files[1])]).reshape(-1, 784)
    labels = np.concatenate([_idx(root / files[2]), _idx(root / files[3])]).astype(np.int64)
    return images.astype(np.float32) / 255.0, labels


def sscb_features(pixels: np.ndarray, pca_dim: int = 256) -> np.ndarray:
    """The reduction ``sscb run`` applies (PCA to 256, or a centring rotation when there are fewer dims)."""
    dim = None if pca_dim >= pixels.shape[1] else pca_dim
    return PCA(dim, progress=False).fit_transform(pixels)


def configurations() -> dict:
    from sklearn.cluster import KMeans as SkKMeans

    def sklearn_fit(X, k, seed):
        return SkKMeans(k, n_init=10, random_state=seed).fit(X).labels_

    return {
        "sklearn KMeans(n_init=10)": sklearn_fit,
        "ours (defaults)": lambda X, k, seed: KMeans(k, random_state=seed, progress=False).fit(X).labels_,
        "ours before issue 15 (random init, 1 restart)": lambda X, k, seed: KMeans(
            k, init="random", n_init=1, n_iter=20, max_points_per_centroid=256, random_state=seed,
            progress=False).fit(X).labels_,
    }


def measure(name: str, X: np.ndarray, y: np.ndarray, k: int, seeds: int) -> list[dict]:
    rows = []
    baseline_seconds = None
    for config, fit in configurations().items():
        accs, nmis, seconds = [], [], 0.0
        for seed in range(seeds):
            t0 = time.perf_counter()
            pred = fit(X, k, seed)
            seconds += time.perf_counter() - t0
            scores = evaluate(y, pred)
            accs.append(scores["acc"])
            nmis.append(scores["nmi"])
        if baseline_seconds is None:
            baseline_seconds = seconds
        # what the defaults resolve to here (restarts, iterations, points per centroid)
        plan = "n_init={2}, n_iter={1}, max_points_per_centroid={0}".format(*KMeans(k)._plan(*X.shape)) \
            if config == "ours (defaults)" else ""
        rows.append({"dataset": name, "n": X.shape[0], "dim": X.shape[1], "k": k, "seeds": seeds,
                     "kmeans": config, "resolved": plan,
                     "acc_mean": round(float(np.mean(accs)), 4), "acc_std": round(float(np.std(accs, ddof=1)), 4),
                     "nmi_mean": round(float(np.mean(nmis)), 4), "nmi_std": round(float(np.std(nmis, ddof=1)), 4),
                     "seconds": round(seconds, 2),
                     "time_vs_sklearn": round(seconds / baseline_seconds, 3)})
    return rows


def check(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        target = TARGETS.get((row["dataset"], row["k"])) if row["kmeans"] == "ours (defaults)" else None
        for key, bound in (target or {}).items():
            ok = row[key] <= bound if key.endswith("_std") else row[key] >= bound
            lines.append(f"{row['dataset']} k={row['k']} {key} = {row[key]:.4f} "
                         f"({'<=' if key.endswith('_std') else '>='} {bound}): {'OK' if ok else 'NOT MET'}")
    return lines


def main(argv=None) -> int:
    from sklearn.datasets import load_digits

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds on digits")
    parser.add_argument("--fashion-seeds", type=int, default=5, help="seeds on Fashion-MNIST")
    parser.add_argument("--skip-fashion", action="store_true")
    parser.add_argument("--fashion-root", type=Path, default=FASHION_DIR)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, digits only")
    parser.add_argument("--threads", type=int, default=None, help="cap BLAS/OpenMP/faiss threads")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        from synthetic import limit_threads

        limit_threads(args.threads)
    if args.quick:
        args.seeds, args.skip_fashion = 2, True
    pixels, labels = load_digits(return_X_y=True)
    X = sscb_features(pixels.astype(np.float32))
    rows = []
    for k in (10, 15):
        rows += measure("digits", X, labels, k, args.seeds)
        print(f"digits k={k} done", flush=True)
    if not args.skip_fashion:
        pixels, labels = load_fashion(args.fashion_root)
        X = sscb_features(pixels)
        rows += measure("fashion-mnist", X, labels, 10, args.fashion_seeds)
    from synthetic import markdown_table

    lines = check(rows)
    print(markdown_table(rows), "", *lines, sep="\n")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "checks": lines}, indent=2))
    return 0 if all(line.endswith("OK") for line in lines) else 1


if __name__ == "__main__":
    raise SystemExit(main())
