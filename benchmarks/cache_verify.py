"""Cost of checking a feature-cache entry against its manifest, at ImageNet size (1,281,167 × 2048 float16).

    python benchmarks/cache_verify.py                     # full size: ~5 GB of disk, a few minutes
    python benchmarks/cache_verify.py --quick             # 100k × 256 smoke run (seconds)
    python benchmarks/cache_verify.py --workdir /data/tmp --keep

A child process writes a synthetic entry (synthetic.py). This process then times, on that one entry:
- baseline: one streaming pass over the features as the clustering stage reads them (``iter_batches``,
  float16 -> float32 blocks), which is what every PCA pass costs;
- the full sha256 check (``sscb cache --verify``, and the first open of an entry without a valid stamp);
- the first open of an entry whose verified-stamp matches (the fast path every later process takes);
- the structure checks alone (``.npy`` headers and sizes, run on every open).
Each is timed "cold" (the entry's pages dropped from the page cache with posix_fadvise, as after a reboot
or on another node) and "warm" (pages cached), and given as a ratio to the baseline pass measured in the
same process under the same cache state.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from synthetic import IMAGENET_TRAIN_SIZE, GaussianMixtureFeatures, generate_entry, gib, markdown_table
from ssl_cluster_bench.cache import DATA_FILES, STAMP, FeatureCache


def drop_page_cache(entry) -> None:
    """Evict the entry's (clean) pages from the page cache: the next read comes from disk."""
    for name in DATA_FILES:
        fd = os.open(entry.path / name, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def baseline_pass(cache: FeatureCache, key) -> None:
    for _ in cache.get(key).iter_batches(65536):
        pass


def full_check(cache: FeatureCache, key) -> None:
    cache.get(key).check(full=True, progress=False)


def first_open_without_stamp(cache: FeatureCache, key) -> None:
    (cache.path(key) / STAMP).unlink(missing_ok=True)
    import ssl_cluster_bench.cache as cache_mod

    cache_mod._verified_here.clear()  # as a new process would
    cache.get(key)


def first_open_with_stamp(cache: FeatureCache, key) -> None:
    import ssl_cluster_bench.cache as cache_mod

    cache_mod._verified_here.clear()
    cache.get(key)


def structure_only(cache: FeatureCache, key) -> None:
    cache.entries()[0].check_structure()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--n", type=int, default=IMAGENET_TRAIN_SIZE)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, default=None, help="where the entry is written (default: /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the entry (a re-run reuses it)")
    parser.add_argument("--quick", action="store_true", help="100,000 × 256 smoke run")
    parser.add_argument("--repeats", type=int, default=2, help="timings per cell (the median is reported)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--no-progress", action="store_true", help="hide the tqdm bars")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.dim, args.classes = 100_000, 256, 100

    made = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="sscb-verify-", dir="/tmp")) if made else args.workdir
    cache_root = workdir / "sscb-verify-cache"
    features = GaussianMixtureFeatures(args.n, args.dim, args.classes, seed=0)
    try:
        entry, gen_seconds = generate_entry(features, cache_root, progress=not args.no_progress)
        cache, key = FeatureCache(cache_root), entry.key
        size = entry.nbytes
        print(f"entry {entry.path.name}: {entry.count} × {entry.feature_dim} float16, {gib(size):.2f} GiB "
              f"(written in {gen_seconds:.0f} s)")
        steps = [("baseline: one float32 pass over the features (iter_batches)", baseline_pass, True),
                 ("full sha256 check (`sscb cache --verify`)", full_check, True),
                 ("first open, no valid stamp (hash + write stamp)", first_open_without_stamp, True),
                 ("first open, stamp matches (fast path)", first_open_with_stamp, False),
                 ("structure checks only (headers + sizes)", structure_only, False)]
        rows, results = [], {}
        for state in ("cold", "warm"):
            base = None
            for label, fn, reads_data in steps:
                times = []
                for _ in range(args.repeats):
                    if state == "cold":
                        drop_page_cache(entry)
                    else:
                        baseline_pass(cache, key)  # make sure every page is cached
                    times.append(timed(lambda: fn(cache, key)))
                seconds = sorted(times)[len(times) // 2]
                base = seconds if base is None else base
                results[f"{state}: {label}"] = seconds
                rows.append({"page cache": state, "step": label, "seconds": seconds,
                             "GiB/s": gib(size) / seconds if reads_data else None,
                             "× baseline pass": seconds / base})
        print(markdown_table(rows))
        if args.json:
            args.json.write_text(json.dumps({"n": args.n, "dim": args.dim, "bytes": size, "rows": rows}, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(workdir if made else cache_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
