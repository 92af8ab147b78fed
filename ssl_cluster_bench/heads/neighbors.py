"""Nearest-neighbour mining for SCAN: cosine k-NN of every sample among the others, with faiss.

Entry points:
    mine_neighbors(features, n_neighbors=20) -> (n, K) int64 indices, most similar first, self excluded
    neighbor_purity(neighbors, labels) -> fraction of neighbours that share the anchor's label

``features`` is any row-sliceable (n, d) array (a float16 memory map from the cache works). Rows are
L2-normalised block by block into an exact inner-product index (``faiss.IndexFlatIP``, on GPU when faiss sees
one), which is then queried in blocks, so besides the index itself (n·d float32) memory stays bounded.
"""
from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

__all__ = ["mine_neighbors", "neighbor_purity"]

# faiss GPU flat indexes only return up to this many results per query.
_GPU_MAX_K = 2048


def _faiss_gpu_available() -> bool:
    from ..cluster import faiss_gpu_available

    return faiss_gpu_available()


def _normalized_block(features, start: int, stop: int) -> np.ndarray:
    block = np.array(features[start:stop], dtype=np.float32, order="C", copy=True)
    if not np.all(np.isfinite(block)):
        raise ValueError(f"features contain NaN or inf in rows {start}..{stop - 1}")
    norms = np.linalg.norm(block, axis=1, keepdims=True)
    # All-zero rows stay zero (similarity 0 to everything) instead of turning into NaN.
    block /= np.maximum(norms, 1e-12)
    return block


def _drop_self(ids: np.ndarray, query_ids: np.ndarray, n_neighbors: int) -> np.ndarray:
    """Remove each query's own index from its K+1 results (or the last result when self is absent).

    Self can be missing, or not first, when exact duplicates tie with it; removing by index rather than by
    position keeps a duplicate (a genuine neighbour) and never returns the anchor itself.
    """
    is_self = ids == query_ids[:, None]
    # Keep at most one self hit per row to drop (faiss never returns an id twice, but be strict).
    first_self = np.where(is_self.any(axis=1), is_self.argmax(axis=1), n_neighbors)
    keep = np.ones_like(is_self)
    keep[np.arange(ids.shape[0]), first_self] = False
    return ids[keep].reshape(ids.shape[0], n_neighbors)


def mine_neighbors(features, n_neighbors: int = 20, batch_size: int = 16384, gpu="auto",
                   verbose: bool = True) -> np.ndarray:
    """Indices of the ``n_neighbors`` most cosine-similar other samples of every row.

    Parameters
    ----------
    features : (n, d) array-like of floats (NumPy array or memory map)
    n_neighbors : int
        K, at least 1 and smaller than n.
    batch_size : int
        Rows normalised / queried per block; bounds the temporary memory (block·d floats + block·(K+1) ids).
    gpu : "auto" | bool
        "auto" uses a faiss GPU index when faiss sees a GPU, unless $SSCB_DEVICE (the CLI's --device) is cpu;
        True insists on one; False stays on CPU.
    verbose : bool
        tqdm bar over query rows.

    Returns an (n, K) int64 array, most similar first; row i never contains i.
    """
    from ..cluster import faiss_use_gpu, import_faiss

    faiss = import_faiss()
    if getattr(features, "ndim", None) != 2:
        raise ValueError(f"features must be a 2-D array (n_samples, dim), got shape {getattr(features, 'shape', None)}")
    n, d = features.shape
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors!r}")
    if n_neighbors >= n:
        raise ValueError(f"n_neighbors={n_neighbors} must be smaller than the number of samples ({n})")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if gpu not in ("auto", True, False):
        raise ValueError(f"gpu must be 'auto', True or False, got {gpu!r}")
    k_search = int(n_neighbors) + 1
    has_gpu = _faiss_gpu_available()
    if gpu is True and not has_gpu:
        raise RuntimeError("gpu=True but faiss sees no GPU (install faiss-gpu and check CUDA), or pass gpu='auto'")
    if gpu is True and k_search > _GPU_MAX_K:
        raise ValueError(f"n_neighbors={n_neighbors} exceeds what a faiss GPU index returns ({_GPU_MAX_K - 1}); "
                         "use gpu=False")
    use_gpu = k_search <= _GPU_MAX_K and (gpu is True or gpu == "auto" and faiss_use_gpu("auto", "neighbour mining"))

    index = faiss.IndexFlatIP(d)
    if use_gpu:
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
    bar = tqdm(total=2 * n, desc=f"kNN K={n_neighbors}", unit="row", disable=not verbose, leave=False)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        index.add(_normalized_block(features, start, stop))
        bar.update(stop - start)

    neighbors = np.empty((n, int(n_neighbors)), dtype=np.int64)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        _, ids = index.search(_normalized_block(features, start, stop), k_search)
        if np.any(ids < 0):
            raise RuntimeError(f"faiss returned fewer than {k_search} results for rows {start}..{stop - 1}")
        neighbors[start:stop] = _drop_self(ids, np.arange(start, stop), int(n_neighbors))
        bar.update(stop - start)
    bar.close()
    return neighbors


def neighbor_purity(neighbors, labels) -> float:
    """Fraction of (anchor, neighbour) pairs whose labels agree (a diagnostic; never used for training).

    ``neighbors`` is (n, K) indices into ``labels`` (n,). Anchors with a negative (unknown) label are skipped.
    """
    neighbors = np.asarray(neighbors)
    labels = np.asarray(labels)
    if neighbors.ndim != 2:
        raise ValueError(f"neighbors must be a 2-D (n_samples, n_neighbors) array, got shape {neighbors.shape}")
    if labels.ndim != 1 or labels.shape[0] != neighbors.shape[0]:
        raise ValueError(f"labels must be 1-D with one label per row of neighbors ({neighbors.shape[0]}), "
                         f"got shape {labels.shape}")
    if neighbors.dtype.kind not in "iu":
        raise ValueError(f"neighbors must hold integer indices, got dtype {neighbors.dtype}")
    if neighbors.size == 0:
        raise ValueError("neighbors is empty")
    if neighbors.min() < 0 or neighbors.max() >= labels.shape[0]:
        raise ValueError(f"neighbors holds indices outside 0..{labels.shape[0] - 1}")
    known = labels >= 0 if labels.dtype.kind in "iuf" else np.ones(labels.shape, dtype=bool)
    if not known.any():
        raise ValueError("labels has no known (non-negative) label")
    agree = labels[neighbors[known]] == labels[known][:, None]
    return float(agree.mean())
