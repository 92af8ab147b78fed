"""All clustering methods on scikit-learn digits raw pixels (1797 × 64, 10 classes), several seeds, mean ± std.

    python benchmarks/heads_digits.py                  # 5 seeds, every method (about 2-4 min on 2 busy cores)
    python benchmarks/heads_digits.py --seeds 2 --methods kmeans,mmdc --csv out.csv

Methods, each with its library defaults and ``random_state=seed``, on the raw pixels (no PCA): k-means (our
faiss wrapper), SCAN, SCAN + self-labeling, MMDC (lowest-loss head), MMDC with k-means refinement, MMDC
vote ensemble, TwoStageUC. Columns: ACC, NMI, ARI (ssl_cluster_bench.metrics) and the CPU seconds of the
fit (process time: all threads of this process, so on a busy machine it is steadier than wall time).
Prints a markdown table; ``--csv`` also writes the per-seed rows.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_digits

from ssl_cluster_bench.cluster import KMeans
from ssl_cluster_bench.heads import SCAN
from ssl_cluster_bench.heads.mmdc import MMDC
from ssl_cluster_bench.heads.twostage import TwoStageUC
from ssl_cluster_bench.metrics import evaluate

# name -> constructor(seed, progress) of an estimator with fit(X) and labels_
METHODS = {
    "kmeans": lambda seed, progress: KMeans(10, random_state=seed, progress=progress),
    "scan": lambda seed, progress: SCAN(10, random_state=seed, verbose=progress),
    "scan+selflabel": lambda seed, progress: SCAN(10, self_label=True, random_state=seed, verbose=progress),
    "mmdc": lambda seed, progress: MMDC(10, random_state=seed, verbose=progress),
    "mmdc+refine": lambda seed, progress: MMDC(10, refine=True, random_state=seed, verbose=progress),
    "mmdc vote": lambda seed, progress: MMDC(10, ensemble="vote", random_state=seed, verbose=progress),
    "twostage": lambda seed, progress: TwoStageUC(10, random_state=seed, verbose=progress),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per method")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the methods")
    parser.add_argument("--csv", type=Path, default=None, help="also write the per-seed rows here")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    return args


def run(methods: list[str], seeds: int, progress: bool = True) -> pd.DataFrame:
    """One row per method × seed: acc, nmi, ari, cpu_seconds."""
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    rows = []
    for method in methods:
        for seed in range(seeds):
            est = METHODS[method](seed, progress)
            start = time.process_time()
            est.fit(X)
            cpu = time.process_time() - start
            scores = evaluate(y, est.labels_)
            rows.append({"method": method, "seed": seed, "acc": scores["acc"], "nmi": scores["nmi"],
                         "ari": scores["ari"], "cpu_seconds": cpu})
            print(f"{method:>15} seed {seed}: ACC {scores['acc']:.3f}  NMI {scores['nmi']:.3f}  "
                  f"ARI {scores['ari']:.3f}  {cpu:.1f} CPU s", flush=True)
    return pd.DataFrame(rows)


def summary(rows: pd.DataFrame) -> str:
    """Markdown table of mean ± std over seeds per method (in the order the methods ran)."""
    stats = rows.groupby("method", sort=False)[["acc", "nmi", "ari", "cpu_seconds"]].agg(["mean", "std"])
    stats = stats.fillna(0.0)  # std of a single seed
    columns = {"ACC": ("acc", ".3f"), "NMI": ("nmi", ".3f"), "ARI": ("ari", ".3f"), "CPU s": ("cpu_seconds", ".2f")}
    table = pd.DataFrame({name: [f"{m:{fmt}} ± {s:{fmt}}" for m, s in zip(stats[(col, "mean")], stats[(col, "std")])]
                          for name, (col, fmt) in columns.items()}, index=stats.index)
    table.insert(0, "seeds", rows.groupby("method", sort=False).size())
    return table.to_markdown()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = run(args.methods, args.seeds, progress=not args.no_progress)
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        rows.to_csv(args.csv, index=False)
    print(f"\ndigits raw pixels (1797 × 64, k = 10), {args.seeds} seed(s), mean ± std\n")
    print(summary(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
