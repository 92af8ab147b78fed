"""Benchmark: k-means vs SCAN vs SCAN + self-labeling on scikit-learn's digits (raw 64-d pixels), CPU.

Prints one table over seeds (mean ± std of ACC / NMI / ARI and wall-clock seconds per fit) and the purity of
the mined neighbours. Usage::

    python benchmarks/scan_digits.py [--seeds 5] [--head linear] [--device cpu]

k-means is scikit-learn's KMeans(n_clusters=10, n_init=10, random_state=seed); SCAN uses the estimator's
defaults (10 linear heads, K = 20); the SCAN time includes neighbour mining.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits

from ssl_cluster_bench.heads import SCAN, mine_neighbors, neighbor_purity
from ssl_cluster_bench.metrics import evaluate


def run(seeds: int = 5, head: str = "linear", device: str = "cpu") -> tuple[pd.DataFrame, float]:
    """One row per (method, seed) with acc, nmi, ari, seconds; and the neighbour purity at K = 20."""
    data = load_digits()
    X, y = data.data.astype(np.float32), data.target
    # Warm-up fits so one-off costs (OpenMP pools, first kernel calls) do not land in seed 0's time.
    KMeans(n_clusters=10, n_init=1, random_state=0).fit(X[:200])
    SCAN(10, epochs=1, n_heads=1, device=device, verbose=False).fit(X[:200])
    rows = []
    for seed in range(seeds):
        t0 = time.perf_counter()
        pred = KMeans(n_clusters=10, n_init=10, random_state=seed).fit(X).labels_
        rows.append({"method": "k-means", "seed": seed, **evaluate(y, pred), "seconds": time.perf_counter() - t0,
                     "degenerate": False})
        for name, self_label in (("SCAN", False), ("SCAN + self-label", True)):
            t0 = time.perf_counter()
            est = SCAN(10, head=head, self_label=self_label, random_state=seed, device=device,
                       verbose=False).fit(X)
            seconds = time.perf_counter() - t0
            rows.append({"method": name, "seed": seed, **evaluate(y, est.labels_, est.probs_),
                         "seconds": seconds, "degenerate": est.degenerate_})
    purity = neighbor_purity(mine_neighbors(X, 20, verbose=False), y)
    return pd.DataFrame(rows), purity


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds of every metric, one row per method (in the order they were run)."""
    metrics = ["acc", "nmi", "ari", "seconds"]
    order = list(dict.fromkeys(results["method"]))
    agg = results.groupby("method", sort=False)[metrics].agg(["mean", "std"]).loc[order]
    table = pd.DataFrame(index=agg.index)
    for m in metrics:
        digits = 2 if m == "seconds" else 4
        table[m] = [f"{mu:.{digits}f} ± {sd:.{digits}f}" for mu, sd in zip(agg[(m, "mean")], agg[(m, "std")])]
    table["seeds"] = results.groupby("method", sort=False).size().loc[order]
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (0..seeds-1)")
    parser.add_argument("--head", choices=["linear", "mlp"], default="linear")
    parser.add_argument("--device", default="cpu", help="'cpu', 'cuda' or 'auto'")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    results, purity = run(args.seeds, args.head, args.device)
    print(f"digits (1797 x 64 raw pixels), k = 10, {args.seeds} seeds, head = {args.head}, device = {args.device}")
    print(summary(results).to_markdown())
    print(f"neighbour purity (K = 20, cosine): {purity:.4f}")
    if results["degenerate"].eq(True).any():
        print("warning: some SCAN runs were flagged degenerate")


if __name__ == "__main__":
    main()
