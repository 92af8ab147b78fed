"""Cluster: k-means with a faiss backend (CPU, or GPU when faiss sees one) and a scikit-learn reference backend.

Entry point:
    KMeans(n_clusters, backend="faiss", random_state=0).fit(X) -> .labels_, .cluster_centers_, .predict(X)

``backend="faiss"`` draws a training sample (``max_points_per_centroid`` rows per cluster, as faiss does),
seeds it with k-means++ (:func:`kmeans_plusplus`, batched so that it stays cheap at k = 1000 on 10^5 rows),
runs Lloyd iterations in faiss from those seeds, repeats this ``n_init`` times keeping the lowest training
inertia (no labels involved) and finally assigns every row in blocks. ``backend="sklearn"`` is the reference
protocol of the seed paper: MiniBatchKMeans fed by ``partial_fit`` for a number of epochs over shuffled
mini-batches.
"""
from __future__ import annotations

import functools
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

__all__ = ["DEVICE_ENV", "KMeans", "KMeansSettings", "compute_device", "faiss_gpu_available", "faiss_use_gpu",
           "import_faiss", "kmeans_plusplus"]

log = logging.getLogger(__name__)

# "cpu" or "cuda": where k-means, neighbour mining and the heads run when they are left at "auto" (the CLI's
# --device sets it for its command; a launched job sets it from the suite's --device)
DEVICE_ENV = "SSCB_DEVICE"
_FAISS_DISTRIBUTIONS = ("faiss-cpu", "faiss-gpu")
_said_cpu = []  # the CPU fall-back is logged once per process, not once per fit


@functools.lru_cache(maxsize=None)
def import_faiss():
    """The faiss module, after checking that one faiss distribution provides it.

    faiss-cpu and faiss-gpu both install the files of the `faiss` package: with both installed, whichever was
    installed last has overwritten the other's files, and uninstalling either one deletes them for both."""
    import importlib.metadata as md

    installed = []
    for dist in _FAISS_DISTRIBUTIONS:
        try:
            installed.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            pass
    if len(installed) > 1:
        raise RuntimeError(f"both {' and '.join(installed)} are installed; they share the `faiss` module and "
                           "overwrite each other's files: keep one — pip uninstall -y faiss-cpu faiss-gpu, then "
                           "pip install faiss-gpu (GPU machine) or faiss-cpu")
    try:
        import faiss
    except ImportError as e:
        raise RuntimeError(f"faiss cannot be imported ({e}): pip install 'ssl_cluster_bench[cpu]' (or [gpu] on a "
                           "machine with an NVIDIA GPU)") from None
    return faiss


def faiss_gpu_available() -> bool:
    """Whether the installed faiss is the GPU build and sees at least one GPU."""
    try:
        faiss = import_faiss()
    except RuntimeError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def compute_device(device: str | None = None) -> str:
    """"auto", "cpu" or "cuda" for the clustering stage: ``device`` when given and not "auto", else $SSCB_DEVICE."""
    if device in (None, "auto"):
        device = os.environ.get(DEVICE_ENV) or "auto"
    device = str(device)
    if device != "auto" and device.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}"
                         + (f" (from ${DEVICE_ENV})" if os.environ.get(DEVICE_ENV) == device else ""))
    return device


def faiss_use_gpu(gpu="auto", what: str = "k-means") -> bool:
    """Whether a faiss call runs on the GPU. ``gpu``: True insists, False refuses; "auto" follows
    :func:`compute_device`: "cpu" → no; "auto" → when faiss sees a GPU; "cuda" → when faiss sees a GPU, else
    the CPU with one log line (also when torch sees a GPU that the CPU build of faiss cannot use)."""
    if gpu is True or gpu is False:
        return gpu
    device = compute_device()
    if device == "cpu":
        return False
    if faiss_gpu_available():
        return True
    if device.startswith("cuda") or _torch_sees_gpu():
        if not _said_cpu:
            _said_cpu.append(True)
            log.warning("%s runs on the CPU: the installed faiss %s (pip install 'ssl_cluster_bench[gpu]' for "
                        "faiss-gpu on a GPU machine)", what,
                        "sees no GPU" if _faiss_is_gpu_build() else "is the CPU build (faiss-cpu)")
    return False


def _faiss_is_gpu_build() -> bool:
    try:
        return hasattr(import_faiss(), "StandardGpuResources")
    except RuntimeError:
        return False


def _torch_sees_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _as_float32(X, name: str = "X") -> np.ndarray:
    if getattr(X, "ndim", None) != 2:
        raise ValueError(f"{name} must be a 2-D array (n_samples, dim), got shape {getattr(X, 'shape', None)}")
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    # NaN/inf propagate into float64 column sums (finite float32 values cannot overflow them); this avoids an
    # n × d boolean temporary (330 MB at ImageNet size).
    if not np.all(np.isfinite(X.sum(axis=0, dtype=np.float64))):
        raise ValueError(f"{name} contains NaN or inf values")
    return X


@contextmanager
def _faiss_blas_blocks(query_rows: int = 16384):
    """Let faiss compute distances in larger query blocks (one GEMM per 16384 × 1024 tile, 64 MB).

    With faiss's default of 4096 query rows, assignment was 40% slower on a 2-core CPU (1000 centroids,
    d = 256: 1.2 s vs 0.85 s per 131k queries). The global setting is restored on exit.
    """
    faiss = import_faiss()

    previous = faiss.cvar.distance_compute_blas_query_bs
    faiss.cvar.distance_compute_blas_query_bs = max(previous, query_rows)
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_query_bs = previous


# Defaults, chosen by label-free measurements (inertia, seed-to-seed agreement, time) in
# benchmarks/kmeans_defaults.py; the numbers are in benchmarks/README.md.
DEFAULT_N_ITER = 20
DEFAULT_MAX_POINTS_PER_CENTROID = 256  # faiss's own default
DEFAULT_MAX_RESTARTS = 10
MIN_N_ITER = 10
MIN_POINTS_PER_CENTROID = 64
# Training budget of the automatic settings, in multiply-adds (sample rows × k × dim × Lloyd iterations,
# summed over restarts): 10 iterations on 64 points per centroid at k = 1000, d = 256. Small problems spend
# it on restarts (up to DEFAULT_MAX_RESTARTS); a problem whose single restart exceeds it trains with fewer
# iterations (down to MIN_N_ITER) and then a smaller sample (down to MIN_POINTS_PER_CENTROID per cluster).
# It is the most training that keeps the ImageNet-size pipeline >= 20x faster than the reference protocol.
TRAIN_BUDGET = 64 * 1000 * 1000 * 256 * 10
INITS = ("auto", "k-means++", "random")
# Below this many multiply-adds per pass over the training sample (rows × k × dim), faiss runs single-threaded.
SINGLE_THREAD_WORK = 5e7


def kmeans_plusplus(X: np.ndarray, n_clusters: int, random_state=0, growth: float = 0.25) -> np.ndarray:
    """k-means++ seeds (D² sampling) of ``X`` (n × d float32); returns the indices of the chosen rows.

    Exact k-means++ picks one seed at a time and updates every row's distance to its nearest seed after each
    pick: k passes over the data, which at k = 1000 costs far more than the clustering itself (scikit-learn's
    ``kmeans_plusplus`` takes 27 s on 20,000 rows). Here the seeds are drawn in rounds: each round draws
    ``max(1, floor(growth × seeds so far))`` rows without replacement with probability proportional to D²,
    then updates the distances with one BLAS search (faiss) against the new seeds. The first seeds (all of
    them while fewer than 1/growth are chosen, i.e. every seed for k <= 5 and most for k = 10-15) are exact
    k-means++; at k = 1000 there are ~40 rounds and the distance work is that of one Lloyd iteration.
    Written here because neither faiss nor scikit-learn offers a batched k-means++.
    """
    faiss = import_faiss()

    rng = np.random.default_rng(random_state)
    n = X.shape[0]
    k = int(n_clusters)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(n)
    d2 = np.full(n, np.inf, dtype=np.float64)
    n_chosen, new = 1, chosen[:1]
    while True:
        index = faiss.IndexFlatL2(X.shape[1])
        index.add(X[new])
        dist, _ = index.search(X, 1)
        np.minimum(d2, np.maximum(dist[:, 0], 0.0), out=d2)
        d2[new] = 0.0  # rounding in ||x||² + ||c||² - 2x·c can leave a chosen row a tiny weight
        if n_chosen == k:
            return chosen
        batch = min(k - n_chosen, max(1, int(growth * n_chosen)))
        total = d2.sum()
        if total > 0 and np.count_nonzero(d2) >= batch:
            # Weighted sampling without replacement (Efraimidis-Spirakis keys): the `batch` smallest
            # Exp(1)/weight keys are a draw of successive D² picks with the weights frozen for the round.
            with np.errstate(divide="ignore"):
                keys = rng.exponential(size=n) / d2
        else:  # fewer distinct rows left than seeds wanted: fill with unchosen rows uniformly
            keys = rng.random(n)
            keys[chosen[:n_chosen]] = np.inf
        new = np.argpartition(keys, batch - 1)[:batch] if batch < n else np.arange(n)
        chosen[n_chosen:n_chosen + batch] = new
        n_chosen += batch


@contextmanager
def _faiss_single_thread(enabled: bool):
    """Run faiss on one OpenMP thread (restored on exit) when every call is too small to share out.

    On small problems each faiss call takes milliseconds and OpenMP's fork/barrier overhead dominates; on a
    machine whose cores are busy, the barriers wait whole scheduler slices: 10 restarts at k = 20 on
    5,000 × 64 rows took 46 s with 2 threads and 3.2 s with 1 on the shared 2-core machine.
    """
    faiss = import_faiss()

    previous = faiss.omp_get_max_threads()
    if enabled:
        faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        if enabled:
            faiss.omp_set_num_threads(previous)


class KMeans:
    """k-means with interchangeable backends and one ``random_state``.

    Parameters
    ----------
    n_clusters : int
    backend : {"faiss", "sklearn"}
    n_init : int or "auto"
        Restarts; the one with the lowest inertia on the training sample is kept (no labels involved).
        "auto" (faiss): as many as fit in ``TRAIN_BUDGET`` (at most ``DEFAULT_MAX_RESTARTS``): 10 for
        digits, CIFAR or Fashion-MNIST sizes, 1 for k = 1000 on ImageNet-size data, where the spread over
        1000 clusters already averages out. "auto" with the sklearn backend is 1 (the reference protocol).
    init : {"auto", "k-means++", "random"}
        Seeding of each faiss restart: batched k-means++ (:func:`kmeans_plusplus`) or faiss's random rows.
        "auto": k-means++ when there are several restarts (small problems: on digits it gives the
        highest seed-to-seed agreement), random with a single restart (large k: on the 100- and 1000-class
        synthetic features k-means++ seeds ended with higher inertia, and they cost a pass over the sample).
    n_iter : int or None
        Lloyd iterations per restart (faiss, default ``DEFAULT_N_ITER``, lowered towards ``MIN_N_ITER`` when
        one restart exceeds ``TRAIN_BUDGET``) or epochs of ``partial_fit`` (sklearn, default 60 as in the
        reference protocol).
    batch_size : int or None
        Mini-batch size of the sklearn backend, default max(2048, 3·n_clusters) (k-means++ initialises on
        the first batch, which needs several points per cluster).
    max_points_per_centroid : int or None
        faiss trains on at most this many sampled rows per cluster (all rows are still assigned); default
        ``DEFAULT_MAX_POINTS_PER_CENTROID``, lowered towards ``MIN_POINTS_PER_CENTROID`` when one restart at
        ``MIN_N_ITER`` iterations still exceeds ``TRAIN_BUDGET``. Explicit values are used as given.
    gpu : "auto" | bool
        Use faiss on GPU when available ("auto") or insist on it (True).
    random_state : int

    Attributes: ``cluster_centers_`` (k × d float32), ``labels_`` (int64), ``inertia_`` (sum of squared
    distances of all rows to their centre), and what was actually run: ``n_iter_``, ``n_init_``,
    ``max_points_per_centroid_`` (None for sklearn), ``inits_`` (seeding of each restart),
    ``train_inertias_`` (training-sample inertia of each restart; NaN with one restart, nothing to compare).
    """

    def __init__(self, n_clusters: int, backend: str = "faiss", n_init="auto", init: str = "auto",
                 n_iter: int | None = None, batch_size: int | None = None,
                 max_points_per_centroid: int | None = None, gpu="auto", random_state: int = 0,
                 progress: bool = True):
        self.n_clusters = n_clusters
        self.backend = backend
        self.n_init = n_init
        self.init = init
        self.n_iter = n_iter
        self.batch_size = batch_size
        self.max_points_per_centroid = max_points_per_centroid
        self.gpu = gpu
        self.random_state = random_state
        self.progress = progress

    def _validate(self, X) -> np.ndarray:
        X = _as_float32(X)
        if not isinstance(self.n_clusters, (int, np.integer)) or self.n_clusters < 1:
            raise ValueError(f"n_clusters must be a positive integer, got {self.n_clusters!r}")
        if self.n_clusters > X.shape[0]:
            raise ValueError(f"n_clusters={self.n_clusters} is larger than the number of samples ({X.shape[0]})")
        if self.backend not in ("faiss", "sklearn"):
            raise ValueError(f"backend must be 'faiss' or 'sklearn', got {self.backend!r}")
        if not (self.n_init == "auto" or (isinstance(self.n_init, (int, np.integer)) and self.n_init >= 1)):
            raise ValueError(f"n_init must be a positive integer or 'auto', got {self.n_init!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        for name in ("n_iter", "max_points_per_centroid"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None (the default), got {value!r}")
        if self.gpu is True and not faiss_gpu_available():
            raise RuntimeError("gpu=True but faiss sees no GPU (install faiss-gpu and check CUDA)")
        return X

    def _plan(self, n: int, dim: int) -> tuple[int | None, int, int]:
        """(points per centroid, iterations, restarts) for n rows of ``dim`` (see ``TRAIN_BUDGET``)."""
        k = int(self.n_clusters)
        if self.backend == "sklearn":
            return None, self.n_iter or 60, 1 if self.n_init == "auto" else int(self.n_init)
        cap = self.max_points_per_centroid or DEFAULT_MAX_POINTS_PER_CENTROID
        n_iter = self.n_iter or DEFAULT_N_ITER
        per_iter = lambda cap: float(min(n, cap * k)) * k * dim  # noqa: E731
        if self.n_iter is None and per_iter(cap) * n_iter > TRAIN_BUDGET:
            n_iter = max(MIN_N_ITER, int(TRAIN_BUDGET // per_iter(cap)))
        if self.max_points_per_centroid is None and per_iter(cap) * n_iter > TRAIN_BUDGET:
            cap = max(MIN_POINTS_PER_CENTROID, int(TRAIN_BUDGET // (float(k) * k * dim * n_iter)))
        if self.n_init != "auto":
            return cap, n_iter, int(self.n_init)
        return cap, n_iter, int(max(1, min(DEFAULT_MAX_RESTARTS, TRAIN_BUDGET // (per_iter(cap) * n_iter))))

    def _inits(self, n_init: int) -> list[str]:
        if self.init != "auto":
            return [self.init] * n_init
        return ["k-means++" if n_init > 1 else "random"] * n_init

    def fit(self, X, y=None) -> "KMeans":
        X = self._validate(X)
        rng = np.random.default_rng(self.random_state)
        k = int(self.n_clusters)
        cap, n_iter, n_init = self._plan(X.shape[0], X.shape[1])
        if cap is not None and X.shape[0] > cap * k:  # sorted rows read the array front to back
            train = X[np.sort(rng.choice(X.shape[0], cap * k, replace=False))]
        else:
            train = X
        inits = self._inits(n_init) if self.backend == "faiss" else ["k-means++"] * n_init
        best, self.train_inertias_ = None, []
        small = float(train.shape[0]) * k * X.shape[1] < SINGLE_THREAD_WORK
        with _faiss_blas_blocks(), _faiss_single_thread(small):
            restarts = tqdm(total=n_init, desc=f"k-means k={k} restarts", unit="restart",
                            disable=not self.progress or n_init == 1, leave=False)
            for init, seed in zip(inits, rng.integers(2**31 - 1, size=n_init)):
                if self.backend == "faiss":
                    centers = self._fit_faiss(train, int(seed), n_iter, init)
                else:
                    centers = self._fit_sklearn(train, int(seed), n_iter)
                inertia = (float(_nearest(train, centers, self.gpu)[1].sum(dtype=np.float64))
                           if n_init > 1 else float("nan"))
                self.train_inertias_.append(inertia)
                if best is None or inertia < best[0]:
                    best = (inertia, centers)
                restarts.update(1)
            restarts.close()
            self.cluster_centers_ = best[1]
            self.labels_, dist = self._assign(X)
        self.n_iter_, self.n_init_, self.max_points_per_centroid_, self.inits_ = n_iter, n_init, cap, inits
        self.inertia_ = float(dist.sum(dtype=np.float64))
        return self

    def _fit_faiss(self, X: np.ndarray, seed: int, n_iter: int, init: str) -> np.ndarray:
        faiss = import_faiss()

        k = int(self.n_clusters)
        use_gpu = faiss_use_gpu(self.gpu)
        # X is already the training sample: faiss must not subsample it again
        km = faiss.Kmeans(X.shape[1], k, niter=n_iter, seed=seed % (2**31 - 1) + 1, gpu=use_gpu,
                          max_points_per_centroid=-(-X.shape[0] // k) + 1, min_points_per_centroid=1,
                          verbose=False)
        if init == "k-means++":
            km.train(X, init_centroids=X[kmeans_plusplus(X, k, random_state=seed)])
        else:
            km.train(X)
        return np.asarray(km.centroids, dtype=np.float32).reshape(k, -1)

    def _fit_sklearn(self, X: np.ndarray, seed: int, epochs: int) -> np.ndarray:
        from sklearn.cluster import MiniBatchKMeans

        bs = self.batch_size or max(2048, 3 * int(self.n_clusters))
        rng = np.random.default_rng(seed)
        mbk = MiniBatchKMeans(n_clusters=int(self.n_clusters), batch_size=bs, random_state=seed,
                              n_init=1, compute_labels=False)
        n = X.shape[0]
        for _ in tqdm(range(epochs), desc=f"MiniBatchKMeans k={self.n_clusters}", unit="epoch",
                      disable=not self.progress, leave=False):
            order = rng.permutation(n)
            for start in range(0, n, bs):
                batch = X[order[start:start + bs]]
                if not hasattr(mbk, "cluster_centers_") and batch.shape[0] < self.n_clusters:
                    batch = X[order[: max(bs, int(self.n_clusters))]]
                mbk.partial_fit(batch)
        return mbk.cluster_centers_.astype(np.float32)

    def _assign(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _nearest(X, self.cluster_centers_, self.gpu,
                        progress_desc=f"assign to {self.n_clusters} centres" if self.progress else None)

    def predict(self, X) -> np.ndarray:
        """Index of the nearest centre for every row (computed in blocks)."""
        if not hasattr(self, "cluster_centers_"):
            raise RuntimeError("KMeans is not fitted yet: call fit(X) first")
        X = _as_float32(X)
        if X.shape[1] != self.cluster_centers_.shape[1]:
            raise ValueError(f"X has dim {X.shape[1]}, the model was fitted on dim {self.cluster_centers_.shape[1]}")
        with _faiss_blas_blocks():
            return self._assign(X)[0]

    def fit_predict(self, X, y=None) -> np.ndarray:
        return self.fit(X).labels_


def _nearest(X: np.ndarray, centers: np.ndarray, gpu="auto", batch_size: int = 262144,
             progress_desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre (int64) and squared distance (float32) of every row, searched in blocks."""
    faiss = import_faiss()

    index = faiss.IndexFlatL2(centers.shape[1])
    if faiss_use_gpu(gpu):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(centers)
    n = X.shape[0]
    labels = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float32)
    with tqdm(total=n, desc=progress_desc, unit="row", leave=False,
              disable=progress_desc is None or n <= batch_size) as bar:
        for start in range(0, n, batch_size):
            d, i = index.search(X[start:start + batch_size], 1)
            labels[start:start + i.shape[0]] = i[:, 0]
            dist[start:start + d.shape[0]] = np.maximum(d[:, 0], 0.0)
            bar.update(i.shape[0])
    return labels, dist


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class KMeansSettings:
    """How k-means runs (see :class:`KMeans` for what each field does).

    ``n_init="auto"``, ``n_iter=None`` and ``max_points_per_centroid=None`` are the automatic settings of
    :class:`KMeans` (restarts and training sample sized by a fixed training budget);
    the rows record what they resolved to.
    """

    backend: str = "faiss"
    n_init: int | str = "auto"
    n_iter: int | None = None
    max_points_per_centroid: int | None = None

    def __post_init__(self):
        if self.backend not in ("faiss", "sklearn"):
            raise ValueError(f"kmeans backend must be 'faiss' or 'sklearn', got {self.backend!r}")
        if self.n_init != "auto" and (not _is_count(self.n_init) or self.n_init < 1):
            raise ValueError(f"kmeans n_init must be an integer >= 1 or 'auto', got {self.n_init!r}")
        for name in ("n_iter", "max_points_per_centroid"):
            value = getattr(self, name)
            if value is not None and (not _is_count(value) or value < 1):
                raise ValueError(f"kmeans {name} must be an integer >= 1 or None (automatic), got {value!r}")

    def make(self, n_clusters: int, random_state: int = 0, progress: bool = False):
        """The :class:`KMeans` estimator these settings describe."""
        return KMeans(n_clusters, backend=self.backend, n_init=self.n_init, n_iter=self.n_iter,
                      max_points_per_centroid=self.max_points_per_centroid, random_state=random_state,
                      progress=progress)

    def columns(self, fitted) -> dict:
        """Leaderboard columns saying how a fitted KMeans was made (the automatic settings as resolved)."""
        return {"backend": self.backend, "n_init": fitted.n_init_, "kmeans_iter": fitted.n_iter_,
                "max_points_per_centroid": fitted.max_points_per_centroid_}
