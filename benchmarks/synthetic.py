"""Synthetic ImageNet-sized features for the scale benchmarks: a seeded Gaussian mixture written in blocks.

    features = GaussianMixtureFeatures(n_samples=1_281_167, dim=2048, n_classes=1000, seed=0)
    entry = features.write_to_cache(FeatureCache(root))          # -> CacheEntry (float16 memmap on disk)

``GaussianMixtureFeatures`` is a lazy, row-sliceable (n_samples, dim) float32 array: any block of rows is
generated on demand and is the same whatever the slicing, so ``FeatureCache.put`` streams it to disk one
block at a time and the full matrix never exists in memory.

The mixture is shaped like frozen backbone features rather than like separable blobs:
- class sizes are imbalanced as ImageNet-1k train (1,281,167 images, 732 to 1300 per class, most at 1300);
- class means lie on a smooth ``manifold_dim``-dimensional manifold (random Fourier features of a latent
  Gaussian) inside a ``mean_dim``-dimensional subspace, so neighbouring classes are close (fine-grained
  confusions) and far ones are well apart;
- within a class the spread is anisotropic (a shared rank-``within_rank`` component) plus isotropic noise,
  scaled per class (some classes are tighter than others), on top of a non-zero global offset.
With the defaults, k-means (k = 1000) on the PCA-256 projection reaches an ACC of roughly 0.6-0.7, far below 1.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ssl_cluster_bench.cache import CacheEntry, CacheKey, FeatureCache

__all__ = ["IMAGENET_TRAIN_SIZE", "GaussianMixtureFeatures", "MemoryMonitor", "check_free_space", "class_sizes",
           "generate_entry", "limit_threads", "markdown_table", "rusage_peak_bytes"]

IMAGENET_TRAIN_SIZE = 1_281_167
IMAGENET_MIN_CLASS, IMAGENET_MAX_CLASS = 732, 1300
# ImageNet-1k train has ~6.6% of its classes below the 1300-image cap; the others are full.
IMAGENET_TAIL_FRACTION = 0.066

# Bumped whenever the generated numbers change, so a kept cache entry of an older generator is not reused.
GENERATOR_VERSION = 2
# Rows produced by one RNG stream: blocks are generated per chunk, so a row's value does not depend on how
# the caller slices the array.
GENERATION_CHUNK = 4096


def class_sizes(n_samples: int, n_classes: int, min_fraction: float = IMAGENET_MIN_CLASS / IMAGENET_MAX_CLASS,
                tail_fraction: float = IMAGENET_TAIL_FRACTION) -> np.ndarray:
    """Per-class sample counts summing to ``n_samples``, shaped like ImageNet-1k train.

    Most classes are "full" (size M); a ``tail_fraction`` of them decrease linearly from M down to
    ``min_fraction``·M. With the ImageNet numbers (1,281,167 samples, 1000 classes) this gives sizes 732-1300.
    Returns an int64 array of length ``n_classes`` (class ``i`` has ``sizes[i]`` samples, in no particular order
    of class id).
    """
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if n_samples < n_classes:
        raise ValueError(f"n_samples={n_samples} must be at least n_classes={n_classes} (one sample per class)")
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
    if not 0.0 <= tail_fraction <= 1.0:
        raise ValueError(f"tail_fraction must be in [0, 1], got {tail_fraction}")
    n_tail = int(round(tail_fraction * n_classes))
    profile = np.ones(n_classes)
    if n_tail:
        profile[:n_tail] = min_fraction + (1.0 - min_fraction) * np.arange(n_tail) / n_tail
    full = n_samples / profile.sum()
    sizes = np.maximum(np.floor(full * profile).astype(np.int64), 1)
    cap = int(np.floor(full))
    remainder = int(n_samples - sizes.sum())
    # Hand the rounding remainder to the tail classes above the smallest one first, so the extremes of the
    # size range stay as specified; only what does not fit there goes to every class.
    while remainder > 0:
        room = np.flatnonzero(sizes[1:n_tail] < cap) + 1 if n_tail > 1 else np.empty(0, dtype=np.int64)
        targets = room if room.size else np.arange(n_classes)
        step = targets[:remainder]
        sizes[step] += 1
        remainder -= step.size
    while remainder < 0:  # only when many classes were raised to the 1-sample floor
        big = np.argsort(-sizes, kind="stable")[:-remainder]
        sizes[big] -= 1
        remainder += big.size
    return sizes


class GaussianMixtureFeatures:
    """Lazy (n_samples, dim) float32 Gaussian-mixture features with ImageNet-like classes (see module doc).

    Parameters
    ----------
    n_samples, dim, n_classes : sizes of the feature matrix and number of mixture components (classes).
    manifold_dim : intrinsic dimension of the manifold carrying the class means.
    mean_dim : dimension of the linear subspace the (curved) manifold of means is embedded in
        (default min(96, dim // 2)).
    within_rank : rank of the shared anisotropic within-class component (default min(48, dim // 4)).
    mean_scale, within_scale, noise_scale : spread of class means, of the within-class component (per
        direction) and of the isotropic noise (per feature); the defaults put k-means ACC around 0.6-0.7.
    shuffle : interleave the classes (True) or store rows sorted by class as an ImageFolder would.
    seed : everything (model and every row) is a function of this seed.

    Attributes: ``shape``, ``ndim``, ``dtype`` (float32), ``labels`` (int64, length n_samples), ``sizes``
    (samples per class), ``means`` (n_classes × dim).
    """

    def __init__(self, n_samples: int = IMAGENET_TRAIN_SIZE, dim: int = 2048, n_classes: int = 1000, *,
                 manifold_dim: int = 12, mean_dim: int | None = None, within_rank: int | None = None,
                 mean_scale: float = 4.0, within_scale: float = 0.5, noise_scale: float = 0.25,
                 shuffle: bool = True, seed: int = 0):
        # Defaults sized for dim = 2048; small smoke-test dims get proportionally smaller subspaces.
        mean_dim = min(96, max(1, dim // 2)) if mean_dim is None else mean_dim
        within_rank = min(48, dim // 4) if within_rank is None else within_rank
        for name, value in (("n_samples", n_samples), ("dim", dim), ("n_classes", n_classes),
                            ("manifold_dim", manifold_dim), ("mean_dim", mean_dim)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if mean_dim > dim or within_rank > dim:
            raise ValueError(f"mean_dim={mean_dim} and within_rank={within_rank} must not exceed dim={dim}")
        if within_rank < 0 or min(mean_scale, within_scale, noise_scale) < 0:
            raise ValueError("within_rank and the scales must be non-negative")
        self.n_samples, self.dim, self.n_classes = int(n_samples), int(dim), int(n_classes)
        self.noise_scale = float(noise_scale)
        self.seed = int(seed)
        self.params = {"manifold_dim": manifold_dim, "mean_dim": mean_dim, "within_rank": within_rank,
                       "mean_scale": mean_scale, "within_scale": within_scale, "noise_scale": noise_scale,
                       "shuffle": shuffle, "seed": seed}
        rng = np.random.default_rng([self.seed, 0])
        self.sizes = class_sizes(self.n_samples, self.n_classes)
        rng.shuffle(self.sizes)  # which class ids are the small ones is random too
        labels = np.repeat(np.arange(self.n_classes, dtype=np.int64), self.sizes)
        self.labels = rng.permutation(labels) if shuffle else labels

        # Means: random Fourier features of a latent Gaussian give a smooth curved manifold (an RBF-kernel
        # feature map), embedded by an orthonormal basis into `dim` dimensions.
        latent = rng.standard_normal((self.n_classes, manifold_dim))
        freqs = rng.standard_normal((manifold_dim, mean_dim)) / 2.0
        phases = rng.uniform(0.0, 2 * np.pi, mean_dim)
        curved = np.sqrt(2.0 / mean_dim) * np.cos(latent @ freqs + phases)
        basis = np.linalg.qr(rng.standard_normal((dim, mean_dim)))[0]
        offset = 0.5 * np.abs(rng.standard_normal(dim))  # features are not centred (like pooled ReLU outputs)
        self.means = (offset + mean_scale * curved @ basis.T).astype(np.float32)
        within = np.linalg.qr(rng.standard_normal((dim, max(within_rank, 1))))[0][:, :within_rank].T
        self._within = (within_scale * within).astype(np.float32)  # within_rank × dim
        self._class_scale = np.exp(0.25 * rng.standard_normal(self.n_classes)).astype(np.float32)
        self._progress: tqdm | None = None

    # -- array protocol used by FeatureCache.put and by the PCA / k-means code --------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_samples, self.dim)

    @property
    def ndim(self) -> int:
        return 2

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    def __len__(self) -> int:
        return self.n_samples

    def __repr__(self) -> str:
        return (f"GaussianMixtureFeatures(n_samples={self.n_samples}, dim={self.dim}, "
                f"n_classes={self.n_classes}, seed={self.seed})")

    def __getitem__(self, rows) -> np.ndarray:
        if not isinstance(rows, slice):
            raise TypeError("GaussianMixtureFeatures supports row slices a[start:stop] only, "
                            f"got {type(rows).__name__}")
        start, stop, step = rows.indices(self.n_samples)
        if step != 1:
            raise TypeError(f"GaussianMixtureFeatures supports contiguous row slices only (step 1), got step {step}")
        stop = max(stop, start)
        out = np.empty((stop - start, self.dim), dtype=np.float32)
        first, last = start // GENERATION_CHUNK, (stop - 1) // GENERATION_CHUNK
        for chunk in range(first, last + 1) if stop > start else ():
            lo = chunk * GENERATION_CHUNK
            block = self._chunk(chunk)
            a, b = max(start, lo), min(stop, lo + block.shape[0])
            out[a - start:b - start] = block[a - lo:b - lo]
        if self._progress is not None:
            self._progress.update(out.shape[0])
        return out

    def _chunk(self, chunk: int) -> np.ndarray:
        lo = chunk * GENERATION_CHUNK
        labels = self.labels[lo:lo + GENERATION_CHUNK]
        rng = np.random.default_rng([self.seed, 1, chunk])
        x = rng.standard_normal((labels.size, self.dim), dtype=np.float32)
        x *= self.noise_scale
        if self._within.shape[0]:
            x += rng.standard_normal((labels.size, self._within.shape[0]), dtype=np.float32) @ self._within
        x *= self._class_scale[labels, None]
        x += self.means[labels]
        return x

    # -- writing ---------------------------------------------------------------------------------------
    def cache_key(self) -> CacheKey:
        """The cache key of these features: the generator parameters are the weights' identity."""
        spec = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return CacheKey(backbone="synthetic-gmm", dataset=f"gmm-{self.n_classes}c", split="train",
                        weights=f"v{GENERATOR_VERSION},n={self.n_samples},dim={self.dim},{spec}", transform="none")

    def write_to_cache(self, cache: FeatureCache | str | Path, batch_size: int = 2 * GENERATION_CHUNK,
                       progress: bool = True) -> CacheEntry:
        """Stream the features into ``cache`` (float16 entry, written block by block); returns the entry.

        An existing complete entry for the same parameters is returned as is.
        """
        cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
        self._progress = tqdm(total=self.n_samples, desc="generate features", unit="row", disable=not progress,
                              leave=False)
        try:
            return cache.put(self.cache_key(), self, self.labels, batch_size=batch_size,
                             meta={"synthetic": self.params})
        finally:
            self._progress.close()
            self._progress = None

    def bytes_on_disk(self) -> int:
        """Size of the float16 features file plus labels and indices (int64)."""
        return self.n_samples * (2 * self.dim + 16)


# -- helpers shared by the benchmark scripts -------------------------------------------------------------
def rusage_peak_bytes() -> dict:
    """Peak resident set sizes reported by the kernel (``getrusage``): this process and its largest child."""
    import resource

    # ru_maxrss is in KiB on Linux (bytes on macOS).
    unit = 1 if sys.platform == "darwin" else 1024
    return {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit}


class MemoryMonitor:
    """Samples the RSS of this process plus all its children (psutil) in a background thread.

    ``peak`` is the largest simultaneous total seen (sampled every ``interval`` seconds); ``rusage_peak_bytes``
    gives the kernel's exact per-process peaks to read next to it. RSS includes pages of memory-mapped files
    that are mapped in, so streaming a cache entry without releasing pages shows up here.
    """

    def __init__(self, interval: float = 0.1):
        import psutil

        self._process = psutil.Process()
        self.interval = interval
        self.peak = 0
        self._stop = None
        self._thread = None

    def current(self) -> int:
        import psutil

        total = 0
        for proc in [self._process, *self._process.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass  # a child that just exited
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.current())

    def __enter__(self) -> "MemoryMonitor":
        import threading

        self._stop = threading.Event()
        self.peak = self.current()
        self._thread = threading.Thread(target=self._run, name="rss-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def limit_threads(n_threads: int) -> None:
    """Cap the threads of BLAS, OpenMP (scikit-learn) and faiss in this process for the rest of its life."""
    import faiss
    from threadpoolctl import threadpool_limits

    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    faiss.omp_set_num_threads(n_threads)
    threadpool_limits(n_threads)


def gib(n_bytes: float) -> float:
    return n_bytes / 2**30


def check_free_space(path: Path, needed_bytes: int) -> None:
    """Raise OSError when the filesystem holding ``path`` has less than ``needed_bytes`` free."""
    probe = Path(path)
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise OSError(f"not enough disk space under {path}: need {gib(needed_bytes):.1f} GiB, "
                      f"{gib(free):.1f} GiB free; pass --workdir on a larger filesystem or lower --n")


def markdown_table(rows: list[dict]) -> str:
    """Rows (dicts) as a GitHub markdown table, floats with 4 significant digits."""
    import pandas as pd

    table = pd.DataFrame(rows)
    table = table.astype(object).where(table.notna(), None)  # blank cells, not "nan", where a row has no value
    return table.to_markdown(index=False, floatfmt=".4g", missingval="")


def generate_entry(features: GaussianMixtureFeatures, cache_root: Path, progress: bool) -> tuple[CacheEntry, float]:
    """Write ``features`` into the cache at ``cache_root`` from a child process; returns (entry, seconds).

    A child keeps the generator's memory (and the pages the cache maps while writing) out of the caller's
    resident set; the caller reads the child's peak with ``rusage_peak_bytes()["children"]``. An entry that
    is already there is returned with 0 seconds.
    """
    cache = FeatureCache(cache_root)
    entry = cache.get(features.cache_key())
    if entry is not None:
        return entry, 0.0
    check_free_space(Path(cache_root), int(features.bytes_on_disk() * 1.02) + (64 << 20))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--cache-root", str(cache_root),
           "--n", str(features.n_samples), "--dim", str(features.dim), "--classes", str(features.n_classes),
           "--seed", str(features.seed)]
    if not progress:
        cmd.append("--no-progress")
    t0 = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the feature generator failed (exit {done.returncode}): {' '.join(cmd)}")
    seconds = time.perf_counter() - t0
    entry = cache.get(features.cache_key())
    if entry is None:
        raise RuntimeError(f"the generator finished but no entry for {features.cache_key()} is in {cache_root}")
    return entry, seconds


def main(argv: list[str] | None = None) -> int:
    """CLI: write a synthetic entry into a cache directory (used by the benchmarks as a child process)."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-root", required=True, type=Path, help="feature cache directory to write into")
    parser.add_argument("--n", type=int, default=IMAGENET_TRAIN_SIZE, help="number of rows")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension")
    parser.add_argument("--classes", type=int, default=1000, help="number of classes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=2 * GENERATION_CHUNK,
                        help="rows generated and written per block")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    features = GaussianMixtureFeatures(args.n, args.dim, args.classes, seed=args.seed)
    check_free_space(args.cache_root, int(features.bytes_on_disk() * 1.02) + (64 << 20))
    entry = features.write_to_cache(args.cache_root, batch_size=args.batch_size, progress=not args.no_progress)
    print(json.dumps({"entry": str(entry.path), "count": entry.count, "dim": entry.feature_dim,
                      "rusage_peak_bytes": rusage_peak_bytes()["self"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
