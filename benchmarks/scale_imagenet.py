"""Scale benchmark: the clustering stage at ImageNet size (1,281,167 × 2048 float16) on one machine.

    python benchmarks/scale_imagenet.py                      # full size: ~5 GB of disk, minutes
    python benchmarks/scale_imagenet.py --quick              # small smoke run (seconds)
    python benchmarks/scale_imagenet.py --workdir /data/tmp --keep   # keep the entry; a re-run reuses it

Steps: a child process streams a seeded Gaussian mixture (1000 ImageNet-sized classes, see synthetic.py) into
a feature-cache entry; this process then runs the project's protocol on the entry's float16 memmap, as
``api.cluster_features`` does: streaming PCA to 256 (fit, then transform, block by block), faiss k-means for
k = 1000 and 1500, and ACC / NMI / AMI / ARI. Prints one table of stages (wall time, peak RSS so far) and
one of results, checks the targets (pipeline ≤ 10 min, peak RSS ≤ 6 GiB, entry never loaded whole) and
optionally writes everything as JSON. The entry is deleted afterwards unless ``--keep``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.linalg import eigh

from synthetic import (IMAGENET_TRAIN_SIZE, GaussianMixtureFeatures, MemoryMonitor, generate_entry, gib,
                       limit_threads, markdown_table, rusage_peak_bytes)
from ssl_cluster_bench.cluster import KMeans
from ssl_cluster_bench.metrics import evaluate
from ssl_cluster_bench.reduce import PCA

TIME_BUDGET_S = 600.0
RSS_BUDGET_BYTES = 6 * 2**30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n", type=int, default=IMAGENET_TRAIN_SIZE, help="rows (ImageNet-1k train size)")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension (ResNet-50 pooled features)")
    parser.add_argument("--classes", type=int, default=1000, help="number of mixture classes")
    parser.add_argument("--pca-dim", type=int, default=256, help="PCA output dimension")
    parser.add_argument("--overcluster", type=float, nargs="+", default=[1.0, 1.5],
                        help="k = round(factor × classes) for each factor")
    parser.add_argument("--n-iter", type=int, default=None, help="k-means iterations (library default if unset)")
    parser.add_argument("--max-points-per-centroid", type=int, default=None,
                        help="faiss training sample cap per centroid (library default if unset)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generator and of k-means")
    parser.add_argument("--threads", type=int, default=None, help="cap BLAS/OpenMP/faiss threads (default: all)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the cache entry is written (default: a new temporary directory under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the cache entry (a re-run then reuses it)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke-size run: n=20000, dim=256, 100 classes, PCA to 64")
    parser.add_argument("--precision-rows", type=int, default=0,
                        help="also measure the float32-block covariance against float64 on this many rows")
    parser.add_argument("--json", type=Path, default=None, help="also write the tables and checks as JSON here")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.dim, args.classes, args.pca_dim = 20_000, 256, 100, 64
    if args.n < args.classes:
        parser.error(f"--n ({args.n}) must be at least --classes ({args.classes})")
    if not 1 <= args.pca_dim <= args.dim:
        parser.error(f"--pca-dim must be between 1 and --dim ({args.dim}), got {args.pca_dim}")
    if any(f <= 0 for f in args.overcluster):
        parser.error(f"--overcluster factors must be positive, got {args.overcluster}")
    return args


def _top_eigen(cov: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = cov.shape[0]
    values, vectors = eigh(cov, subset_by_index=[d - k, d - 1])
    return values[::-1], vectors[:, ::-1]


def _covariance64(rows: np.ndarray) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float64)
    x -= x.mean(axis=0)
    return x.T @ x / (x.shape[0] - 1)


def covariance_precision(features: GaussianMixtureFeatures, stored, rows: int, k: int) -> dict:
    """How far the streaming PCA (float32 SYRK blocks, float64 sums) is from float64 arithmetic.

    Compared on the first ``rows`` stored (float16) rows: the largest relative error of the top-``k``
    eigenvalues, and the share of the optimal top-``k`` variance that our subspace misses. The same two
    numbers between the float16 rows and the float32 rows they were rounded from (both in float64) give the
    scale of the storage rounding, which no arithmetic downstream can undo.
    """
    rows = min(rows, stored.shape[0])
    subset = stored[:rows]
    exact_cov = _covariance64(subset)
    exact_values, _ = _top_eigen(exact_cov, k)
    ours = PCA(k, progress=False).fit(subset)
    captured = np.einsum("ij,jk,ik->", ours.components_, exact_cov, ours.components_)
    unrounded_values, unrounded_vectors = _top_eigen(_covariance64(features[0:rows]), k)
    captured_unrounded = np.einsum("ji,jk,ki->", unrounded_vectors, exact_cov, unrounded_vectors)
    return {
        "rows": rows,
        "arithmetic_max_rel_eigenvalue_error": float(np.max(np.abs(ours.explained_variance_ - exact_values)
                                                            / exact_values)),
        "arithmetic_missed_variance_share": float(1 - captured / exact_values.sum()),
        "float16_storage_max_rel_eigenvalue_error": float(np.max(np.abs(unrounded_values - exact_values)
                                                                 / exact_values)),
        "float16_storage_missed_variance_share": float(1 - captured_unrounded / exact_values.sum()),
    }


def run(args: argparse.Namespace) -> dict:
    """Generate (or reuse) the entry, run the protocol on it; returns the stage rows, result rows and checks."""
    features = GaussianMixtureFeatures(args.n, args.dim, args.classes, seed=args.seed)
    made_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="sscb-scale-", dir="/tmp")) if made_workdir else args.workdir
    cache_root = workdir / "sscb-scale-cache"
    progress = not args.no_progress
    stages, results = [], []
    try:
        with MemoryMonitor() as memory:
            def stage(name: str, seconds: float) -> None:
                stages.append({"stage": name, "seconds": round(seconds, 2),
                               "peak_rss_gib_so_far": round(gib(memory.peak), 3)})

            entry, seconds = generate_entry(features, cache_root, progress)
            generator_peak = rusage_peak_bytes()["children"]
            generation_tree_peak = memory.peak  # this process + the generator child, sampled
            stage("generate + write cache entry (child process)" if seconds else "reuse cached entry", seconds)
            baseline = memory.current()
            memory.peak = baseline  # from here on: the pipeline alone (the generator child has exited)
            t_pipeline = time.perf_counter()
            feats, labels = entry.features, entry.labels
            if not isinstance(feats, np.memmap):
                raise RuntimeError("the cache entry's features are not a memory map: the benchmark would load them")

            t0 = time.perf_counter()
            pca = PCA(args.pca_dim, progress=progress).fit(feats)
            stage("PCA fit (streaming covariance)", time.perf_counter() - t0)
            pca_fit_peak = memory.peak
            t0 = time.perf_counter()
            reduced = pca.transform(feats)
            stage(f"PCA transform to {reduced.shape[1]}", time.perf_counter() - t0)

            for factor in args.overcluster:
                k = max(2, int(round(factor * args.classes)))
                t0 = time.perf_counter()
                km = KMeans(k, n_iter=args.n_iter, random_state=args.seed, progress=progress,
                            **({"max_points_per_centroid": args.max_points_per_centroid}
                               if args.max_points_per_centroid else {}))
                pred = km.fit(reduced).labels_
                fit_seconds = time.perf_counter() - t0
                stage(f"k-means k={k} (train + assign all rows)", fit_seconds)
                t0 = time.perf_counter()
                scores = evaluate(labels, pred)
                metric_seconds = time.perf_counter() - t0
                stage(f"metrics k={k}", metric_seconds)
                results.append({"k": k, "n_init": km.n_init_, "init": ",".join(sorted(set(km.inits_))),
                                "n_iter": km.n_iter_, "max_points_per_centroid": km.max_points_per_centroid_,
                                "kmeans_s": round(fit_seconds, 2),
                                "metrics_s": round(metric_seconds, 2),
                                **{m: round(v, 4) for m, v in scores.items()},
                                "empty_clusters": int(k - np.unique(pred).size)})
            pipeline_seconds = time.perf_counter() - t_pipeline
            stage("pipeline total (PCA + k-means + metrics)", pipeline_seconds)
            pipeline_peak, self_peak = memory.peak, rusage_peak_bytes()["self"]
            del reduced
            precision = (covariance_precision(features, feats, args.precision_rows, args.pca_dim)
                         if args.precision_rows else None)
    finally:
        if not args.keep:
            shutil.rmtree(workdir if made_workdir else cache_root, ignore_errors=True)

    file_bytes = entry.count * entry.feature_dim * 2
    generate_seconds = stages[0]["seconds"]
    checks = {
        "features_file_gib": round(gib(file_bytes), 3),
        "pipeline_seconds": round(pipeline_seconds, 1),
        "pipeline_plus_generation_seconds": round(pipeline_seconds + generate_seconds, 1),
        "pipeline_peak_rss_gib": round(gib(pipeline_peak), 3),
        "pipeline_baseline_rss_gib": round(gib(baseline), 3),
        "ru_maxrss_self_gib": round(gib(self_peak), 3),
        "ru_maxrss_generator_child_gib": round(gib(generator_peak), 3),
        "generation_tree_peak_rss_gib": round(gib(generation_tree_peak), 3),
        "time_ok": pipeline_seconds <= TIME_BUDGET_S,
        "rss_ok": max(self_peak, pipeline_peak, generator_peak, generation_tree_peak) <= RSS_BUDGET_BYTES,
        # Streaming shows as a PCA-fit memory growth of about one block, far below the file size.
        "pca_fit_rss_growth_gib": round(gib(pca_fit_peak - baseline), 3),
        "never_loaded_whole": pca_fit_peak - baseline < file_bytes / 2 if file_bytes >= 256 << 20 else None,
    }
    return {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "stages": stages, "results": results, "checks": checks, "precision": precision}


def report(out: dict) -> str:
    c = out["checks"]
    lines = ["## stages", markdown_table(out["stages"]), "", "## results", markdown_table(out["results"]), "",
             f"features file: {c['features_file_gib']:.2f} GiB float16 (streamed from the memmap)",
             f"pipeline wall time: {c['pipeline_seconds']:.1f} s = {c['pipeline_seconds'] / TIME_BUDGET_S:.2f} × "
             f"the 10-min budget ({'OK' if c['time_ok'] else 'OVER'}); with generation "
             f"{c['pipeline_plus_generation_seconds']:.1f} s",
             f"peak RSS: pipeline {c['pipeline_peak_rss_gib']:.2f} GiB (process tree, sampled), ru_maxrss self "
             f"{c['ru_maxrss_self_gib']:.2f} GiB; generation: child ru_maxrss "
             f"{c['ru_maxrss_generator_child_gib']:.2f} GiB, tree {c['generation_tree_peak_rss_gib']:.2f} GiB "
             f"(sampled); budget 6 GiB ({'OK' if c['rss_ok'] else 'OVER'})",
             "entry never loaded whole: " + {True: "yes", False: "NO", None: "(file too small to tell)"}[
                 c["never_loaded_whole"]] + f" (RSS growth during the PCA fit: {c['pca_fit_rss_growth_gib']:.2f} GiB)"]
    p = out.get("precision")
    if p:
        lines.append(
            f"covariance precision on {p['rows']} rows, float32 SYRK blocks vs float64: max relative eigenvalue "
            f"error {p['arithmetic_max_rel_eigenvalue_error']:.1e}, missed top-{out['config']['pca_dim']} variance "
            f"{p['arithmetic_missed_variance_share']:.1e} (float16 storage itself: "
            f"{p['float16_storage_max_rel_eigenvalue_error']:.1e} and "
            f"{p['float16_storage_missed_variance_share']:.1e})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        limit_threads(args.threads)
    out = run(args)
    print(report(out), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0 if out["checks"]["time_ok"] and out["checks"]["rss_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
