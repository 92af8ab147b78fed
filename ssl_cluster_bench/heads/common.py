"""Pieces every clustering head shares: input checks, feature rows on the device, multi-head layers, threads.

Entry points:
    Rows(array, mean, scale, device): standardised rows of a feature matrix (n, d) or views (V, n, d), gathered
        batch by batch (resident on the device when small, read from a memory map when not)
    MultiHead(in_dim, n_clusters, n_heads, head): many independent linear / MLP heads in one batched matmul
    training_inputs(mode, rows, views, rng, noise_gen) -> idx -> inputs of a training step (views / augmentation)
    check_features(X, ...) -> (X, mean, std); check_augmented(...); check_neighbors(...); resolve_device(device)
    cluster_usage(labels, k) -> (sizes, used, largest share, degenerate?)
    torch_threads(n): context capping torch's CPU threads; SINGLE_THREAD_WORK: the size below which heads use one
    softmax(logits): softmax over clusters (fast path for CPU); is_int / is_real: hyper-parameter type checks

Used by SCAN, MMDC, TwoStageUC, TEMI and TURTLE (``heads/base.py`` builds the estimator base on top of them).
"""
from __future__ import annotations

import math
import numbers
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .selflabel import augment_features

__all__ = ["DROP_PROB", "DEGENERATE_MAX_FRACTION", "EPS", "NOISE_STD", "RESIDENT_BYTES", "SINGLE_THREAD_WORK",
           "DegenerateClusteringWarning", "MultiHead", "Rows", "block_rows", "check_augmented", "check_features",
           "check_neighbors", "cluster_usage", "is_int", "is_real", "random_view", "resolve_device", "softmax",
           "torch_threads", "training_inputs"]

# Keeps log() finite when a probability underflows to 0.
EPS = 1e-8
# Feature-space augmentation strength (see selflabel.augment_features): noise as a fraction of each
# dimension's standard deviation, and the probability of zeroing a dimension.
NOISE_STD = 0.2
DROP_PROB = 0.1
# A clustering is flagged degenerate when one cluster holds more than this share of the samples.
DEGENERATE_MAX_FRACTION = 0.9
# Features are copied to the device once when their float32 size is below this; larger inputs (e.g. an
# ImageNet memory map) stay where they are and are gathered batch by batch.
RESIDENT_BYTES = 2 << 30
# On CPU, heads whose per-step work (multiply-adds of all heads on one batch) is below this train on one
# thread: on a busy 2-core machine torch's thread pool made a digits fit 15x slower with linear heads (60 s
# instead of 4 s) and 3x slower with MLP heads (0.2 G multiply-adds per step), waiting on a core another
# process held; ImageNet-sized heads (10 x 2048 x 1000 per row) keep every thread.
SINGLE_THREAD_WORK = 1 << 28


@contextmanager
def torch_threads(n_threads: int | None):
    """Temporarily cap torch's intra-op threads (None: leave them alone)."""
    previous = torch.get_num_threads()
    if n_threads is None or n_threads >= previous:
        yield
        return
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension (clusters)."""
    if logits.device.type == "cpu":
        # torch's CPU softmax over a short contiguous last dimension is several times slower than the same
        # softmax over a strided one (0.9 ms vs 0.14 ms with backward for 10 heads × 256 rows × 10 clusters).
        return F.softmax(logits.transpose(-1, -2), dim=-2).transpose(-1, -2)
    return F.softmax(logits, dim=-1)


def random_view(views: "Rows", idx: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """One randomly chosen cached augmented view of each row in ``idx``."""
    return views.get(idx, rng.integers(views.array.shape[0], size=idx.shape[0]))


def training_inputs(mode: str, rows: "Rows", views: "Rows | None", rng: np.random.Generator,
                    noise_gen: torch.Generator):
    """``idx -> inputs`` of a training step: a random cached view ("views"), the feature-space augmentation
    of the rows ("features"), or the rows themselves ("none")."""
    def inputs(idx: np.ndarray) -> torch.Tensor:
        if mode == "views":
            return random_view(views, idx, rng)
        if mode == "features":
            return augment_features(rows.get(idx), NOISE_STD, DROP_PROB, noise_gen)
        return rows.get(idx)
    return inputs


def cluster_usage(labels: np.ndarray, n_clusters: int) -> tuple[np.ndarray, int, float, bool]:
    """(cluster sizes, clusters used, largest cluster's share, degenerate?) of a labelling.

    Degenerate: fewer than 2 clusters used, or one cluster holding more than DEGENERATE_MAX_FRACTION.
    """
    sizes = np.bincount(labels, minlength=n_clusters).astype(np.int64)
    used = int((sizes > 0).sum())
    largest = float(sizes.max() / max(1, labels.size))
    return sizes, used, largest, bool(used < 2 or largest > DEGENERATE_MAX_FRACTION)


class DegenerateClusteringWarning(UserWarning):
    """The chosen head collapsed: fewer than two clusters used, or one cluster holds most samples."""


class MultiHead(torch.nn.Module):
    """``n_heads`` independent clustering heads evaluated with one batched matmul per layer.

    torch has no layer for many independent linear maps of the same input; stacking their weights and using
    ``baddbmm`` evaluates all heads in one call per layer instead of a Python loop over heads.
    ``head="linear"`` is x W + b; ``head="mlp"`` is Linear → ReLU → Linear with ``hidden_dim`` units.
    Input (B, d), output (n_heads, B, k). Parameters: ``weights[i]`` (n_heads, fan_in, fan_out) and
    ``biases[i]`` (n_heads, 1, fan_out) per layer.
    """

    def __init__(self, in_dim: int, n_clusters: int, n_heads: int = 1, head: str = "linear",
                 hidden_dim: int = 512, generator: torch.Generator | None = None):
        super().__init__()
        if head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")
        self.head = head
        dims = [in_dim, n_clusters] if head == "linear" else [in_dim, hidden_dim, n_clusters]
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for fan_in, fan_out in zip(dims[:-1], dims[1:]):
            # Same initial distribution as torch.nn.Linear, drawn from our own generator for reproducibility.
            bound = 1.0 / math.sqrt(fan_in)
            w = torch.empty(n_heads, fan_in, fan_out).uniform_(-bound, bound, generator=generator)
            b = torch.empty(n_heads, 1, fan_out).uniform_(-bound, bound, generator=generator)
            self.weights.append(torch.nn.Parameter(w))
            self.biases.append(torch.nn.Parameter(b))

    @classmethod
    def from_state_dict(cls, state: dict, head: str) -> "MultiHead":
        """Rebuild a MultiHead of type ``head`` from its ``state_dict()`` (shapes are read from the tensors)."""
        n_layers = sum(key.startswith("weights.") for key in state)
        if n_layers != (1 if head == "linear" else 2):
            raise ValueError(f"state holds {n_layers} layer(s), which does not match head={head!r}")
        first, last = state["weights.0"], state[f"weights.{n_layers - 1}"]
        # A private generator: the throw-away initial values must not advance torch's global RNG.
        module = cls(first.shape[1], last.shape[-1], n_heads=first.shape[0], head=head,
                     hidden_dim=first.shape[-1] if head == "mlp" else 1, generator=torch.Generator())
        module.load_state_dict(state)
        return module

    @property
    def n_heads(self) -> int:
        return self.weights[0].shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(0).expand(self.n_heads, *x.shape)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)
            if i < len(self.weights) - 1:
                h = F.relu(h)
        return h

    def select(self, index: int) -> "MultiHead":
        """A one-head copy of head ``index`` (on the same device)."""
        state = {key: value.detach()[index:index + 1].clone() for key, value in self.state_dict().items()}
        return MultiHead.from_state_dict(state, self.head).to(self.weights[0].device)


class Rows:
    """Standardised rows of a feature matrix (n, d) or of cached views (V, n, d), gathered onto the device.

    Small inputs are standardised and copied to the device once; large ones (memory maps) are read per batch,
    with sorted indices so a memory map is read front to back.
    """

    def __init__(self, array, mean: torch.Tensor, scale: torch.Tensor, device: torch.device,
                 verbose: bool = False, desc: str = "load"):
        self.array = array
        self.mean = mean.to(device)
        self.scale = scale.to(device)
        self.device = device
        self.n = array.shape[-2]
        n_rows = int(np.prod(array.shape[:-1]))
        self.resident = None
        if n_rows * array.shape[-1] * 4 <= RESIDENT_BYTES:
            flat = array.reshape(n_rows, array.shape[-1]) if array.ndim == 3 else array
            block = block_rows(array.shape[-1])
            data = torch.empty(n_rows, array.shape[-1], dtype=torch.float32, device=device)
            for start in tqdm(range(0, n_rows, block), desc=desc, disable=not verbose or n_rows <= block,
                              leave=False):
                data[start:start + block] = self._standardize(np.asarray(flat[start:start + block]))
            self.resident = data.reshape(*array.shape[:-1], array.shape[-1])

    def _standardize(self, block: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(self.device)
        return (x - self.mean) / self.scale

    def get(self, idx: np.ndarray, view: np.ndarray | None = None) -> torch.Tensor:
        """Rows ``idx`` (of view ``view[i]`` for row i when the input has views), shape (len(idx), d)."""
        if self.resident is not None:
            t_idx = torch.from_numpy(idx).to(self.device)
            if view is None:
                return self.resident[t_idx]
            return self.resident[torch.from_numpy(view).to(self.device), t_idx]
        out = torch.empty(idx.shape[0], self.array.shape[-1], dtype=torch.float32, device=self.device)
        groups = [(None, np.arange(idx.shape[0]))] if view is None else \
            [(v, np.flatnonzero(view == v)) for v in np.unique(view)]
        for v, pos in groups:
            order = np.argsort(idx[pos], kind="stable")
            src = self.array if v is None else self.array[int(v)]
            block = np.asarray(src[idx[pos][order]])
            out[torch.from_numpy(pos[order]).to(self.device)] = self._standardize(block)
        return out


def block_rows(dim: int, elements: int = 1 << 24) -> int:
    """Rows per block so that a block of ``dim``-wide rows holds about ``elements`` numbers."""
    return max(1, elements // max(1, dim))


def is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)



def resolve_device(device) -> torch.device:
    """``"auto"`` -> $SSCB_DEVICE if set (the CLI's --device), else CUDA when torch sees it, else CPU; anything
    else must name an available torch device."""
    if isinstance(device, str) and device == "auto":
        from ..cluster import compute_device

        device = compute_device("auto")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} but torch sees no CUDA device; use device='auto' or 'cpu'")
    return resolved


def check_features(X, name: str = "features", verbose: bool = False, min_rows: int = 2, stats: bool = True):
    """Shape/finiteness check in blocks, without copying X (a memory map stays one).

    Returns ``(X, mean, std)`` (float64 per dimension; None when ``stats`` is False).
    """
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    elif not hasattr(X, "shape") or not hasattr(X, "dtype"):
        X = np.asarray(X)
    if len(X.shape) != 2:
        raise ValueError(f"{name} must be a 2-D array (n_samples, dim), got shape {tuple(X.shape)}")
    if X.shape[0] < min_rows or X.shape[1] < 1:
        raise ValueError(f"{name} needs at least {min_rows} sample(s) and 1 dimension, "
                         f"got shape {tuple(X.shape)}")
    if np.dtype(X.dtype).kind not in "fiu":
        raise ValueError(f"{name} must hold numbers, got dtype {X.dtype}")
    n, d = X.shape
    block = block_rows(d)
    count, mean, m2 = 0, np.zeros(d), np.zeros(d)
    for start in tqdm(range(0, n, block), desc=f"check {name}", disable=not verbose or n <= block,
                      leave=False):
        chunk = np.asarray(X[start:start + block], dtype=np.float64)
        if not np.all(np.isfinite(chunk)):
            bad = start + int(np.flatnonzero(~np.isfinite(chunk).all(axis=1))[0])
            raise ValueError(f"{name} contains NaN or inf values (first in row {bad})")
        if stats:
            # Merge block mean / sum of squared deviations (Chan et al.): numpy has no streaming
            # variance, and E[x²] − E[x]² loses precision when the mean dwarfs the spread.
            b_count, b_mean = chunk.shape[0], chunk.mean(axis=0)
            b_m2 = ((chunk - b_mean) ** 2).sum(axis=0)
            delta = b_mean - mean
            total = count + b_count
            mean = mean + delta * (b_count / total)
            m2 = m2 + b_m2 + delta ** 2 * (count * b_count / total)
            count = total
    if not stats:
        return X, None, None
    return X, mean, np.sqrt(m2 / n)


def check_augmented(augmented, n: int, d: int, verbose: bool = False):
    """Validate cached augmented views ``(V, n, d)`` of the same samples; returns them (memory maps stay)."""
    if not hasattr(augmented, "shape") or not hasattr(augmented, "dtype"):
        augmented = np.asarray(augmented)
    if len(augmented.shape) != 3 or augmented.shape[1:] != (n, d):
        raise ValueError(f"augmented must have shape (n_views, {n}, {d}) matching features, "
                         f"got {tuple(augmented.shape)}")
    if augmented.shape[0] < 1:
        raise ValueError("augmented holds no views (n_views = 0)")
    block = block_rows(d)
    for v in range(augmented.shape[0]):
        for start in tqdm(range(0, n, block), desc=f"check view {v}", disable=not verbose or n <= block,
                          leave=False):
            if not np.all(np.isfinite(np.asarray(augmented[v, start:start + block], dtype=np.float32))):
                raise ValueError(f"augmented view {v} contains NaN or inf values")
    return augmented


def check_neighbors(neighbors, n: int) -> np.ndarray:
    """Validate precomputed neighbour indices (n, K), K >= 1, all in 0..n-1; returns them as int64."""
    neighbors = np.asarray(neighbors)
    if neighbors.ndim != 2 or neighbors.shape[0] != n or neighbors.shape[1] < 1:
        raise ValueError(f"neighbors must have shape ({n}, K) with K >= 1, got {neighbors.shape}")
    if neighbors.dtype.kind not in "iu":
        raise ValueError(f"neighbors must hold integer indices, got dtype {neighbors.dtype}")
    if neighbors.min() < 0 or neighbors.max() >= n:
        raise ValueError(f"neighbors holds indices outside 0..{n - 1}")
    return neighbors.astype(np.int64, copy=False)
