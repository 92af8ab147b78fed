"""Cost of keying feature-cache entries on the data files (issue 19): stat per file, and sha256 per file.

    python benchmarks/fingerprint_cost.py                 # 30,000 files of 4 KiB in 100 class folders (~1 min)
    python benchmarks/fingerprint_cost.py --quick         # 1,000 files (seconds)
    python benchmarks/fingerprint_cost.py --files 50000 --file-kib 16 --workdir /data/tmp

A synthetic ImageFolder tree (``<class>/<n>.jpg`` of random bytes: the fingerprint never decodes images) is
written to a temporary folder and indexed with :class:`ImageFolderDataset`, as ``sscb`` does. This process
then times, on that one dataset object, median of ``--repeats``:

- names only: the fingerprint before issue 19 (size, classes, labels, 512 sample ids) — the baseline;
- all names: every relative path hashed, no file touched (what the loop costs without the stat);
- stat (the default key): :func:`dataset_fingerprint` — every file's path, size and mtime_ns;
- content, warm / cold: ``verify_content=True`` — every file's sha256, pages cached or dropped first
  (``posix_fadvise(DONTNEED)`` on each file, as after a reboot or on another node);
- indexing: building the dataset (the folder walk every command does anyway), for scale.

Per-file costs are extrapolated to ImageNet-1k train (1,281,167 files). For content hashing the extrapolation
adds the bytes: ImageNet's ~110 KiB per JPEG (~138 GiB) at the sha256 rate measured on one 256 MiB file.
The stat cost is for a local filesystem with inodes cached (a first pass after a reboot, or a network
filesystem, pays one metadata round trip per file on top, which no user-space code can avoid).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ssl_cluster_bench.data.images import ImageFolderDataset
from ssl_cluster_bench.extraction import dataset_fingerprint

IMAGENET_FILES = 1_281_167
IMAGENET_MEAN_KIB = 110  # ILSVRC2012 train: ~138 GiB over 1,281,167 JPEGs


def names_only_fingerprint(dataset) -> str:
    """The fingerprint before issue 19 (FINGERPRINT_FORMAT 1): what identified data without touching files."""
    n = len(dataset)
    probe = np.unique(np.linspace(0, n - 1, num=min(n, 512)).astype(np.int64)) if n else []
    h = hashlib.sha256()
    h.update(json.dumps([n, list(map(str, dataset.classes)), [dataset.sample_id(int(i)) for i in probe]]).encode())
    h.update(np.ascontiguousarray(np.asarray(dataset.targets, dtype=np.int64)).tobytes())
    return h.hexdigest()[:16]


def all_names(dataset) -> str:
    h = hashlib.sha256()
    h.update("".join(f"{rel}\0\n" for rel, _ in dataset.data_files()).encode())
    return h.hexdigest()[:16]


def make_tree(root: Path, n_files: int, n_classes: int, file_bytes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    payload = rng.integers(0, 256, size=file_bytes + n_files, dtype=np.uint8).tobytes()
    for c in range(n_classes):
        (root / f"n{c:08d}").mkdir(parents=True)
    for i in range(n_files):
        # a different window of the random bytes per file: no two files alike
        (root / f"n{i % n_classes:08d}" / f"{i:08d}.jpg").write_bytes(payload[i:i + file_bytes])


def drop_pages(dataset) -> None:
    for _, path in dataset.data_files():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(fn, repeats: int, before=None) -> float:
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def sha256_rate(workdir: Path, mib: int = 256) -> float:
    """Bytes per second of sha256 over one file whose pages are cached."""
    path = workdir / "big.bin"
    path.write_bytes(os.urandom(mib << 20))
    with open(path, "rb") as f:
        f.read()
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        hashlib.file_digest(f, "sha256")
    seconds = time.perf_counter() - t0
    path.unlink()
    return (mib << 20) / seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=30_000)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--file-kib", type=float, default=4.0, help="bytes per synthetic file, in KiB (default 4)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default=None, help="where the tree is written (default: a new folder in /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the tree afterwards")
    p.add_argument("--quick", action="store_true", help="1,000 files, 1 repeat, a 16 MiB sha256 probe")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="(accepted for uniformity; nothing to show)")
    p.add_argument("--threads", type=int, default=None, help="(accepted for uniformity; hashing uses up to 8)")
    args = p.parse_args(argv)
    probe_mib = 256
    if args.quick:
        args.files, args.repeats, probe_mib = 1000, 1, 16
    work = Path(tempfile.mkdtemp(prefix="sscb-fingerprint-", dir=args.workdir))
    try:
        root = work / "train"
        file_bytes = int(args.file_kib * 1024)
        t0 = time.perf_counter()
        make_tree(root, args.files, args.classes, file_bytes, args.seed)
        print(f"wrote {args.files} files of {file_bytes} bytes in {args.classes} folders under {root} "
              f"({time.perf_counter() - t0:.1f}s); cpu count {os.cpu_count()}, load average "
              f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}", file=sys.stderr)
        indexing = timed(lambda: ImageFolderDataset(root), args.repeats)
        ds = ImageFolderDataset(root)
        assert len(ds) == args.files
        dataset_fingerprint(ds)  # inodes and dentries in the cache, as on every run after the first
        steps = [
            ("names only (before issue 19; baseline)", lambda: names_only_fingerprint(ds), None, 0),
            ("all names, no stat", lambda: all_names(ds), None, 0),
            ("stat: path, size, mtime (default key)", lambda: dataset_fingerprint(ds), None, 0),
            ("content, pages cached (--verify-content)", lambda: dataset_fingerprint(ds, True), None, 1),
            ("content, pages dropped (--verify-content)", lambda: dataset_fingerprint(ds, True),
             lambda: drop_pages(ds), 1),
            ("indexing the folder (ImageFolderDataset)", lambda: None, None, 0),
        ]
        rate = sha256_rate(work, probe_mib)
        rows, base = [], None
        for name, fn, before, reads in steps:
            seconds = indexing if name.startswith("indexing") else timed(fn, args.repeats, before)
            base = base if base is not None else seconds
            per_file = seconds / args.files
            imagenet = per_file * IMAGENET_FILES
            if reads:  # the synthetic files are small: add ImageNet's bytes at the measured sha256 rate
                imagenet += IMAGENET_FILES * IMAGENET_MEAN_KIB * 1024 / rate
            rows.append({"step": name, "seconds": seconds, "µs per file": per_file * 1e6,
                         "× names only": seconds / base, "ImageNet train (s, extrapolated)": imagenet})
        from synthetic import markdown_table

        print(markdown_table(rows))
        print(f"\nsha256 on one cached {probe_mib} MiB file: {rate / 2**20:.0f} MiB/s; ImageNet content extrapolation "
              f"adds {IMAGENET_FILES * IMAGENET_MEAN_KIB * 1024 / rate:.0f} s for ~{IMAGENET_MEAN_KIB} KiB per file "
              "on one thread's rate (the hashing uses up to 8 threads; the disk is then the limit)")
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": rows, "sha256_bytes_per_s": rate,
                                                   "files": args.files, "file_bytes": file_bytes}, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
