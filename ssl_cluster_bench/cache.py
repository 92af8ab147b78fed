"""Feature cache: frozen features stored once per (backbone, weights, dataset, split, transform, variant).

On-disk format (one directory per entry under the cache root)::

    <root>/<entry_id>/
        manifest.json   identity and facts of the entry; written last, so an entry without it is incomplete
        features.npy    float16, shape (count, dim) — or (n_views, count, dim) for augmented-view entries;
                        open with ``np.load(path, mmap_mode="r")``
        labels.npy      int64, shape (count,); -1 where the dataset has no label
        indices.npy     int64, shape (count,); row -> position in the dataset (skipped files leave gaps)
    <root>/<entry_id>.partial/      chunks of an extraction in progress (resumed, never read as an entry)

``manifest.json`` holds the key (backbone, weights, dataset, split, transform, variant, data fingerprint), ``feature_dim``,
``count``, ``shape``, ``dtype``, ``checksum`` (sha256 of features then labels bytes), ``skipped`` (count and
ids of unreadable files), library versions and creation time. Entries are assembled in a temporary
directory and renamed into place, so a crash never leaves a half-written entry that looks complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["CacheKey", "CacheEntry", "ChunkWriter", "FeatureCache", "default_cache_dir"]

FLOAT16_MAX = float(np.finfo(np.float16).max)


def default_cache_dir() -> Path:
    """``$SSCB_CACHE_DIR`` if set, else ``~/.cache/ssl_cluster_bench/features``."""
    env = os.environ.get("SSCB_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "ssl_cluster_bench" / "features"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", text).strip("-")[:60] or "x"


@dataclass(frozen=True)
class CacheKey:
    """What identifies a cache entry: same key <=> same features."""

    backbone: str
    dataset: str
    split: str = "all"
    weights: str = ""
    transform: str = ""
    variant: str = ""  # e.g. augmented views: "aug:randaugment:views=4:seed=0"
    data: str = ""  # fingerprint of the dataset content (classes, sample ids, labels)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    @property
    def entry_id(self) -> str:
        parts = [self.backbone, self.dataset, self.split] + ([self.variant.split(":")[0]] if self.variant else [])
        return "--".join(_slug(p) for p in parts) + "--" + self.digest()[:12]


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("ssl_cluster_bench", "numpy", "torch", "timm", "torchvision"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_features(block: np.ndarray, where: str) -> None:
    if not np.all(np.isfinite(block)):
        raise ValueError(f"{where}: features contain NaN or inf values; refusing to cache them")
    if block.size and np.abs(block).max() > FLOAT16_MAX:
        raise ValueError(
            f"{where}: feature magnitude {np.abs(block).max():.3g} overflows float16 (max {FLOAT16_MAX:.0f}); "
            "rescale the features before caching"
        )


@dataclass
class CacheEntry:
    """A complete cache entry. ``features`` is a read-only float16 memory map (never loaded whole)."""

    path: Path
    manifest: dict

    @property
    def key(self) -> CacheKey:
        return CacheKey(**self.manifest["key"])

    @property
    def features(self) -> np.ndarray:
        return np.load(self.path / "features.npy", mmap_mode="r")

    @property
    def labels(self) -> np.ndarray:
        return np.load(self.path / "labels.npy")

    @property
    def indices(self) -> np.ndarray:
        return np.load(self.path / "indices.npy")

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def feature_dim(self) -> int:
        return int(self.manifest["feature_dim"])

    @property
    def n_classes(self) -> int:
        labels = self.labels
        return int(np.unique(labels[labels >= 0]).size)

    def iter_batches(self, batch_size: int = 65536) -> Iterator[np.ndarray]:
        """float32 blocks of rows, in order; memory use is one block."""
        feats = self.features
        for start in range(0, feats.shape[0], batch_size):
            yield np.asarray(feats[start:start + batch_size], dtype=np.float32)

    def verify(self) -> bool:
        """Recompute the checksum from disk and compare with the manifest."""
        return _checksum(self.path / "features.npy", self.path / "labels.npy") == self.manifest["checksum"]


def _checksum(features_path: Path, labels_path: Path) -> str:
    h = hashlib.sha256()
    feats = np.load(features_path, mmap_mode="r")
    flat = feats.reshape(-1, feats.shape[-1]) if feats.ndim > 1 else feats
    for start in range(0, flat.shape[0], 1 << 16):
        h.update(np.ascontiguousarray(flat[start:start + (1 << 16)]).tobytes())
    h.update(np.ascontiguousarray(np.load(labels_path)).tobytes())
    return "sha256:" + h.hexdigest()


class FeatureCache:
    """A directory of cache entries. ``get`` finds complete entries; ``put`` and ``writer`` create them."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r})"

    def path(self, key: CacheKey) -> Path:
        return self.root / key.entry_id

    def get(self, key: CacheKey) -> CacheEntry | None:
        """The complete entry for ``key``, or None (a missing manifest means "not there")."""
        manifest_path = self.path(key) / "manifest.json"
        if not manifest_path.is_file():
            return None
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("key") != asdict(key):
            raise RuntimeError(f"cache entry {manifest_path.parent} does not belong to key {key} (hash collision?)")
        return CacheEntry(self.path(key), manifest)

    def entries(self) -> list[CacheEntry]:
        """Every complete entry under the root."""
        out = []
        if self.root.is_dir():
            for manifest_path in sorted(self.root.glob("*/manifest.json")):
                out.append(CacheEntry(manifest_path.parent, json.loads(manifest_path.read_text())))
        return out

    def find(self, backbone: str, dataset: str, split: str | None = None, variant: str = "") -> list[CacheEntry]:
        """Complete entries matching backbone/dataset (and split/variant) regardless of weights/transform."""
        return [
            e for e in self.entries()
            if e.key.backbone == backbone and e.key.dataset == dataset
            and (split is None or e.key.split == split) and e.key.variant == variant
        ]

    def put(self, key: CacheKey, features, labels, indices=None, meta: dict | None = None,
            batch_size: int = 65536) -> CacheEntry:
        """Store an in-memory or memory-mapped feature array (rows = samples) as a complete entry.

        Features are validated (finite, fit in float16), converted to float16 block by block and written
        through a temporary directory; an existing complete entry for ``key`` is returned unchanged.
        """
        existing = self.get(key)
        if existing is not None:
            return existing
        features = features if hasattr(features, "shape") else np.asarray(features)
        labels = np.asarray(labels)
        if features.ndim != 2:
            raise ValueError(f"features must be a 2-D array (n_samples, dim), got shape {features.shape}")
        n = features.shape[0]
        if n == 0:
            raise ValueError("features are empty: nothing to cache")
        if labels.shape != (n,):
            raise ValueError(f"labels have shape {labels.shape} but features have {n} rows: lengths must match")
        indices = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
        if indices.shape != (n,):
            raise ValueError(f"indices have shape {indices.shape}, expected ({n},)")
        tmp = self._tmp_dir(key)
        try:
            out = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float16,
                                            shape=features.shape)
            for start in range(0, n, batch_size):
                block = np.asarray(features[start:start + batch_size], dtype=np.float32)
                _check_features(block, f"rows {start}..{start + block.shape[0] - 1}")
                out[start:start + block.shape[0]] = block
            out.flush()
            del out
            return self._commit(key, tmp, labels.astype(np.int64), indices, meta or {})
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def writer(self, key: CacheKey, n_items: int, chunk_size: int) -> "ChunkWriter":
        """A resumable chunked writer for an extraction of ``n_items`` dataset positions."""
        return ChunkWriter(self, key, n_items, chunk_size)

    # -- internals ---------------------------------------------------------------------------------------
    def _tmp_dir(self, key: CacheKey) -> Path:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"cannot create the feature cache directory {self.root}: {e}") from e
        tmp = self.root / f".{key.entry_id}.tmp-{os.getpid()}-{time.time_ns()}"
        tmp.mkdir()
        return tmp

    def _commit(self, key: CacheKey, tmp: Path, labels: np.ndarray, indices: np.ndarray, meta: dict) -> CacheEntry:
        np.save(tmp / "labels.npy", labels)
        np.save(tmp / "indices.npy", indices)
        feats = np.load(tmp / "features.npy", mmap_mode="r")
        manifest = {
            "format": 1,
            "key": asdict(key),
            "feature_dim": int(feats.shape[-1]),
            "count": int(feats.shape[-2]),
            "shape": list(feats.shape),
            "dtype": "float16",
            "checksum": _checksum(tmp / "features.npy", tmp / "labels.npy"),
            "skipped": {"count": 0, "ids": []},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
        }
        del feats
        manifest.update(meta)
        for name in ("features.npy", "labels.npy", "indices.npy"):
            with open(tmp / name, "rb+") as f:
                os.fsync(f.fileno())
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
        _fsync_dir(tmp)
        final = self.path(key)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same entry first (or a stale incomplete dir is in the way).
            if self.get(key) is not None:
                shutil.rmtree(tmp, ignore_errors=True)
                return self.get(key)
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
        _fsync_dir(self.root)
        return CacheEntry(final, manifest)


class ChunkWriter:
    """Resumable writer: chunk ``i`` holds dataset positions ``[i*chunk_size, (i+1)*chunk_size)``.

    Each chunk is written atomically (temporary file + rename) into ``<entry_id>.partial/``, so after a kill
    ``done_chunks()`` lists exactly the finished ones and a re-run computes only the rest. ``finalize``
    assembles the chunks in order into a complete entry and removes the partial directory. Several
    processes (torchrun ranks) may write disjoint chunks into the same writer.
    """

    def __init__(self, cache: FeatureCache, key: CacheKey, n_items: int, chunk_size: int):
        if n_items <= 0:
            raise ValueError("the dataset is empty: nothing to extract")
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.cache, self.key = cache, key
        self.n_items, self.chunk_size = n_items, chunk_size
        self.dir = cache.root / f"{key.entry_id}.partial"
        self.dir.mkdir(parents=True, exist_ok=True)
        spec = {"key": asdict(key), "n_items": n_items, "chunk_size": chunk_size}
        spec_path = self.dir / "spec.json"
        if spec_path.is_file():
            if json.loads(spec_path.read_text()) != spec:
                # A different layout (e.g. another chunk size): old chunks cannot be reused safely.
                for old in self.dir.glob("chunk-*.npz"):
                    old.unlink()
                spec_path.write_text(json.dumps(spec))
        else:
            tmp = self.dir / f".spec.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(spec))
            os.replace(tmp, spec_path)

    @property
    def n_chunks(self) -> int:
        return (self.n_items + self.chunk_size - 1) // self.chunk_size

    def chunk_range(self, i: int) -> range:
        return range(i * self.chunk_size, min((i + 1) * self.chunk_size, self.n_items))

    def _chunk_path(self, i: int) -> Path:
        return self.dir / f"chunk-{i:06d}.npz"

    def done_chunks(self) -> set[int]:
        return {int(p.stem.split("-")[1]) for p in self.dir.glob("chunk-*.npz")}

    def write_chunk(self, i: int, features: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                    skipped_ids: list[str] = ()) -> None:
        features = np.asarray(features)
        _check_features(features.astype(np.float32, copy=False), f"chunk {i}")
        tmp = self.dir / f".chunk-{i:06d}.{os.getpid()}.tmp.npz"
        np.savez(tmp, features=features.astype(np.float16), labels=np.asarray(labels, dtype=np.int64),
                 indices=np.asarray(indices, dtype=np.int64), skipped=np.asarray(list(skipped_ids), dtype=str))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self._chunk_path(i))

    def finalize(self, meta: dict | None = None) -> CacheEntry:
        """Assemble all chunks into the cache entry (streaming: one chunk in memory at a time)."""
        missing = sorted(set(range(self.n_chunks)) - self.done_chunks())
        if missing:
            raise RuntimeError(f"cannot finalize {self.key.entry_id}: chunks {missing[:10]} are not written yet")
        counts, dims, skipped = [], set(), []
        lead_shape = None
        for i in range(self.n_chunks):
            with np.load(self._chunk_path(i)) as z:
                shape = z["features"].shape
                counts.append(shape[-2])
                dims.add(shape[-1])
                lead_shape = shape[:-2]
                skipped.extend(z["skipped"].tolist())
        if len(dims) != 1:
            raise RuntimeError(f"chunks of {self.key.entry_id} disagree on the feature dim: {sorted(dims)}")
        total = sum(counts)
        if total == 0:
            raise RuntimeError(f"every image of {self.key.dataset}/{self.key.split} was unreadable "
                               f"({len(skipped)} skipped): nothing to cache")
        dim = dims.pop()
        tmp = self.cache._tmp_dir(self.key)
        try:
            out = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float16,
                                            shape=(*lead_shape, total, dim))
            labels = np.empty(total, dtype=np.int64)
            indices = np.empty(total, dtype=np.int64)
            pos = 0
            for i, c in enumerate(counts):
                with np.load(self._chunk_path(i)) as z:
                    out[..., pos:pos + c, :] = z["features"]
                    labels[pos:pos + c] = z["labels"]
                    indices[pos:pos + c] = z["indices"]
                pos += c
            out.flush()
            del out
            info = {"skipped": {"count": len(skipped), "ids": skipped}}
            info.update(meta or {})
            entry = self.cache._commit(self.key, tmp, labels, indices, info)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(self.dir, ignore_errors=True)
        return entry
