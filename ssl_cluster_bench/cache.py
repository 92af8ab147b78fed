"""Feature cache: frozen features stored once per (backbone, weights, dataset, split, transform, variant).

On-disk format (one directory per entry under the cache root)::

    <root>/<entry_id>/
        manifest.json   identity and facts of the entry; written last, so an entry without it is incomplete
        features.npy    float16, shape (count, dim) — or (n_views, count, dim) for augmented-view entries;
                        open with ``np.load(path, mmap_mode="r")``
        labels.npy      int64, shape (count,); -1 where the dataset has no label
        indices.npy     int64, shape (count,); row -> position in the dataset (skipped files leave gaps)
        .verified.json  verified-stamp: the stat of each file when its bytes last matched the manifest
        .sscb-owner.json  marker: this folder was made by sscb (also in partial and temporary folders)
    <root>/<entry_id>.partial/chunks-of-<C>/   chunks of an extraction in progress (resumed, never read as an entry)
    <root>/.<entry_id>.tmp-<pid>@<host>.<random>/  an entry being assembled (renamed into place when complete)
    <root>/.locks/                              lock files (empty; never removed, see below)

Ownership: sscb deletes only folders that carry its marker (``.sscb-owner.json``; for entries and partial
folders of older versions, a manifest or chunk spec that reads as sscb's), so pointing ``--cache-dir`` at an
ordinary folder never costs a file. Temporary names carry ``<pid>@<host>``: each write into the cache first
sweeps temporaries whose process is dead (same host, ``kill(pid, 0)``) or, from other hosts, untouched for
two days (:meth:`FeatureCache.sweep`).

``manifest.json`` holds the key (backbone, weights, dataset, split, transform, variant, data fingerprint), ``feature_dim``,
``count``, ``shape``, ``dtype``, ``checksum`` (sha256 of features then labels data bytes), ``indices_checksum``,
``skipped`` (count and ids of unreadable files), ``data_source`` (the resolved data root and whether its files
were keyed by size and mtime or by content), library versions and creation time. Entries are assembled in a
temporary directory and renamed into place, so a crash never leaves a half-written entry that looks complete.

Sharing (many jobs, one cache): every process that asks for a missing entry helps build it. A chunk is
computed by whoever first takes its lock (``flock``, dropped by the kernel if that job dies) and appears
only by an atomic rename, so nobody reads a half-written chunk or recomputes one it can see finished; the
entry is assembled once, under a per-entry lock, by the first process that finds every chunk done, and the
others return that entry. Where locks do not work (NFS without a lock daemon, see :mod:`.safeio`) the same
steps stay safe without them — unique temporary names, renames, readers that tolerate the partial folder
vanishing — and the only cost is that two jobs may compute the same chunk.

Integrity: an entry's files are checked against the manifest before first use in a process (shape, dtype
and size from the ``.npy`` headers, then sha256). A successful check records each file's size, mtime,
ctime and inode in ``.verified.json``; a later open whose files still have that stat skips the hash. Any
write through the filesystem changes mtime/ctime (ctime cannot be set back by users), a truncation
changes the size and a replaced or copied file has a new inode, so all of these are re-hashed; what the
stamp cannot see is media corruption after the check that never went through the filesystem (bit rot),
which ``sscb cache --verify`` (always a full hash) finds. The cost is in benchmarks/README.md.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import InterfaceError, option, spell
from .safeio import FileLock, atomic_write, atomic_write_text, fsync_dir, write_error

__all__ = ["CacheIntegrityError", "CacheKey", "CacheEntry", "ChunkWriter", "CacheEntryStatus", "FeatureCache",
           "default_cache_dir", "load_manifest", "resolve_cache"]

log = logging.getLogger(__name__)

FLOAT16_MAX = float(np.finfo(np.float16).max)
DATA_FILES = ("features.npy", "labels.npy", "indices.npy")
STAMP = ".verified.json"
_HASH_BLOCK = 16 << 20


class CacheIntegrityError(InterfaceError, RuntimeError):
    """An entry's files disagree with its manifest or cannot be read: it must not be used."""


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
    data: str = ""  # fingerprint of the data: classes, labels, the resolved root, each data file's size and mtime

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    @property
    def entry_id(self) -> str:
        parts = [self.backbone, self.dataset, self.split] + ([self.variant.split(":")[0]] if self.variant else [])
        return "--".join(_slug(p) for p in parts) + "--" + self.digest()[:12]


# -- ownership and temporary names ---------------------------------------------------------------------------
OWNER = ".sscb-owner.json"
SWEEP_AGE = 2 * 86400  # seconds untouched after which another host's temporaries count as abandoned
# "<pid>@<host>" in a temporary name: the process that writes it (the last tag counts: a trash folder's name
# holds the name of the folder it replaced)
_TAG = re.compile(r"(?<=[.-])(\d+)@([A-Za-z0-9_-]+)(?=\.)")
_LEGACY_TMP = re.compile(r"^\..+--[0-9a-f]{12}\.tmp-(\d+)-[A-Za-z0-9_]+$")  # before tags had a host


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", socket.gethostname()) or "host"


def _tag() -> str:
    """``<pid>@<host>`` of this process, for temporary names a sweeper can judge."""
    return f"{os.getpid()}@{_host()}"


def _write_owner(folder: Path, kind: str) -> None:
    """Mark ``folder`` as made by sscb (``kind``: entry, partial, temp; informative only)."""
    _write_text(folder / OWNER, json.dumps({"made_by": "ssl_cluster_bench", "kind": kind, "pid": os.getpid(),
                                            "host": socket.gethostname(),
                                            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))


def _reads_as(path: Path, fields: tuple[str, ...]) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(f in data for f in fields)


def _owned(path: Path) -> bool:
    """Whether sscb made the folder ``path`` (the only folders it ever deletes).

    New folders carry :data:`OWNER`; older entries are recognised by a manifest with sscb's fields, older
    partial folders by a chunk spec, older temporary folders by their name (entry id, digest and pid)."""
    if not path.is_dir() or path.is_symlink():
        return False
    if (path / OWNER).is_file():
        return True
    if _reads_as(path / "manifest.json", ("key", "checksum", "shape", "feature_dim")):
        return True
    if path.name.endswith(".partial") and any(_reads_as(spec, ("key", "n_items", "chunk_size"))
                                              for spec in path.glob("chunks-of-*/spec.json")):
        return True
    return bool(_LEGACY_TMP.match(path.name))


def _newest_mtime(path: Path) -> float:
    """Latest modification time of ``path`` and (a folder) the files directly in it."""
    try:
        newest = path.stat().st_mtime
    except OSError:
        return time.time()  # vanished or unreadable: treat as fresh, never as abandoned
    if path.is_dir():
        try:
            with os.scandir(path) as it:
                for e in it:
                    try:
                        newest = max(newest, e.stat(follow_symlinks=False).st_mtime)
                    except OSError:
                        pass
        except OSError:
            pass
    return newest


def _abandoned(path: Path, max_age: float = SWEEP_AGE) -> bool:
    """A temporary whose writer is gone: a dead pid of this host, or untouched for ``max_age`` seconds
    (the only evidence for another host's processes, or for a pid reused since)."""
    tags = _TAG.findall(path.name)
    if tags:
        pid, host = tags[-1]
        if host == _host() and int(pid) > 0 and not _pid_alive(int(pid)):
            return True
    return time.time() - _newest_mtime(path) > max_age


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("ssl_cluster_bench", "numpy", "torch", "timm", "torchvision"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _check_features(block: np.ndarray, where: str) -> None:
    if not np.all(np.isfinite(block)):
        raise ValueError(f"{where}: features contain NaN or inf values; refusing to cache them")
    if block.size and np.abs(block).max() > FLOAT16_MAX:
        raise ValueError(
            f"{where}: feature magnitude {np.abs(block).max():.3g} overflows float16 (max {FLOAT16_MAX:.0f}); "
            "rescale the features before caching"
        )


def _fix_hint(name: str) -> str:
    return (f"Rebuild it: {option('cache_remove', name)}, then re-run the same command to extract it again "
            f"({option('cache_verify')} checks every entry).")


# -- .npy files read and written without memory maps ------------------------------------------------------
def _npy_layout(path: Path) -> tuple[tuple, np.dtype, bool, int]:
    """(shape, dtype, fortran_order, offset of the data) from a ``.npy`` header; ValueError if unreadable."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
        return tuple(shape), dtype, fortran, f.tell()


def _hash_npy_data(path: Path, h, progress=None) -> None:
    """Feed the data bytes of a C-order ``.npy`` file (no header) to ``h``, streaming (no memory map)."""
    shape, dtype, _, offset = _npy_layout(path)
    remaining = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = memoryview(bytearray(min(_HASH_BLOCK, max(remaining, 1))))
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        while remaining:
            n = f.readinto(buf[:min(len(buf), remaining)])
            if not n:
                raise ValueError(f"{path.name} ends {remaining} bytes early")
            h.update(buf[:n])
            remaining -= n
            if progress is not None:
                progress.update(n)


def _checksum(features_path: Path, labels_path: Path, progress=None) -> str:
    """sha256 of the features' data bytes then the labels' (the manifest's ``checksum``)."""
    h = hashlib.sha256()
    _hash_npy_data(Path(features_path), h, progress)
    _hash_npy_data(Path(labels_path), h, progress)
    return "sha256:" + h.hexdigest()


def _file_checksum(path: Path) -> str:
    h = hashlib.sha256()
    _hash_npy_data(Path(path), h)
    return "sha256:" + h.hexdigest()


class _NpyWriter:
    """A C-order ``.npy`` file filled with plain ``write`` calls at row offsets.

    Plain writes report a full disk as OSError(ENOSPC) at the write; storing through a memory map of a
    sparse file would instead kill the process with SIGBUS.
    """

    def __init__(self, path: Path, shape: tuple, dtype=np.float16):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.row_bytes = int(shape[-1]) * self.dtype.itemsize
        self.file = open(path, "wb")
        try:
            np.lib.format.write_array_header_1_0(self.file, {
                "descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape})
            self.offset = self.file.tell()
        except BaseException:
            self.file.close()
            raise

    def write_rows(self, flat_row: int, block: np.ndarray) -> None:
        """Write ``block`` (rows, dim) at row ``flat_row`` of the file seen as (-1, dim)."""
        data = np.ascontiguousarray(block, dtype=self.dtype)
        self.file.seek(self.offset + flat_row * self.row_bytes)
        self.file.write(memoryview(data).cast("B"))

    def close(self) -> None:
        """Flush, fsync and close (the file must be complete)."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
        finally:
            self.file.close()

    def abort(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass  # the write error that brought us here is the one to report


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


# -- verified-stamps -------------------------------------------------------------------------------------
def _file_stats(path: Path) -> dict:
    out = {}
    for name in DATA_FILES:
        st = os.stat(path / name)
        out[name] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    return out


# Entries verified by this process (path, stats) -> True: a read-only cache (no stamp) is hashed once per process.
_verified_here: set[tuple] = set()


def _stamp_matches(path: Path, manifest: dict, stats: dict) -> bool:
    try:
        stamp = json.loads((path / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(stamp, dict) and stamp.get("checksum") == manifest.get("checksum")
            and stamp.get("indices_checksum") == manifest.get("indices_checksum") and stamp.get("files") == stats)


def _write_stamp(path: Path, manifest: dict, stats: dict) -> None:
    stamp = {"checksum": manifest.get("checksum"), "indices_checksum": manifest.get("indices_checksum"),
             "files": stats, "verified": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
             "by": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        atomic_write_text(path / STAMP, json.dumps(stamp, indent=1), prefix=f".verified.{_tag()}.")
    except OSError as e:
        size = sum(s[0] for s in stats.values()) / 2**30
        log.warning("cannot record that %s was verified (%s): every new process will hash its %.1f GiB again",
                    path.name, e, size)


def load_manifest(path: Path) -> dict:
    """The parsed manifest of the entry folder ``path``; CacheIntegrityError if it is missing fields or garbled."""
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise CacheIntegrityError(f"feature cache entry {path} is damaged: its manifest.json cannot be read "
                                  f"({e}). {_fix_hint(path.name)}") from None
    missing = [k for k in ("key", "shape", "count", "feature_dim", "checksum") if not isinstance(manifest, dict)
               or k not in manifest]
    if missing:
        raise CacheIntegrityError(f"feature cache entry {path} is damaged: its manifest.json lacks {missing}. "
                                  f"{_fix_hint(path.name)}")
    return manifest


@dataclass
class CacheEntry:
    """A complete cache entry. ``features`` is a read-only float16 memory map (never loaded whole).

    The files are checked against the manifest before the first ``features`` / ``labels`` / ``indices``
    access (:meth:`ensure_verified`); a damaged entry raises :class:`CacheIntegrityError` instead.
    """

    path: Path
    manifest: dict
    _verified: bool = field(default=False, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def key(self) -> CacheKey:
        return CacheKey(**self.manifest["key"])

    @property
    def features(self) -> np.ndarray:
        self.ensure_verified()
        return np.load(self.path / "features.npy", mmap_mode="r")

    @property
    def labels(self) -> np.ndarray:
        self.ensure_verified()
        return np.load(self.path / "labels.npy")

    @property
    def indices(self) -> np.ndarray:
        self.ensure_verified()
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

    @property
    def nbytes(self) -> int:
        return sum((self.path / n).stat().st_size for n in DATA_FILES if (self.path / n).is_file())

    def iter_batches(self, batch_size: int = 65536) -> Iterator[np.ndarray]:
        """float32 blocks of rows, in order; memory use is one block."""
        feats = self.features
        for start in range(0, feats.shape[0], batch_size):
            yield np.asarray(feats[start:start + batch_size], dtype=np.float32)

    # -- integrity ---------------------------------------------------------------------------------------
    def _damaged(self, what: str) -> CacheIntegrityError:
        return CacheIntegrityError(f"feature cache entry {self.path} is damaged: {what}. {_fix_hint(self.name)}")

    def check_structure(self) -> dict:
        """Cheap checks (files present, ``.npy`` headers, sizes) against the manifest; returns the files' stats."""
        m = self.manifest
        count = int(m["count"])
        expected = {"features.npy": (tuple(m["shape"]), np.dtype(m.get("dtype", "float16"))),
                    "labels.npy": ((count,), np.dtype(np.int64)), "indices.npy": ((count,), np.dtype(np.int64))}
        for name, (shape, dtype) in expected.items():
            path = self.path / name
            if not path.is_file():
                raise self._damaged(f"{name} is missing")
            try:
                got_shape, got_dtype, fortran, offset = _npy_layout(path)
            except (OSError, ValueError, SyntaxError) as e:
                raise self._damaged(f"{name} is not a readable .npy file ({e})") from None
            if got_shape != shape or got_dtype != dtype or fortran:
                raise self._damaged(f"{name} holds {got_dtype} {got_shape} but the manifest says {dtype} {shape}")
            size, want = path.stat().st_size, offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if size != want:
                state = "truncated" if size < want else "longer than its header says"
                raise self._damaged(f"{name} is {state}: {size} bytes instead of {want}")
        try:
            return _file_stats(self.path)
        except OSError as e:
            raise self._damaged(f"its files cannot be read ({e})") from None

    def check(self, full: bool = True, progress: bool | None = None) -> None:
        """Raise :class:`CacheIntegrityError` unless the files match the manifest.

        ``full=True`` always re-hashes (``sscb cache --verify``) and refreshes the stamp; ``full=False``
        trusts a verified-stamp whose recorded stats still match the files.
        """
        stats = self.check_structure()
        if not full and ((str(self.path), json.dumps(stats)) in _verified_here
                         or _stamp_matches(self.path, self.manifest, stats)):
            self._verified = True
            return
        # One process hashes a large entry while the others sharing the cache wait for its stamp.
        lock = FileLock(self.path.parent / ".locks" / f"{self.name}.verify.lock")
        try:
            lock.path.parent.mkdir(exist_ok=True)
        except OSError:
            pass  # read-only cache: FileLock degrades to no lock
        with lock:
            if not full and _stamp_matches(self.path, self.manifest, stats):
                self._verified = True
                return
            self._hash_and_compare(progress)
            _verified_here.add((str(self.path), json.dumps(stats)))
            _write_stamp(self.path, self.manifest, stats)
        self._verified = True

    def _hash_and_compare(self, progress: bool | None) -> None:
        from tqdm.auto import tqdm

        from .progress import quiet

        total = sum((self.path / n).stat().st_size for n in DATA_FILES)
        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"verify {self.name}", leave=False,
                   disable=(total < 1 << 30 or quiet()) if progress is None else not progress)
        try:
            got = _checksum(self.path / "features.npy", self.path / "labels.npy", bar)
            if got != self.manifest["checksum"]:
                raise self._damaged("features.npy or labels.npy does not match the sha256 in its manifest (the "
                                    "bytes changed after the entry was written: disk error, interrupted copy or "
                                    "sync, or an edit)")
            want = self.manifest.get("indices_checksum")
            if want is not None and _file_checksum(self.path / "indices.npy") != want:
                raise self._damaged("indices.npy does not match the sha256 in its manifest")
        except (OSError, ValueError) as e:
            raise self._damaged(f"its files cannot be read to the end ({e})") from None
        finally:
            bar.close()

    def ensure_verified(self) -> "CacheEntry":
        """Check once per object (fast path: the verified-stamp); raise CacheIntegrityError if damaged."""
        if not self._verified:
            self.check(full=False)
        return self

    def verify(self) -> bool:
        """Recompute the checksums from disk and compare with the manifest (True = intact)."""
        try:
            self.check(full=True)
        except CacheIntegrityError:
            return False
        return True


@dataclass
class CacheEntryStatus:
    """One line of ``sscb cache``: an entry folder, a partial extraction or a leftover temporary folder."""

    name: str
    state: str  # "ok", "unverified", "damaged", "incomplete", "partial", "leftover"
    detail: str = ""  # with option placeholders: read it through describe()
    entry: CacheEntry | None = None
    nbytes: int = 0

    def describe(self, interface: str = "api") -> str:
        """``detail`` with the commands it names spelled for ``interface`` ("api" or "cli")."""
        return spell(self.detail, interface)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _dir_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            total += p.stat().st_size if p.is_file() else 0
        except OSError:
            pass
    return total


class FeatureCache:
    """A directory of cache entries. ``get`` finds complete entries; ``put`` and ``writer`` create them."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r})"

    def path(self, key: CacheKey) -> Path:
        return self.root / key.entry_id

    def get(self, key: CacheKey) -> CacheEntry | None:
        """The complete, verified entry for ``key``, or None (a missing manifest means "not there").

        Raises :class:`CacheIntegrityError` when the entry exists but its files do not match its manifest.
        """
        path = self.path(key)
        if not (path / "manifest.json").is_file():
            return None
        manifest = load_manifest(path)
        if manifest.get("key") != asdict(key):
            raise RuntimeError(f"cache entry {path} does not belong to key {key} (hash collision?)")
        return CacheEntry(path, manifest).ensure_verified()

    def entry_named(self, name: str) -> CacheEntry | None:
        """The complete entry in the folder ``name`` of this cache (a row's ``cache_key``, as ``sscb cache`` lists
        it), or None when there is none; its data are verified on first use."""
        path = self.root / name
        if not name or Path(name).name != name or not (path / "manifest.json").is_file():
            return None
        return CacheEntry(path, load_manifest(path))

    def entries(self) -> list[CacheEntry]:
        """Every complete entry under the root whose manifest reads (data are verified on first use)."""
        out = []
        if self.root.is_dir():
            for manifest_path in sorted(self.root.glob("*/manifest.json")):
                try:
                    out.append(CacheEntry(manifest_path.parent, load_manifest(manifest_path.parent)))
                except CacheIntegrityError as e:
                    log.warning("skipping %s", e)
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
        self.sweep()
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
            try:
                out = _NpyWriter(tmp / "features.npy", features.shape)
                try:
                    for start in range(0, n, batch_size):
                        block = np.asarray(features[start:start + batch_size], dtype=np.float32)
                        _check_features(block, f"rows {start}..{start + block.shape[0] - 1}")
                        out.write_rows(start, block)
                except BaseException:
                    out.abort()
                    raise
                out.close()
                with self._entry_lock(key.entry_id):
                    return self._commit(key, tmp, labels.astype(np.int64), indices, meta or {})
            except OSError as e:
                raise write_error(e, f"writing feature cache entry {key.entry_id}", tmp,
                                  "Nothing was stored (the cache holds no partial copy of it).") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def writer(self, key: CacheKey, n_items: int, chunk_size: int) -> "ChunkWriter":
        """A resumable chunked writer for an extraction of ``n_items`` dataset positions (a context manager)."""
        return ChunkWriter(self, key, n_items, chunk_size)

    # -- listing, checking, removing --------------------------------------------------------------------
    def status(self, full: bool = False) -> list[CacheEntryStatus]:
        """Every folder sscb made under the root, classified; ``full`` re-hashes every complete entry
        (``--verify``). Anything else there is left out (see :meth:`foreign`)."""
        out: list[CacheEntryStatus] = []
        if not self.root.is_dir():
            return out
        for path in sorted(self.root.iterdir(), key=lambda p: p.name.lstrip(".")):
            if path.name == ".locks" or not _owned(path):
                continue
            if path.name.endswith(".partial"):
                out.append(self._partial_status(path))
            elif path.name.startswith("."):
                out.append(self._leftover_status(path))
            elif not (path / "manifest.json").exists():  # made by sscb, its manifest lost
                out.append(CacheEntryStatus(path.name, "incomplete", "no manifest.json (not an entry; a new extraction "
                                            f"replaces it): {option('cache_remove', path.name)}",
                                            nbytes=_dir_bytes(path)))
            else:
                out.append(self._entry_status(path, full))
        return out

    def foreign(self) -> list[str]:
        """Names of the files and folders under the root that sscb did not make (never listed, never removed)."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.name != ".locks" and not _owned(p))

    def _entry_status(self, path: Path, full: bool) -> CacheEntryStatus:
        try:
            entry = CacheEntry(path, load_manifest(path))
            if full:
                entry.check(full=True)
                return CacheEntryStatus(path.name, "ok", "sha256 verified now", entry, entry.nbytes)
            stats = entry.check_structure()
            verified = _stamp_matches(path, entry.manifest, stats)
            return CacheEntryStatus(path.name, "ok" if verified else "unverified",
                                    "" if verified else f"hashed on first use, or now with {option('cache_verify')}",
                                    entry, entry.nbytes)
        except CacheIntegrityError as e:
            return CacheEntryStatus(path.name, "damaged", Exception.__str__(e), nbytes=_dir_bytes(path))

    def _partial_status(self, path: Path) -> CacheEntryStatus:
        entry_id = path.name[: -len(".partial")]
        done, total = 0, None
        for chunks in path.glob("chunks-of-*"):
            try:
                spec = json.loads((chunks / "spec.json").read_text())
                n = (spec["n_items"] + spec["chunk_size"] - 1) // spec["chunk_size"]
            except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
                continue
            got = len(list(chunks.glob("chunk-*.npz")))
            if total is None or got / n > done / total:
                done, total = got, n
        progress = f"{done}/{total} chunks done" if total else "no finished chunk"
        if (self.root / entry_id / "manifest.json").is_file():
            detail = f"{progress}; left over beside the complete entry: {option('cache_remove', path.name)}"
        elif self._in_progress(entry_id):
            detail = f"{progress}; an extraction is running"
        else:
            detail = (f"{progress}; no process is working on it (a killed run): re-run the same extraction to "
                      f"resume, or {option('cache_remove', entry_id)}")
        return CacheEntryStatus(path.name, "partial", detail, nbytes=_dir_bytes(path))

    def _leftover_status(self, path: Path) -> CacheEntryStatus:
        # Temporary folders are named .<entry>.tmp-<pid>@<host>.…: a live pid on this host may still be writing it.
        tags = _TAG.findall(path.name)
        pid, host = tags[-1] if tags else ("", "")
        if host == _host() and int(pid) > 0 and _pid_alive(int(pid)):
            return CacheEntryStatus(path.name, "leftover", f"probably being written by process {pid} on "
                                    f"this host; if not, {option('cache_remove', path.name)} deletes it",
                                    nbytes=_dir_bytes(path))
        if host and host != _host() and not _abandoned(path):
            return CacheEntryStatus(path.name, "leftover", f"being written by process {pid} on host {host}, or left "
                                    f"by it; swept after {SWEEP_AGE // 3600} h untouched, or "
                                    f"{option('cache_remove', path.name)} deletes it now", nbytes=_dir_bytes(path))
        return CacheEntryStatus(path.name, "leftover", "temporary folder of an interrupted write; "
                                f"{option('cache_remove', path.name)} deletes it", nbytes=_dir_bytes(path))

    def _in_progress(self, entry_id: str) -> bool:
        lock = FileLock(self.root / ".locks" / f"{entry_id}.active.lock")
        if not lock.path.exists():
            return False
        if lock.acquire(blocking=False):
            held_elsewhere = False
            lock.release()
        else:
            held_elsewhere = True
        return held_elsewhere

    def remove(self, name: str) -> list[str]:
        """Delete entry ``name`` (as listed by ``sscb cache``) with its partial extraction; returns what went.

        ``name`` may also be a ``.partial`` or leftover temporary folder. Only folders sscb made (see
        :func:`_owned`) are deleted: anything else under the root is refused, and nothing is deleted then.
        Refuses while an extraction of the entry is running. The folder is renamed away first, so nobody ever
        sees it half-deleted.
        """
        name = name.strip().rstrip("/")
        if not name or "/" in name or os.sep in name or name in (".", "..", ".locks"):
            raise ValueError(f"{name!r} is not the name of a cache entry; `sscb cache` lists them")
        entry_id = name[: -len(".partial")] if name.endswith(".partial") else name
        targets = [self.root / name] if name.startswith(".") else \
            ([self.root / entry_id] if name == entry_id else []) + [self.root / f"{entry_id}.partial"]
        targets = [p for p in targets if p.exists() or p.is_symlink()]
        if not targets:
            known = [s.name for s in self.status()]
            raise ValueError(f"no cache entry named {name!r} under {self.root}; `sscb cache` lists them"
                             + (f" ({len(known)} there)" if known else " (the cache is empty)"))
        foreign = [p for p in targets if not _owned(p)]
        if foreign:
            raise ValueError(f"refusing to delete {foreign[0]}: it is not a feature cache entry (no {OWNER} or "
                             "sscb manifest in it), so sscb did not make it; nothing was deleted (delete it "
                             "yourself if it is yours to remove)")
        if not name.startswith(".") and self._in_progress(entry_id):
            raise RuntimeError(f"an extraction of {entry_id} is running right now; wait for it (or stop it) "
                               "before removing the entry")
        removed = []
        with self._entry_lock(entry_id):
            for path in targets:
                self._discard(path)
                removed.append(path.name)
        return removed

    def sweep(self, max_age: float = SWEEP_AGE) -> list[str]:
        """Delete the temporary files and folders of writers that are gone; returns their paths (relative).

        A temporary is gone when its name's ``<pid>@<host>`` is a dead process of this host, or when nothing in
        it changed for ``max_age`` seconds (other hosts' processes cannot be asked). Only temporaries inside
        folders sscb made are touched; partial extractions are kept (re-runs resume them).
        """
        swept: list[str] = []
        if not self.root.is_dir():
            return swept
        try:
            children = list(self.root.iterdir())
        except OSError:
            return swept
        for path in children:
            name = path.name
            try:
                if name.startswith(".") and (".tmp-" in name or name.startswith(".trash-")) and path.is_dir() \
                        and _abandoned(path, max_age):
                    if _owned(path):
                        self._discard(path, trash=not name.startswith(".trash-"))
                        swept.append(name)
                    elif name.startswith(".trash-") and _TAG.search(name) and not any(path.iterdir()):
                        path.rmdir()  # a deletion killed after its marker went: only the empty folder is left
                        swept.append(name)
                    continue
                if not path.is_dir() or name.startswith(".") or not _owned(path):
                    continue
                pattern = "chunks-of-*/.*.tmp" if name.endswith(".partial") else ".verified.*.tmp"
                for tmp in path.glob(pattern):
                    if _abandoned(tmp, max_age):
                        tmp.unlink(missing_ok=True)
                        swept.append(str(tmp.relative_to(self.root)))
            except OSError as e:  # another process swept it first, or a read-only cache
                log.debug("not swept: %s (%s)", path, e)
        if swept:
            log.info("removed %d temporary file(s)/folder(s) of processes that died: %s", len(swept),
                     ", ".join(swept[:5]) + (" ..." if len(swept) > 5 else ""))
        return swept

    # -- internals ---------------------------------------------------------------------------------------
    def _lock_path(self, entry_id: str, kind: str) -> Path:
        locks = self.root / ".locks"
        try:
            locks.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_error(e, f"creating the feature cache directory {locks}", locks,
                              "Nothing was written.") from e
        return locks / f"{entry_id}.{kind}.lock"

    def _entry_lock(self, entry_id: str) -> FileLock:
        """The lock held while an entry is created, assembled, renamed into place or removed."""
        return FileLock(self._lock_path(entry_id, "entry"))

    def _discard(self, path: Path, trash: bool = True) -> None:
        """Delete the sscb-made folder ``path``: renamed out of sight first (``trash``), its marker deleted last,
        so that a kill half-way leaves a folder the sweeper still recognises as its own."""
        if not (path / OWNER).is_file():
            _write_owner(path, "legacy")  # proven ours by the caller (an older manifest, spec or name)
        if trash:
            moved = self.root / f".trash-{path.name}.{_tag()}.{time.time_ns()}"
            os.rename(path, moved)
            path = moved
        for child in path.iterdir():
            if child.name == OWNER:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        (path / OWNER).unlink(missing_ok=True)
        try:
            path.rmdir()
        except OSError as e:
            log.warning("could not delete all of %s (%s)", path, e)

    def _tmp_dir(self, key: CacheKey) -> Path:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key.entry_id}.tmp-{_tag()}.", dir=self.root))
        except OSError as e:
            raise write_error(e, f"creating a folder in the feature cache {self.root}", self.root,
                              "Nothing was written.") from e
        try:
            _write_owner(tmp, "entry")  # travels with the folder when it is renamed into place
            return tmp
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if not isinstance(e, OSError):
                raise
            raise write_error(e, f"creating a folder in the feature cache {self.root}", self.root,
                              "Nothing was written.") from e

    def _commit(self, key: CacheKey, tmp: Path, labels: np.ndarray, indices: np.ndarray, meta: dict) -> CacheEntry:
        """Finish the entry assembled in ``tmp`` and rename it into place. The caller holds the entry lock."""
        _save_npy(tmp / "labels.npy", labels)
        _save_npy(tmp / "indices.npy", indices)
        shape, _, _, _ = _npy_layout(tmp / "features.npy")
        manifest = {
            "format": 1,
            "key": asdict(key),
            "feature_dim": int(shape[-1]),
            "count": int(shape[-2]),
            "shape": list(shape),
            "dtype": "float16",
            "checksum": _checksum(tmp / "features.npy", tmp / "labels.npy"),
            "indices_checksum": _file_checksum(tmp / "indices.npy"),
            "skipped": {"count": 0, "ids": []},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
        }
        manifest.update(meta)
        _write_text(tmp / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
        # The bytes were hashed from disk just now: stamp them so the first open does not hash them again.
        _write_stamp(tmp, manifest, _file_stats(tmp))
        fsync_dir(tmp)
        final = self.path(key)
        if (final / "manifest.json").is_file():
            # Another process (on a filesystem without working locks) finished the same entry first.
            shutil.rmtree(tmp, ignore_errors=True)
            return self.get(key)
        if final.exists():
            # A folder without a manifest is never an entry (entries appear complete, by rename): replace it if
            # sscb made it (an entry whose manifest was lost), never a folder of someone else.
            if not _owned(final):
                raise RuntimeError(f"{final} is in the way of the new cache entry and was not made by sscb (no "
                                   "marker in it); move it out of the feature cache and re-run")
            self._discard(final)
        try:
            os.rename(tmp, final)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not (final / "manifest.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return self.get(key)
        fsync_dir(self.root)
        entry = CacheEntry(final, manifest)
        entry._verified = True
        return entry


class ChunkWriter:
    """Resumable writer: chunk ``i`` holds dataset positions ``[i*chunk_size, (i+1)*chunk_size)``.

    Chunks live in ``<entry_id>.partial/chunks-of-<chunk_size>/``, each written to a unique temporary file and
    renamed into place, so after a kill ``done_chunks()`` lists exactly the finished ones and a re-run computes
    only the rest. Any number of processes (torchrun ranks or independent jobs) may share one writer's folder:
    :meth:`claim` hands chunk ``i`` to one of them at a time, and :meth:`finalize` assembles the entry once.
    Use as a context manager (or call :meth:`close`): while open, ``sscb cache`` reports the extraction as running.
    """

    def __init__(self, cache: FeatureCache, key: CacheKey, n_items: int, chunk_size: int):
        if n_items <= 0:
            raise ValueError("the dataset is empty: nothing to extract")
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.cache, self.key = cache, key
        self.n_items, self.chunk_size = n_items, chunk_size
        self.dir = cache.root / f"{key.entry_id}.partial"
        # One folder per layout: jobs resuming with another chunk size never delete each other's chunks.
        self.chunks_dir = self.dir / f"chunks-of-{chunk_size}"
        self._active = FileLock(cache._lock_path(key.entry_id, "active"), shared=True)
        cache.sweep()  # temporaries of jobs that died (a kill -9, a node that went down)
        with cache._entry_lock(key.entry_id):
            if not self.entry_complete():
                try:
                    # The folder is deleted once the entry is assembled: it must be ours (an empty one, left by a
                    # kill between its mkdir and its marker, holds nothing to lose)
                    if self.dir.exists() and not _owned(self.dir) and any(self.dir.iterdir()):
                        raise RuntimeError(f"{self.dir} is in the way of the extraction and was not made by sscb "
                                           "(no marker in it); move it out of the feature cache and re-run")
                    self.dir.mkdir(parents=True, exist_ok=True)
                    if not (self.dir / OWNER).is_file():
                        _write_owner(self.dir, "partial")
                    self.chunks_dir.mkdir(exist_ok=True)
                    spec_path = self.chunks_dir / "spec.json"
                    if not spec_path.is_file():
                        atomic_write_text(spec_path, json.dumps({"key": asdict(key), "n_items": n_items,
                                                                 "chunk_size": chunk_size}),
                                          prefix=f".spec.{_tag()}.")
                except OSError as e:
                    raise write_error(e, f"creating the extraction folder of {key.entry_id}", self.chunks_dir,
                                      "Nothing was written.") from e
            self._active.acquire()  # before the entry lock goes, so `remove` cannot slip in between

    def __enter__(self) -> "ChunkWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._active.release()

    @property
    def n_chunks(self) -> int:
        return (self.n_items + self.chunk_size - 1) // self.chunk_size

    def chunk_range(self, i: int) -> range:
        return range(i * self.chunk_size, min((i + 1) * self.chunk_size, self.n_items))

    def _chunk_path(self, i: int) -> Path:
        return self.chunks_dir / f"chunk-{i:06d}.npz"

    def entry_complete(self) -> bool:
        """True once the entry has been assembled (by this or any other process)."""
        return (self.cache.path(self.key) / "manifest.json").is_file()

    def done_chunks(self) -> set[int]:
        return {int(p.stem.split("-")[1]) for p in self.chunks_dir.glob("chunk-*.npz")}

    def is_done(self, i: int) -> bool:
        return self._chunk_path(i).is_file()

    def claim(self, i: int) -> FileLock | None:
        """The lock of chunk ``i`` if this process should compute it now; None if it is done, being computed
        by another process, or the whole entry is finished. Release the lock after :meth:`write_chunk`."""
        if self.is_done(i) or self.entry_complete():
            return None
        lock = FileLock(self.chunks_dir / f"chunk-{i:06d}.lock")
        try:
            if not lock.acquire(blocking=False):
                return None
        except FileNotFoundError:
            return self._vanished()
        # Chunk before entry: the folder is removed only after the entry is renamed into place, so a chunk
        # that vanished with the folder always shows up here as a complete entry.
        if self.is_done(i) or self.entry_complete():
            lock.release()
            return None
        return lock

    def wait(self, i: int) -> None:
        """Block until no other process computes chunk ``i`` (it finished it, or died)."""
        lock = FileLock(self.chunks_dir / f"chunk-{i:06d}.lock")
        try:
            with lock:
                pass
        except FileNotFoundError:
            self._vanished()

    def _vanished(self) -> None:
        if self.entry_complete():
            return None
        raise RuntimeError(f"the extraction folder {self.chunks_dir} was removed while this job was writing into it "
                           "(`sscb cache --remove` or a manual delete?); re-run the command to start it again")

    def write_chunk(self, i: int, features: np.ndarray, labels: np.ndarray, indices: np.ndarray,
                    skipped_ids: list[str] = ()) -> None:
        features = np.asarray(features)
        _check_features(features.astype(np.float32, copy=False), f"chunk {i}")
        try:
            # a unique temporary (O_EXCL): two jobs or hosts never write into the same one; <pid>@<host> in its
            # name tells a later run whether its writer is still alive; removed on any error or signal
            with atomic_write(self._chunk_path(i), prefix=f".chunk-{i:06d}.{_tag()}.") as f:
                np.savez(f, features=features.astype(np.float16), labels=np.asarray(labels, dtype=np.int64),
                         indices=np.asarray(indices, dtype=np.int64),
                         skipped=np.asarray(list(skipped_ids), dtype=str))
        except OSError as e:
            if e.errno == errno.ENOENT and self.entry_complete():
                return  # another job (without working locks) assembled the entry and removed the folder
            done = len(self.done_chunks())
            raise write_error(e, f"writing chunk {i} of feature cache entry {self.key.entry_id}", self.chunks_dir,
                              f"The {done} finished chunk(s) of {self.n_chunks} are kept (no partial chunk was "
                              "left) and a re-run computes only the rest.") from e

    def finalize(self, meta: dict | None = None) -> CacheEntry:
        """Assemble all chunks into the cache entry (streaming: one chunk in memory at a time).

        Runs under the entry lock; if another process assembled the entry meanwhile, returns that entry.
        """
        with self.cache._entry_lock(self.key.entry_id):
            if self.entry_complete():
                shutil.rmtree(self.dir, ignore_errors=True)
                return self.cache.get(self.key)
            try:
                return self._assemble(meta)
            except FileNotFoundError:
                if self.entry_complete():  # only without working locks: another host was faster
                    return self.cache.get(self.key)
                raise

    def _assemble(self, meta: dict | None) -> CacheEntry:
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
        n_lead = int(np.prod(lead_shape, dtype=np.int64))
        tmp = self.cache._tmp_dir(self.key)
        try:
            try:
                out = _NpyWriter(tmp / "features.npy", (*lead_shape, total, dim))
                labels = np.empty(total, dtype=np.int64)
                indices = np.empty(total, dtype=np.int64)
                pos = 0
                try:
                    for i, c in enumerate(counts):
                        with np.load(self._chunk_path(i)) as z:
                            feats = z["features"].reshape(n_lead, c, dim)
                            for v in range(n_lead):
                                out.write_rows(v * total + pos, feats[v])
                            labels[pos:pos + c] = z["labels"]
                            indices[pos:pos + c] = z["indices"]
                        pos += c
                except BaseException:
                    out.abort()
                    raise
                out.close()
                info = {"skipped": {"count": len(skipped), "ids": skipped}}
                info.update(meta or {})
                entry = self.cache._commit(self.key, tmp, labels, indices, info)
            except OSError as e:
                if isinstance(e, FileNotFoundError) and self.entry_complete():
                    raise
                raise write_error(e, f"assembling feature cache entry {self.key.entry_id}", tmp,
                                  f"All {self.n_chunks} finished chunks are kept in {self.chunks_dir}; a re-run "
                                  "only assembles them (nothing is recomputed).") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(self.dir, ignore_errors=True)
        return entry


def resolve_cache(cache) -> FeatureCache:
    """``cache`` as a :class:`FeatureCache`: one as it is, or a folder (None: the default folder)."""
    return cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
