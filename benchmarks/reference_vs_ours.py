"""Side by side, same process, same features: our clustering stage vs the seed paper's reference protocol.

    python benchmarks/reference_vs_ours.py                 # 200,000 × 2048, k = 1000 (about 15 min here)
    python benchmarks/reference_vs_ours.py --n 50000       # smaller equal workload for both
    python benchmarks/reference_vs_ours.py --quick         # smoke run (seconds)

ours:      streaming covariance PCA (float16 memmap, float32 SYRK blocks, float64 sums) + faiss k-means
reference: scikit-learn IncrementalPCA with batch max(4096, 2·dim) + MiniBatchKMeans, 60 epochs of
           partial_fit, features held in RAM as float32 (``PCA(method="incremental")`` and
           ``KMeans(backend="sklearn")``)
Both read the same synthetic cache entry (see synthetic.py), reduce to the same PCA dimension and cluster
with the same k and seed. Ours runs before and after the reference (its time is the mean of the two), so a
change of machine load during the long reference run biases neither side. Prints one row per pipeline
(stage times, peak RSS, ACC / NMI / AMI / ARI) and the wall-time ratio; the target is ≥ 20× at
equal-or-better ACC and NMI.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from synthetic import GaussianMixtureFeatures, MemoryMonitor, generate_entry, gib, limit_threads, markdown_table
from ssl_cluster_bench.cluster import KMeans
from ssl_cluster_bench.metrics import evaluate
from ssl_cluster_bench.reduce import PCA

TARGET_RATIO = 20.0


def _kmeans_setting(text: str) -> tuple[int | None, int | None]:
    """'default' or 'N_ITER:MAX_POINTS_PER_CENTROID' (either side may be 'default') -> (n_iter, cap)."""
    if text == "default":
        return None, None
    parts = text.split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        n_iter = None if parts[0] == "default" else int(parts[0])
        cap = None if parts[1] == "default" else int(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'default' or N_ITER:MAX_POINTS_PER_CENTROID, got {text!r}")
    if (n_iter is not None and n_iter < 1) or (cap is not None and cap < 1):
        raise argparse.ArgumentTypeError(f"iterations and points per centroid must be positive, got {text!r}")
    return n_iter, cap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="rows, the same for both pipelines")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension")
    parser.add_argument("--classes", type=int, default=1000, help="mixture classes = k")
    parser.add_argument("--pca-dim", type=int, default=256, help="PCA output dimension")
    parser.add_argument("--epochs", type=int, default=60, help="MiniBatchKMeans partial_fit epochs (reference)")
    parser.add_argument("--ours", type=_kmeans_setting, nargs="+", default=[(None, None)],
                        help="k-means settings to run ours with (default: the library defaults), 'default' or "
                             "N_ITER:MAX_POINTS_PER_CENTROID; two rows each (before and after the reference)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="cap BLAS/OpenMP/faiss threads for both pipelines (default: all cores)")
    parser.add_argument("--workdir", type=Path, default=None, help="cache location (default: temporary dir)")
    parser.add_argument("--keep", action="store_true", help="keep the cache entry (a re-run then reuses it)")
    parser.add_argument("--quick", action="store_true", help="smoke run: n=5000, dim=64, 20 classes, PCA to 32")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows and the ratio as JSON here")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.dim, args.classes, args.pca_dim = 5000, 64, 20, 32
    if args.n < 2 * args.classes:
        parser.error(f"--n ({args.n}) must be at least twice --classes ({args.classes})")
    if not 1 <= args.pca_dim <= args.dim:
        parser.error(f"--pca-dim must be between 1 and --dim ({args.dim}), got {args.pca_dim}")
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    return args


def run_pipeline(name: str, entry, args: argparse.Namespace, memory: MemoryMonitor,
                 setting: tuple[int | None, int | None] = (None, None)) -> dict:
    """One pipeline end to end on the entry: PCA, k-means (k = classes), metrics; returns its table row."""
    progress = not args.no_progress
    memory.peak = memory.current()
    t_start = time.perf_counter()
    labels = entry.labels
    if name == "reference":
        features = np.asarray(entry.features, dtype=np.float32)  # the reference protocol holds features in RAM
        pca = PCA(args.pca_dim, method="incremental", progress=progress)
        kmeans = KMeans(args.classes, backend="sklearn", n_iter=args.epochs, random_state=args.seed,
                        progress=progress)
    else:
        features = entry.features  # float16 memmap, streamed
        pca = PCA(args.pca_dim, progress=progress)
        n_iter, cap = setting
        kmeans = KMeans(args.classes, n_iter=n_iter, max_points_per_centroid=cap, random_state=args.seed,
                        progress=progress)
    reduced = pca.fit_transform(features)
    del features
    t_pca = time.perf_counter()
    pred = kmeans.fit(reduced).labels_
    t_kmeans = time.perf_counter()
    if name == "ours":
        # what ran, including what the defaults resolved to (restarts, seeding, iterations, sample cap)
        defaults = "defaults: " if setting == (None, None) else ""
        name = (f"ours ({defaults}n_init={kmeans.n_init_}, init={','.join(sorted(set(kmeans.inits_)))}, "
                f"n_iter={kmeans.n_iter_}, max_points_per_centroid={kmeans.max_points_per_centroid_})")
    scores = evaluate(labels, pred)
    t_end = time.perf_counter()
    return {"pipeline": name, "n": entry.count, "dim": entry.feature_dim, "k": args.classes,
            "pca_s": round(t_pca - t_start, 2), "kmeans_s": round(t_kmeans - t_pca, 2),
            "metrics_s": round(t_end - t_kmeans, 2), "total_s": round(t_end - t_start, 2),
            "peak_rss_gib": round(gib(memory.peak), 3), **{m: round(v, 4) for m, v in scores.items()}}


def run(args: argparse.Namespace) -> dict:
    """Generate (or reuse) the entry; ours (each setting), the reference, ours again; rows, ratios, checks."""
    features = GaussianMixtureFeatures(args.n, args.dim, args.classes, seed=args.seed)
    made_workdir = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="sscb-ref-", dir="/tmp")) if made_workdir else args.workdir
    cache_root = workdir / "sscb-ref-cache"
    settings = list(dict.fromkeys(args.ours))
    try:
        entry, generate_seconds = generate_entry(features, cache_root, not args.no_progress)
        with MemoryMonitor() as memory:
            before = [run_pipeline("ours", entry, args, memory, setting) for setting in settings]
            reference = run_pipeline("reference", entry, args, memory)
            after = [run_pipeline("ours", entry, args, memory, setting) for setting in settings]
    finally:
        if not args.keep:
            shutil.rmtree(workdir if made_workdir else cache_root, ignore_errors=True)
    comparisons = []
    for first, second in zip(before, after):
        seconds = (first["total_s"] + second["total_s"]) / 2
        ratio = reference["total_s"] / seconds
        comparisons.append({
            "ours": first["pipeline"], "ours_total_s_mean": round(seconds, 3),
            "reference_total_s": reference["total_s"], "ratio": round(ratio, 2),
            "acc_gain": round(first["acc"] - reference["acc"], 4),
            "nmi_gain": round(first["nmi"] - reference["nmi"], 4),
            "same_labels_both_runs": first["acc"] == second["acc"] and first["nmi"] == second["nmi"],
            "ratio_ok": ratio >= TARGET_RATIO,
            "quality_ok": first["acc"] >= reference["acc"] and first["nmi"] >= reference["nmi"],
        })
    return {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "generate_seconds": round(generate_seconds, 1), "rows": [*before, reference, *after],
            "comparisons": comparisons}


def report(out: dict) -> str:
    lines = [markdown_table(out["rows"]), "", markdown_table(out["comparisons"]), ""]
    for c in out["comparisons"]:
        lines.append(
            f"{c['ours']}: wall-time ratio reference / ours = {c['ratio']:.1f}× (ours = mean of the runs before "
            f"and after the reference, {c['ours_total_s_mean']:.1f} s; target ≥ {TARGET_RATIO:.0f}×: "
            f"{'OK' if c['ratio_ok'] else 'NOT MET'}); ACC {c['acc_gain']:+.4f}, NMI {c['nmi_gain']:+.4f} vs the "
            f"reference (equal-or-better: {'OK' if c['quality_ok'] else 'NOT MET'})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        limit_threads(args.threads)
    out = run(args)
    print(report(out), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
