"""Reduce: PCA fitted by streaming over cached features in blocks (the cache is never loaded whole).

Entry point:
    PCA(n_components=None, whiten=False, l2_normalize=False, method="covariance").fit(features).transform(features)

``features`` is any row-sliceable array (a float16 memory map from the cache works; its pages are released
after each block so the resident memory stays at one block). ``method="covariance"`` accumulates the mean
and the d×d scatter matrix block by block (float32 SYRK per block, float64 across blocks) and takes its top
eigenpairs: exact PCA in one pass, up to float32 rounding inside a block. ``method="incremental"`` is the
reference protocol (scikit-learn IncrementalPCA with batch max(4096, 2·dim)), kept for comparison.
"""
from __future__ import annotations

import mmap

import numpy as np
from scipy.linalg import blas, eigh
from tqdm.auto import tqdm

__all__ = ["PCA", "l2_normalize_rows", "release_pages"]


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


def _blocks(features, batch_size: int, desc: str, progress: bool, reuse: bool = True):
    """Yield ``(start, block)``: consecutive float32 row blocks of ``features``.

    With ``reuse`` every block is a view of one buffer (overwritten by the next block; callers may modify it
    in place), so streaming costs one block of memory and no allocation per block. Memmap pages are released
    after each block (see :func:`release_pages`).
    """
    n, d = features.shape
    buffer = np.empty((min(batch_size, n), d), dtype=np.float32) if reuse else None
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

    Attributes: ``mean_``, ``components_`` (n_components × dim), ``explained_variance_``, ``n_samples_``.
    """

    def __init__(self, n_components: int | None = None, whiten: bool = False, l2_normalize: bool = False,
                 method: str = "covariance", batch_size: int | None = None, progress: bool = True):
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
        projection = self.components_.T.astype(np.float32)  # dim × n_components
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
