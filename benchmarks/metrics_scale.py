"""Metrics at ImageNet size: ACC / NMI / AMI / ARI for n = 1,281,167 samples and k = 1000 clusters.

    python benchmarks/metrics_scale.py            # full size (scikit-learn's AMI alone takes a while)
    python benchmarks/metrics_scale.py --quick    # smoke run

Labels follow ImageNet-1k train's class sizes (732-1300 per class); predictions are a clustering that keeps
``1 - noise`` of each class together under a permuted id and scatters the rest at random (ACC ≈ 1 - noise).
Prints the time of ``cluster_accuracy`` (target < 1 s) and of ``evaluate`` (the issue-2 benchmark), the time
of scikit-learn's ``adjusted_mutual_info_score`` against ours with the ratio, and the largest difference
between our metrics and scikit-learn's over a set of smaller random and adversarial cases (they must agree).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn import metrics as skm
from tqdm.auto import tqdm

from synthetic import IMAGENET_TRAIN_SIZE, MemoryMonitor, class_sizes, gib, markdown_table
from ssl_cluster_bench.metrics import adjusted_mutual_info, cluster_accuracy, evaluate

ACC_TARGET_S = 1.0
EQUALITY_TOLERANCE = 1e-9


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n", type=int, default=IMAGENET_TRAIN_SIZE, help="samples")
    parser.add_argument("--classes", type=int, default=1000, help="true classes")
    parser.add_argument("--k", type=int, default=1000, help="predicted clusters")
    parser.add_argument("--noise", type=float, default=0.4, help="fraction of samples put in a random cluster")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of the fast calls (best is kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-sklearn-ami", action="store_true",
                        help="do not time scikit-learn's AMI at full size (it is the slow part)")
    parser.add_argument("--quick", action="store_true", help="smoke run: n=20000, 100 classes, k=100")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm bar")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.classes, args.k = 20_000, 100, 100
    if args.n < max(args.classes, args.k):
        parser.error(f"--n ({args.n}) must be at least --classes and --k")
    if not 0.0 <= args.noise <= 1.0:
        parser.error(f"--noise must be in [0, 1], got {args.noise}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


def make_labels(n: int, n_classes: int, k: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred): ImageNet-shaped classes and a clustering that scatters a ``noise`` fraction."""
    rng = np.random.default_rng(seed)
    y_true = rng.permutation(np.repeat(np.arange(n_classes, dtype=np.int64), class_sizes(n, n_classes)))
    kept = rng.permutation(k)[y_true % k]  # every class maps to one cluster id (several when classes > k)
    y_pred = np.where(rng.random(n) < noise, rng.integers(0, k, n), kept)
    return y_true, y_pred


def timed(fn, repeats: int = 1):
    """(result, best wall time over ``repeats`` calls)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return result, best


def equality_cases(seed: int, quick: bool = False) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Smaller labelings where scikit-learn is quick enough to compare against on every metric."""
    rng = np.random.default_rng(seed + 1)
    cases = []
    sizes = [(1000, 10, 10), (5000, 50, 75), (20000, 200, 200), (50000, 1000, 1000), (100000, 100, 150)]
    for n, c, k in sizes[:3] if quick else sizes:
        y_true, y_pred = make_labels(n, c, k, float(rng.uniform(0.1, 0.9)), int(rng.integers(1 << 30)))
        cases.append((f"random n={n} classes={c} k={k}", y_true, y_pred))
    cases += [
        ("identical", np.arange(3000) % 7, np.arange(3000) % 7),
        ("one cluster", rng.integers(0, 5, 2000), np.zeros(2000, dtype=np.int64)),
        ("all singletons", np.arange(500) % 3, np.arange(500)),
        ("skewed sizes", np.repeat(np.arange(10), [5000] + [1] * 9), rng.integers(0, 10, 5009)),
        ("negative / sparse ids", rng.integers(-5, 5, 4000) * 1000, rng.integers(0, 40, 4000) * 10**9),
    ]
    return cases


def run(args: argparse.Namespace) -> dict:
    rows = []
    with MemoryMonitor() as memory:
        def row(operation: str, seconds: float, **values) -> None:
            rows.append({"operation": operation, "seconds": round(seconds, 4),
                         "peak_rss_gib_so_far": round(gib(memory.peak), 3), **values})

        y_true, y_pred = make_labels(args.n, args.classes, args.k, args.noise, args.seed)
        acc, acc_s = timed(lambda: cluster_accuracy(y_true, y_pred), args.repeats)
        row("cluster_accuracy", acc_s, acc=round(acc, 4))
        scores, eval_s = timed(lambda: evaluate(y_true, y_pred), args.repeats)
        row("cluster_accuracy + evaluate (issue 2)", acc_s + eval_s, **{m: round(v, 4) for m, v in scores.items()})
        row("evaluate (acc, nmi, ami, ari)", eval_s, **{m: round(v, 4) for m, v in scores.items()})
        ami, ours_ami_s = timed(lambda: adjusted_mutual_info(y_true, y_pred), args.repeats)
        row("AMI, ours", ours_ami_s, ami=round(ami, 6))
        nmi_ari, sk_s = timed(lambda: (skm.normalized_mutual_info_score(y_true, y_pred),
                                       skm.adjusted_rand_score(y_true, y_pred)))
        row("NMI + ARI, scikit-learn", sk_s, nmi=round(nmi_ari[0], 4), ari=round(nmi_ari[1], 4))
        sk_ami = None
        if not args.skip_sklearn_ami:
            sk_ami, sk_ami_s = timed(lambda: skm.adjusted_mutual_info_score(y_true, y_pred))
            row("AMI, scikit-learn", sk_ami_s, ami=round(sk_ami, 6))

        max_diff = {"nmi": 0.0, "ami": 0.0, "ari": 0.0}
        cases = equality_cases(args.seed, args.quick)
        for _, a, b in tqdm(cases, desc="compare with scikit-learn", leave=False, disable=args.no_progress):
            ours = evaluate(a, b)
            ref = {"nmi": skm.normalized_mutual_info_score(a, b), "ami": skm.adjusted_mutual_info_score(a, b),
                   "ari": skm.adjusted_rand_score(a, b)}
            for m in max_diff:
                max_diff[m] = max(max_diff[m], abs(ours[m] - ref[m]))
    checks = {
        "acc_seconds": round(acc_s, 4), "acc_ok": acc_s < ACC_TARGET_S,
        "issue2_seconds": round(acc_s + eval_s, 4),
        "ami_ours_seconds": round(ours_ami_s, 4),
        "ami_sklearn_seconds": None if sk_ami is None else round(sk_ami_s, 2),
        "ami_speedup": None if sk_ami is None else round(sk_ami_s / ours_ami_s, 1),
        "ami_abs_diff_full_size": None if sk_ami is None else abs(ami - sk_ami),
        "full_size_equal": (abs(scores["nmi"] - nmi_ari[0]) <= EQUALITY_TOLERANCE
                            and abs(scores["ari"] - nmi_ari[1]) <= EQUALITY_TOLERANCE
                            and (sk_ami is None or abs(ami - sk_ami) <= EQUALITY_TOLERANCE)),
        "small_cases": len(cases),
        "small_cases_max_abs_diff": max_diff,
        "small_cases_equal": max(max_diff.values()) <= EQUALITY_TOLERANCE,
    }
    return {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "rows": rows, "checks": checks}


def report(out: dict) -> str:
    c = out["checks"]
    cfg = out["config"]
    lines = [f"n = {cfg['n']}, classes = {cfg['classes']}, k = {cfg['k']}", markdown_table(out["rows"]), "",
             f"cluster_accuracy: {c['acc_seconds']:.3f} s (target < {ACC_TARGET_S:.0f} s: "
             f"{'OK' if c['acc_ok'] else 'OVER'}); cluster_accuracy + evaluate (issue 2): {c['issue2_seconds']:.3f} s"]
    if c["ami_speedup"] is not None:
        lines.append(f"AMI: scikit-learn {c['ami_sklearn_seconds']:.2f} s vs ours {c['ami_ours_seconds']:.3f} s = "
                     f"{c['ami_speedup']:.1f}× faster; |difference| = {c['ami_abs_diff_full_size']:.2e}")
    diff = c["small_cases_max_abs_diff"]
    lines.append(f"equality with scikit-learn on {c['small_cases']} smaller cases: max |diff| NMI {diff['nmi']:.1e}, "
                 f"AMI {diff['ami']:.1e}, ARI {diff['ari']:.1e} (tolerance {EQUALITY_TOLERANCE:.0e}: "
                 f"{'OK' if c['small_cases_equal'] else 'DIFFERENT'}); full size equal: "
                 f"{'yes' if c['full_size_equal'] else 'NO'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = run(args)
    print(report(out), flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0 if out["checks"]["small_cases_equal"] and out["checks"]["full_size_equal"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
