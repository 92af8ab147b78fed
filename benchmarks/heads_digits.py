"""All clustering methods on scikit-learn digits (1797 images, 10 classes), several seeds, mean ± std.

    python benchmarks/heads_digits.py                  # 5 seeds, every method (TEMI/TURTLE make it long on a CPU)
    python benchmarks/heads_digits.py --seeds 2 --methods kmeans,mmdc --csv out.csv

Methods, each with its library defaults and ``random_state=seed``, on the raw pixels (1797 × 64, no PCA):
k-means (our faiss wrapper), SCAN, SCAN + self-labeling, MMDC (lowest-loss head), MMDC with k-means refinement,
MMDC vote ensemble, TwoStageUC, TEMI, TURTLE; and on the random-init ResNet-18 features of the same images
(1797 × 512, the project's ``random-resnet18`` backbone, extracted into the feature cache on first use):
k-means and TURTLE, plus TURTLE on both spaces jointly. Columns: ACC, NMI, ARI (ssl_cluster_bench.metrics),
the method's own label-free score (lower is better: SCAN/TEMI loss of the kept head, 1 − TURTLE's
generalisation score, k-means inertia per row, MMDC/TwoStageUC lowest head loss), the silhouette of the
clustering on the first space's features (PCA to 256 dims as in the default protocol; higher is better) and the
CPU seconds of the fit (process time of all threads). Prints a markdown table, then the Spearman correlation
with ACC of each label-free score: for the silhouette over all rows, for the method's own score over the seeds
of each method (its scale differs between methods). ``--csv`` also writes the per-seed rows.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.datasets import load_digits

from ssl_cluster_bench.cluster import KMeans
from ssl_cluster_bench.heads import SCAN
from ssl_cluster_bench.heads.mmdc import MMDC
from ssl_cluster_bench.heads.temi import TEMI
from ssl_cluster_bench.heads.turtle import TURTLE
from ssl_cluster_bench.heads.twostage import TwoStageUC
from ssl_cluster_bench.metrics import evaluate, silhouette
from ssl_cluster_bench.reduce import PCA

RESNET = "random-resnet18"
# name -> (spaces it clusters, constructor(seed, progress) of an estimator with fit(X) and labels_)
METHODS = {
    "kmeans": (["pixels"], lambda seed, progress: KMeans(10, random_state=seed, progress=progress)),
    "scan": (["pixels"], lambda seed, progress: SCAN(10, random_state=seed, verbose=progress)),
    "scan+selflabel": (["pixels"], lambda seed, progress: SCAN(10, self_label=True, random_state=seed,
                                                               verbose=progress)),
    "mmdc": (["pixels"], lambda seed, progress: MMDC(10, random_state=seed, verbose=progress)),
    "mmdc+refine": (["pixels"], lambda seed, progress: MMDC(10, refine=True, random_state=seed, verbose=progress)),
    "mmdc vote": (["pixels"], lambda seed, progress: MMDC(10, ensemble="vote", random_state=seed, verbose=progress)),
    "twostage": (["pixels"], lambda seed, progress: TwoStageUC(10, random_state=seed, verbose=progress)),
    "temi": (["pixels"], lambda seed, progress: TEMI(10, random_state=seed, verbose=progress)),
    "turtle": (["pixels"], lambda seed, progress: TURTLE(10, random_state=seed, verbose=progress)),
    f"kmeans {RESNET}": ([RESNET], lambda seed, progress: KMeans(10, random_state=seed, progress=progress)),
    f"turtle {RESNET}": ([RESNET], lambda seed, progress: TURTLE(10, random_state=seed, verbose=progress)),
    f"turtle pixels+{RESNET}": (["pixels", RESNET],
                                lambda seed, progress: TURTLE(10, random_state=seed, verbose=progress)),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per method")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the methods")
    parser.add_argument("--csv", type=Path, default=None, help="also write the per-seed rows here (after each row)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)}")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    return args


def load_spaces(names: set[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The requested feature spaces of digits (rows aligned) and the labels."""
    X, y = load_digits(return_X_y=True)
    spaces = {"pixels": X.astype(np.float32)}
    if RESNET in names:
        from ssl_cluster_bench.api import extract

        entry = extract(RESNET, "digits", progress=False)
        if not np.array_equal(entry.indices, np.arange(X.shape[0])) or not np.array_equal(entry.labels, y):
            raise RuntimeError(f"the cached {RESNET} digits features are not aligned with load_digits()")
        spaces[RESNET] = np.asarray(entry.features, dtype=np.float32)
    return spaces, y


def _own_score(est) -> float:
    if isinstance(est, KMeans):
        return float(est.inertia_) / len(est.labels_)
    if isinstance(est, TURTLE):
        return 1.0 - float(est.score_)
    own = getattr(est, "score_", None)
    return float(own) if own is not None else float(np.min(est.head_losses_))


def run(methods: list[str], seeds: int, progress: bool = True, csv: Path | None = None) -> pd.DataFrame:
    """One row per method × seed: acc, nmi, ari, score, silhouette, cpu_seconds (also rewritten to ``csv`` after
    every row, so a long run that is stopped keeps what it finished)."""
    spaces, y = load_spaces({s for m in methods for s in METHODS[m][0]})
    reduced = {name: PCA(256 if z.shape[1] > 256 else None, progress=False).fit_transform(z)
               for name, z in spaces.items()}
    rows = []
    for method in methods:
        names, make = METHODS[method]
        for seed in range(seeds):
            est = make(seed, progress)
            inputs = spaces[names[0]] if len(names) == 1 else [spaces[n] for n in names]
            start = time.process_time()
            est.fit(inputs)
            cpu = time.process_time() - start
            scores = evaluate(y, est.labels_)
            row = {"method": method, "seed": seed, "acc": scores["acc"], "nmi": scores["nmi"], "ari": scores["ari"],
                   "score": _own_score(est), "silhouette": silhouette(reduced[names[0]], est.labels_),
                   "cpu_seconds": cpu}
            rows.append(row)
            print(f"{method:>28} seed {seed}: ACC {row['acc']:.3f}  NMI {row['nmi']:.3f}  ARI {row['ari']:.3f}  "
                  f"score {row['score']:.4g}  silhouette {row['silhouette']:.3f}  {cpu:.1f} CPU s", flush=True)
            if csv:
                csv.parent.mkdir(parents=True, exist_ok=True)
                tmp = csv.with_name(f".{csv.name}.tmp")
                pd.DataFrame(rows).to_csv(tmp, index=False)
                tmp.replace(csv)
    return pd.DataFrame(rows)


def summary(rows: pd.DataFrame) -> str:
    """Markdown table of mean ± std over seeds per method (in the order the methods ran)."""
    cols = ["acc", "nmi", "ari", "silhouette", "cpu_seconds"]
    stats = rows.groupby("method", sort=False)[cols].agg(["mean", "std"])
    stats = stats.fillna(0.0)  # std of a single seed
    columns = {"ACC": ("acc", ".3f"), "NMI": ("nmi", ".3f"), "ARI": ("ari", ".3f"),
               "silhouette": ("silhouette", ".3f"), "CPU s": ("cpu_seconds", ".1f")}
    table = pd.DataFrame({name: [f"{m:{fmt}} ± {s:{fmt}}" for m, s in zip(stats[(col, "mean")], stats[(col, "std")])]
                          for name, (col, fmt) in columns.items()}, index=stats.index)
    table.insert(0, "seeds", rows.groupby("method", sort=False).size())
    return table.to_markdown()


def correlations(rows: pd.DataFrame) -> str:
    """Spearman ρ with ACC: silhouette over all rows; −score over each method's seeds (lower score = better)."""
    lines = []
    ok = rows["silhouette"].notna()
    rho = spearmanr(rows.loc[ok, "silhouette"], rows.loc[ok, "acc"]).statistic if ok.sum() > 2 else float("nan")
    lines.append(f"| silhouette, all rows | {int(ok.sum())} | {rho:+.2f} |")
    for method, group in rows.groupby("method", sort=False):
        rho = spearmanr(-group["score"], group["acc"]).statistic if len(group) > 2 else float("nan")
        lines.append(f"| −score, {method} seeds | {len(group)} | {rho:+.2f} |")
    return "| label-free criterion | rows | Spearman ρ with ACC |\n|---|---|---|\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = run(args.methods, args.seeds, progress=not args.no_progress, csv=args.csv)
    print(f"\ndigits (1797 images, k = 10), {args.seeds} seed(s), mean ± std\n")
    print(summary(rows))
    print()
    print(correlations(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
