"""Reduce: PCA fitted by streaming over cached features in blocks (the cache is never loaded whole).

Entry point:
    PCA(n_components=None, whiten=False, l2_normalize=False, method="covariance").fit(features).transform(features)

``features`` is any row-sliceable array (a float16 memory map from the cache works). ``method="covariance"``
accumulates the mean and the d×d scatter matrix in float64 block by block and takes its eigendecomposition:
exact PCA in one pass. ``method="incremental"`` is the reference protocol (scikit-learn IncrementalPCA with
batch max(4096, 2·dim)), kept for comparison.
"""
from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

__all__ = ["PCA", "l2_normalize_rows"]


def l2_normalize_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _blocks(features, batch_size: int, desc: str, progress: bool):
    n = features.shape[0]
    bar = tqdm(total=n, desc=desc, unit="row", disable=not progress or n <= batch_size, leave=False)
    for start in range(0, n, batch_size):
        block = np.asarray(features[start:start + batch_size], dtype=np.float32)
        if not np.all(np.isfinite(block)):
            raise ValueError(f"features contain NaN or inf in rows {start}..{start + block.shape[0] - 1}")
        bar.update(block.shape[0])
        yield start, block
    bar.close()


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
        Rows per block; default max(4096, 2·dim) for "incremental", 65536 for "covariance".

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
            from sklearn.decomposition import IncrementalPCA

            bs = self.batch_size or max(4096, 2 * d)
            ipca = IncrementalPCA(n_components=k, batch_size=bs)
            last = None
            for _, block in _blocks(features, bs, "PCA (incremental)", self.progress):
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
        else:
            bs = self.batch_size or 65536
            total = np.zeros(d, dtype=np.float64)
            scatter = np.zeros((d, d), dtype=np.float64)
            shift = None
            for _, block in _blocks(features, bs, "PCA (covariance)", self.progress):
                if shift is None:
                    # Accumulate around a provisional mean so the float64 sums do not lose precision.
                    shift = block.mean(axis=0, dtype=np.float64)
                b = block.astype(np.float64) - shift
                total += b.sum(axis=0)
                scatter += b.T @ b
            mean_shifted = total / n
            cov = (scatter - n * np.outer(mean_shifted, mean_shifted)) / max(n - 1, 1)
            eigval, eigvec = np.linalg.eigh(cov)
            order = np.argsort(eigval)[::-1][:k]
            comps = eigvec[:, order].T
            # Deterministic sign: largest-magnitude loading positive (as scikit-learn's svd_flip).
            signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
            signs[signs == 0] = 1.0
            self.mean_ = shift + mean_shifted
            self.components_ = comps * signs[:, None]
            self.explained_variance_ = np.maximum(eigval[order], 0.0)
        self.n_samples_ = n
        self.n_features_in_ = d
        return self

    def transform(self, features, batch_size: int = 65536) -> np.ndarray:
        """Project (and whiten / normalise) in blocks; returns a float32 array (n, n_components)."""
        if not hasattr(self, "components_"):
            raise RuntimeError("PCA is not fitted yet: call fit(features) first")
        if features.shape[1] != self.n_features_in_:
            raise ValueError(f"features have dim {features.shape[1]}, PCA was fitted on dim {self.n_features_in_}")
        proj = self.components_.astype(np.float32)
        mean = self.mean_.astype(np.float32)
        scale = None
        if self.whiten:
            scale = (1.0 / np.sqrt(np.maximum(self.explained_variance_, 1e-12))).astype(np.float32)
        out = np.empty((features.shape[0], proj.shape[0]), dtype=np.float32)
        for start, block in _blocks(features, batch_size, "PCA transform", self.progress):
            z = (block - mean) @ proj.T
            if scale is not None:
                z *= scale
            if self.l2_normalize:
                z = l2_normalize_rows(z)
            out[start:start + z.shape[0]] = z
        return out

    def fit_transform(self, features, y=None) -> np.ndarray:
        return self.fit(features).transform(features)
