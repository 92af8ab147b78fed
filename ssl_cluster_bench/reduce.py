"""Reduce: PCA fitted by streaming over cached features in blocks (the cache is never loaded whole), and the
registry of reducers a protocol chooses from.

Entry points:
    PCA(n_components=None, whiten=False, l2_normalize=False, method="covariance", standardize=False)
        .fit(features).transform(features)
    REDUCERS: name -> Reducer ("pca", "zscore+pca", "umap", "none")
    reduce_features(features, protocol, random_state=0, progress=True) -> float32 (n, dim')
    resolve_reducer_options(name, options) -> the reducer's options with their defaults filled in

``features`` is any row-sliceable array (a float16 memory map from the cache works; its pages are released
after each block so the resident memory stays at one block). ``method="covariance"`` accumulates the mean
and the d×d scatter matrix block by block (float32 SYRK per block, float64 across blocks) and takes its top
eigenpairs: exact PCA in one pass, up to float32 rounding inside a block. ``method="incremental"`` is the
reference protocol (scikit-learn IncrementalPCA with batch max(4096, 2·dim)), kept for comparison.
"""
from __future__ import annotations

import mmap
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
from scipy.linalg import blas, eigh
from tqdm.auto import tqdm

from .progress import stage_bar

__all__ = ["PCA", "REDUCERS", "Reducer", "l2_normalize_rows", "reduce_features", "reduction_progress",
           "release_pages", "resolve_reducer_options"]


def l2_normalize_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _file_mapping(features) -> mmap.mmap | None:
    """The read-only file mapping behind a numpy memmap (or a view of one), else None."""
    if not isinstance(features, np.memmap) or features.mode != "r":
        return None  # copy-on-write maps ("c") hold private changes that dropping pages would lose
    base = features
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    return base if isinstance(base, mmap.mmap) and hasattr(base, "madvise") else None


def release_pages(features, start: int, stop: int) -> None:
    """Unmap rows ``start:stop`` of a read-only memmap from this process (they stay in the OS page cache).

    Pages of a file mapping that were read count in the process's resident set until unmapped, so streaming
    a 5 GB cache entry through ``np.load(mmap_mode="r")`` would otherwise grow RSS by the whole file. Any
    other input is left alone; rows touched again are simply faulted back in.
    """
    mapping = _file_mapping(features)
    if mapping is None or stop <= start or features.strides[0] <= 0:
        return
    base_address = np.frombuffer(mapping, dtype=np.uint8).ctypes.data
    row_bytes = features.strides[0]
    first = features[start:start + 1].ctypes.data - base_address
    end = min(len(mapping), first + (stop - start) * row_bytes)
    first -= first % mmap.PAGESIZE
    if end > first:
        mapping.madvise(mmap.MADV_DONTNEED, first, end - first)


# The one bar of a reduction while it runs (reduction_progress): the PCA passes advance it by rows instead of
# showing bars of their own, so a run shows one bar for its reduction (fit and transform together).
_REDUCTION_BAR: ContextVar = ContextVar("reduction_bar", default=None)


@contextmanager
def reduction_progress(desc: str, total: int | None, unit: str = "row", progress: bool = True):
    """The one bar (:func:`ssl_cluster_bench.progress.stage_bar`) of a reduction: the block passes of every
    :class:`PCA` run inside the ``with`` advance it by their rows and show no bar of their own."""
    with stage_bar(desc, total, unit, progress=progress) as bar:
        token = _REDUCTION_BAR.set(bar)
        try:
            yield bar
        finally:
            _REDUCTION_BAR.reset(token)


def _blocks(features, batch_size: int, desc: str, progress: bool, reuse: bool = True):
    """Yield ``(start, block)``: consecutive float32 row blocks of ``features``.

    With ``reuse`` every block is a view of one buffer (overwritten by the next block; callers may modify it
    in place), so streaming costs one block of memory and no allocation per block. Memmap pages are released
    after each block (see :func:`release_pages`).
    """
    n, d = features.shape
    buffer = np.empty((min(batch_size, n), d), dtype=np.float32) if reuse else None
    stage = _REDUCTION_BAR.get()
    with tqdm(total=n, desc=desc, unit="row", disable=not progress or n <= batch_size, leave=False) as bar:
        for start in range(0, n, batch_size):
            stop = min(n, start + batch_size)
            rows = np.asarray(features[start:stop])
            if reuse:
                block = buffer[:stop - start]
                np.copyto(block, rows, casting="unsafe")
            else:
                block = np.array(rows, dtype=np.float32)
            del rows
            release_pages(features, start, stop)
            bar.update(stop - start)
            if stage is not None:
                stage.update(stop - start)
            yield start, block


def _raise_non_finite(start: int, stop: int) -> None:
    raise ValueError(f"features contain NaN or inf in rows {start}..{stop - 1}; clean or drop them before PCA")


class PCA:
    """Streaming PCA with optional whitening and L2 normalisation of the output.

    Parameters
    ----------
    n_components : int or None
        Output dimension; None keeps the input dimension (centering/whitening/normalisation still apply).
    whiten : bool
        Divide each component by the square root of its variance.
    l2_normalize : bool
        L2-normalise every output row (after projection and whitening).
    method : {"covariance", "incremental"}
        "covariance" is exact and one pass; "incremental" is scikit-learn's IncrementalPCA (reference).
    batch_size : int or None
        Rows per block; default max(4096, 2·dim) for "incremental", 16384 for "covariance".
    standardize : bool
        Z-score every input column first (PCA of the correlation matrix; columns of zero variance are left
        unscaled). Folded into the one streaming pass and into the projection: no standardised copy is made.

    Attributes: ``mean_``, ``components_`` (n_components × dim), ``explained_variance_``, ``n_samples_``.
    """

    def __init__(self, n_components: int | None = None, whiten: bool = False, l2_normalize: bool = False,
                 method: str = "covariance", batch_size: int | None = None, progress: bool = True,
                 standardize: bool = False):
        self.standardize = standardize
        self.n_components = n_components
        self.whiten = whiten
        self.l2_normalize = l2_normalize
        self.method = method
        self.batch_size = batch_size
        self.progress = progress

    def _check(self, features):
        if getattr(features, "ndim", None) != 2:
            raise ValueError(f"features must be a 2-D array (n_samples, dim), got shape {getattr(features, 'shape', None)}")
        n, d = features.shape
        if n == 0:
            raise ValueError("features are empty")
        if self.method not in ("covariance", "incremental"):
            raise ValueError(f"method must be 'covariance' or 'incremental', got {self.method!r}")
        if self.standardize and self.method != "covariance":
            raise ValueError("standardize=True needs method='covariance' (the correlation matrix is formed from it)")
        if self.n_components is not None and not (1 <= self.n_components <= min(n, d)):
            raise ValueError(f"n_components={self.n_components} must be between 1 and min(n_samples, dim)={min(n, d)}")
        return n, d

    def fit(self, features, y=None) -> "PCA":
        n, d = self._check(features)
        k = self.n_components or d
        if self.method == "incremental":
            self._fit_incremental(features, n, d, k)
        else:
            self._fit_covariance(features, n, d, k)
        self.n_samples_ = n
        self.n_features_in_ = d
        return self

    def _fit_incremental(self, features, n: int, d: int, k: int) -> None:
        from sklearn.decomposition import IncrementalPCA

        bs = self.batch_size or max(4096, 2 * d)
        ipca = IncrementalPCA(n_components=k, batch_size=bs)
        last = None
        for start, block in _blocks(features, bs, "PCA (incremental)", self.progress, reuse=False):
            if not np.all(np.isfinite(block)):
                _raise_non_finite(start, start + block.shape[0])
            if last is not None and block.shape[0] < k:
                # IncrementalPCA needs >= n_components rows per batch: fold a short tail into the last one.
                block = np.concatenate([last, block])
            elif last is not None:
                ipca.partial_fit(last)
            last = block
        ipca.partial_fit(last)
        self.mean_ = ipca.mean_.astype(np.float64)
        self.scale_ = np.ones(d)
        self.components_ = ipca.components_.astype(np.float64)
        self.explained_variance_ = ipca.explained_variance_.astype(np.float64)

    def _fit_covariance(self, features, n: int, d: int, k: int) -> None:
        # Each block's scatter is one float32 SYRK (half the flops of a GEMM, twice the speed of float64) over
        # at most `bs` rows of centred data; the block results are summed in float64, so the rounding error
        # does not grow with n. Measured at ImageNet size: 1e-8 relative eigenvalue error vs float64, while the
        # float16 rounding of cached features already moves them by 1e-5.
        bs = self.batch_size or 16384
        total = np.zeros(d, dtype=np.float64)
        scatter = np.zeros((d, d), dtype=np.float64)
        block_scatter = np.zeros((d, d), dtype=np.float32, order="F")
        shift = None
        for start, block in _blocks(features, bs, "PCA (covariance)", self.progress):
            if shift is None:
                # Centre on a provisional mean so float32 products do not cancel catastrophically.
                shift = block.mean(axis=0, dtype=np.float64).astype(np.float32)
            block -= shift
            column_sums = block.sum(axis=0, dtype=np.float64)
            if not np.all(np.isfinite(column_sums)):  # NaN/inf propagate into the float64 sums
                _raise_non_finite(start, start + block.shape[0])
            total += column_sums
            # block.T is a Fortran-ordered view, so BLAS reads the C-ordered block without a copy; the
            # upper triangle of the Fortran result is the lower triangle of its C-ordered transpose.
            blas.ssyrk(1.0, block.T, beta=0.0, c=block_scatter, trans=0, lower=0, overwrite_c=1)
            scatter += block_scatter.T
        scatter = np.tril(scatter) + np.tril(scatter, -1).T
        mean_shifted = total / n
        cov = (scatter - n * np.outer(mean_shifted, mean_shifted)) / max(n - 1, 1)
        self.scale_ = np.ones(d)
        if self.standardize:
            # z-scoring the columns turns the covariance into the correlation matrix; a constant column keeps
            # scale 1 (it is all zeros once centred), as scikit-learn's StandardScaler does
            std = np.sqrt(np.maximum(np.diag(cov), 0.0))
            self.scale_ = np.where(std > 0, std, 1.0)
            cov = cov / np.outer(self.scale_, self.scale_)
        # Only the top k eigenpairs are needed: LAPACK's subset solver skips the rest.
        eigval, eigvec = eigh(cov, subset_by_index=[d - k, d - 1])
        order = np.argsort(eigval)[::-1]
        comps = eigvec[:, order].T
        # Deterministic sign: largest-magnitude loading positive (as scikit-learn's svd_flip).
        signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
        signs[signs == 0] = 1.0
        self.mean_ = shift.astype(np.float64) + mean_shifted
        self.components_ = comps * signs[:, None]
        self.explained_variance_ = np.maximum(eigval[order], 0.0)

    def transform(self, features, batch_size: int = 16384) -> np.ndarray:
        """Project (and whiten / normalise) in blocks; returns a float32 array (n, n_components)."""
        if not hasattr(self, "components_"):
            raise RuntimeError("PCA is not fitted yet: call fit(features) first")
        if getattr(features, "ndim", None) != 2 or features.shape[1] != self.n_features_in_:
            raise ValueError(f"features must have shape (n_samples, {self.n_features_in_}) as at fit time, "
                             f"got {getattr(features, 'shape', None)}")
        # dim × n_components; the z-scoring divides input column j by scale_[j]: folded into row j
        projection = (self.components_.T / self.scale_[:, None]).astype(np.float32)
        if self.whiten:
            # Whitening folded into the projection: one GEMM per block instead of GEMM + scaling.
            projection /= np.sqrt(np.maximum(self.explained_variance_, 1e-12)).astype(np.float32)
        projection = np.ascontiguousarray(projection)
        mean = self.mean_.astype(np.float32)
        out = np.empty((features.shape[0], projection.shape[1]), dtype=np.float32)
        for start, block in _blocks(features, batch_size, "PCA transform", self.progress):
            z = out[start:start + block.shape[0]]
            block -= mean
            np.matmul(block, projection, out=z)
            # Any NaN/inf in a row reaches its projection (x·0 is NaN for infinite x): check the small output.
            if not np.all(np.isfinite(z)):
                _raise_non_finite(start, start + block.shape[0])
            if self.l2_normalize:
                z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        return out

    def fit_transform(self, features, y=None) -> np.ndarray:
        return self.fit(features).transform(features)


# --- the reducers a protocol chooses from ---------------------------------------------------------------------
@dataclass(frozen=True)
class Reducer:
    """One entry of :data:`REDUCERS`: how ``reduce_features`` turns features into the space methods cluster.

    ``options``: the reducer's own settings with their defaults (the protocol's ``reduce_options`` may set
    them); ``uses_pca``: whether the protocol's pca_dim / whiten apply; ``seeded``: whether the result depends on
    the seed (each seed of a run then gets its own reduction, at that many times the cost).
    """

    name: str
    fit_transform: Callable[..., np.ndarray]
    options: Mapping[str, Any] = field(default_factory=dict)
    uses_pca: bool = False
    seeded: bool = False
    description: str = ""


def _pca_dim(protocol, n: int, dim: int) -> int | None:
    # PCA cannot give more components than samples or dims; at the input dim it is only a rotation
    return None if protocol.pca_dim is None or protocol.pca_dim >= dim else int(min(protocol.pca_dim, n))


def _pca(features, protocol, options, random_state, progress, standardize=False):
    n, dim = features.shape
    return PCA(_pca_dim(protocol, n, dim), whiten=protocol.whiten, l2_normalize=protocol.l2_normalize,
               standardize=standardize, progress=progress).fit_transform(features)


def _zscore_pca(features, protocol, options, random_state, progress):
    return _pca(features, protocol, options, random_state, progress, standardize=True)


def _none(features, protocol, options, random_state, progress):
    return np.asarray(features, dtype=np.float32)


def _umap(features, protocol, options, random_state, progress):
    import umap  # checked where the protocol was made (resolve_reducer_options)

    x = np.asarray(features, dtype=np.float32)
    n, dim = x.shape
    # UMAP's spectral initialisation needs more samples than components; a space smaller than asked is kept as is
    n_components = int(min(options["n_components"], dim, max(1, n - 2)))
    model = umap.UMAP(n_components=n_components, n_neighbors=int(min(options["n_neighbors"], n - 1)),
                      min_dist=float(options["min_dist"]), metric=options["metric"], random_state=random_state,
                      verbose=False)
    with warnings.catch_warnings():
        # "n_jobs overridden by setting random_state": known and documented (one thread per seeded fit)
        warnings.filterwarnings("ignore", message=".*overridden to 1 by setting random_state.*")
        return np.ascontiguousarray(model.fit_transform(x), dtype=np.float32)


#: name -> Reducer. UMAP's defaults are Lowe et al.'s (2024): 50 dimensions, 30 neighbours, min_dist 0.
REDUCERS: dict[str, Reducer] = {r.name: r for r in (
    Reducer("pca", _pca, uses_pca=True, description="streaming PCA to pca_dim (optionally whitened)"),
    Reducer("zscore+pca", _zscore_pca, uses_pca=True,
            description="every feature z-scored, then PCA to pca_dim (Lowe et al.'s PCA)"),
    Reducer("umap", _umap, options={"n_components": 50, "n_neighbors": 30, "min_dist": 0.0, "metric": "euclidean"},
            seeded=True, description="UMAP (umap-learn) seeded by the row's seed; one fit per seed, single-threaded "
                                     "when seeded (minutes per seed at 10^4-10^5 samples on CPU)"),
    Reducer("none", _none, description="the features as cached"),
)}
_UMAP_METRICS = ("euclidean", "cosine", "manhattan", "correlation", "chebyshev", "minkowski")


def resolve_reducer_options(name, options) -> dict:
    """``options`` of reducer ``name`` checked (unknown keys, types, ranges) and completed with its defaults."""
    from .errors import did_you_mean

    if name not in REDUCERS:
        raise ValueError(f"reduce must be one of {', '.join(REDUCERS)}, got {name!r}{did_you_mean(name, REDUCERS)}")
    if not isinstance(options, Mapping):
        raise ValueError(f"reduce_options must map option names to values, got {type(options).__name__}")
    known = REDUCERS[name].options
    for key, value in options.items():
        if key not in known:
            takes = f"takes: {', '.join(known)}" if known else "takes no options (pca_dim and whiten set the PCA)"
            raise ValueError(f"reduce_options: unknown option {key!r} for reduce {name}{did_you_mean(key, known)}; "
                             f"{name} {takes}")
    out = {**known, **options}
    if name == "umap":
        import importlib.util

        if importlib.util.find_spec("umap") is None:  # refused where the protocol is read, before any extraction
            raise ValueError("reduce umap needs the umap-learn package, which is not installed: pip install "
                             "'ssl_cluster_bench[peer]' (or pip install umap-learn), or choose another reducer")
        for key, low in (("n_components", 1), ("n_neighbors", 2)):
            v = out[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"reduce_options.{key} must be an integer >= {low}, got {v!r}")
        v = out["min_dist"]
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1:
            raise ValueError(f"reduce_options.min_dist must be a number in [0, 1], got {v!r}")
        out["min_dist"] = float(v)
        if out["metric"] not in _UMAP_METRICS:
            raise ValueError(f"reduce_options.metric must be one of {', '.join(_UMAP_METRICS)}, got "
                             f"{out['metric']!r}{did_you_mean(out['metric'], _UMAP_METRICS)}")
    return out


def reduce_features(features, protocol, random_state: int = 0, progress: bool = True) -> np.ndarray:
    """The space the methods of ``protocol`` cluster: its reducer on ``features``, then the optional L2
    normalisation of every row (float32, n × dim'). ``random_state`` matters only for seeded reducers (umap).
    ``progress``: one bar for the whole reduction (a PCA's fit and transform passes over the rows; none for
    ``reduce: none``, which computes nothing)."""
    reducer = REDUCERS[protocol.reduce]
    desc = f"reduce {protocol.reduce}" + (f" (seed {int(random_state)})" if reducer.seeded else "")
    # a PCA reads the rows twice (fit, then transform); other reducers are one opaque fit
    total, unit = (2 * int(features.shape[0]), "row") if reducer.uses_pca else (1, "fit")
    with reduction_progress(desc, total, unit, progress=progress and protocol.reduce != "none") as bar:
        z = reducer.fit_transform(features, protocol, protocol.reduce_options, int(random_state), False)
        if not reducer.uses_pca:
            bar.update(1)
    if protocol.l2_normalize and not reducer.uses_pca:  # PCA normalises its output itself, block by block
        z = l2_normalize_rows(z).astype(np.float32)
    return z
