"""SCAN clustering heads trained on frozen (cached) features; the backbone is never re-run.

Entry points:
    scan_loss(anchor_logits, neighbor_logits, entropy_weight) -> (total, consistency, entropy)
    SCAN(n_clusters, ...).fit(features, augmented=None) -> .labels_, .probs_, .predict(X), .predict_proba(X)

Method (Van Gansbeke et al., "SCAN: Learning to Classify Images without Labels", ECCV 2020), on features:
mine the K cosine nearest neighbours of every sample, train several clustering heads at once so that a sample
and a random one of its neighbours get the same confident prediction while the batch-mean prediction stays
spread over all clusters, keep the head with the lowest SCAN loss on the whole training set (labels are never
looked at), and optionally fine-tune it by self-labeling on its own confident predictions.
"""
from __future__ import annotations

import math
import numbers
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClusterMixin
from tqdm.auto import tqdm

from .neighbors import mine_neighbors
from .selflabel import (augment_features, balanced_class_weights, confident_targets, mix_with_neighbors,
                        self_label_loss)

__all__ = ["SCAN", "DegenerateClusteringWarning", "MultiHead", "scan_loss"]

# Keeps log() finite when a probability underflows to 0.
_EPS = 1e-8
# Feature-space augmentation strength (see selflabel.augment_features): noise as a fraction of each
# dimension's standard deviation, and the probability of zeroing a dimension.
NOISE_STD = 0.2
DROP_PROB = 0.1
# Self-labeling stops once the number of confident samples has not grown for this many epochs.
SELF_LABEL_PATIENCE = 5
# A clustering is flagged degenerate when one cluster holds more than this share of the samples.
DEGENERATE_MAX_FRACTION = 0.9
# Features are copied to the device once when their float32 size is below this; larger inputs (e.g. an
# ImageNet memory map) stay where they are and are gathered batch by batch.
_RESIDENT_BYTES = 2 << 30
# On CPU, heads whose per-step work (multiply-adds of all heads on one batch) is below this train on one
# thread: on a busy 2-core machine torch's thread pool made a digits fit 15x slower with linear heads (60 s
# instead of 4 s) and 3x slower with MLP heads (0.2 G multiply-adds per step), waiting on a core another
# process held; ImageNet-sized heads (10 x 2048 x 1000 per row) keep every thread.
_SINGLE_THREAD_WORK = 1 << 28
_SAVE_FORMAT = "ssl_cluster_bench.heads.SCAN/1"


@contextmanager
def _torch_threads(n_threads: int | None):
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


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension (clusters)."""
    if logits.device.type == "cpu":
        # torch's CPU softmax over a short contiguous last dimension is several times slower than the same
        # softmax over a strided one (0.9 ms vs 0.14 ms with backward for 10 heads × 256 rows × 10 clusters).
        return F.softmax(logits.transpose(-1, -2), dim=-2).transpose(-1, -2)
    return F.softmax(logits, dim=-1)


def random_view(views: "_Rows", idx: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """One randomly chosen cached augmented view of each row in ``idx``."""
    return views.get(idx, rng.integers(views.array.shape[0], size=idx.shape[0]))


def training_inputs(mode: str, rows: "_Rows", views: "_Rows | None", rng: np.random.Generator,
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


def scan_loss(anchor_logits: torch.Tensor, neighbor_logits: torch.Tensor,
              entropy_weight: float = 5.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SCAN loss of a batch of (anchor, neighbour) logit pairs.

    ``anchor_logits`` and ``neighbor_logits`` have shape (..., B, k): any leading dimensions (e.g. one per
    head) are kept, so all heads are scored in one call. With p = softmax(logits) and p̄ the batch-mean anchor
    prediction:

    - consistency = −mean_b log⟨p(anchor_b), p(neighbour_b)⟩
    - entropy = H(p̄) = −Σ_c p̄_c log p̄_c  (returned unweighted, between 0 and log k)
    - total = consistency − entropy_weight · entropy  (= consistency + λ Σ_c p̄_c log p̄_c)

    so minimising ``total`` makes neighbours agree confidently while keeping the mean prediction spread.
    Returns three tensors of shape (...).
    """
    if anchor_logits.shape != neighbor_logits.shape:
        raise ValueError(f"anchor_logits {tuple(anchor_logits.shape)} and neighbor_logits "
                         f"{tuple(neighbor_logits.shape)} must have the same shape")
    if anchor_logits.ndim < 2:
        raise ValueError(f"logits must have shape (..., batch, n_clusters), got {tuple(anchor_logits.shape)}")
    p_anchor = _softmax(anchor_logits)
    p_neighbor = _softmax(neighbor_logits)
    similarity = (p_anchor * p_neighbor).sum(dim=-1)
    consistency = -torch.log(similarity.clamp_min(_EPS)).mean(dim=-1)
    mean_p = p_anchor.mean(dim=-2)
    entropy = -(mean_p * torch.log(mean_p.clamp_min(_EPS))).sum(dim=-1)
    return consistency - entropy_weight * entropy, consistency, entropy


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


class _Rows:
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
        if n_rows * array.shape[-1] * 4 <= _RESIDENT_BYTES:
            flat = array.reshape(n_rows, array.shape[-1]) if array.ndim == 3 else array
            block = _block_rows(array.shape[-1])
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


def _block_rows(dim: int, elements: int = 1 << 24) -> int:
    """Rows per block so that a block of ``dim``-wide rows holds about ``elements`` numbers."""
    return max(1, elements // max(1, dim))


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


class SCAN(ClusterMixin, BaseEstimator):
    """SCAN clustering heads (with optional self-labeling) on frozen features.

    Parameters
    ----------
    n_clusters : int
        Number of clusters k (≥ 2).
    n_heads : int
        Heads trained together from different random initialisations; the one with the lowest SCAN loss on
        the full training set is kept (SCAN's answer to a bad initialisation; labels are never used).
    head : {"linear", "mlp"}
        Linear map, or Linear → ReLU → Linear with ``hidden_dim`` units.
    hidden_dim : int
        Hidden width of the "mlp" head.
    n_neighbors : int
        K nearest neighbours (cosine) mined per sample; each step pairs an anchor with one of them at random.
    entropy_weight : float
        λ, weight of the entropy of the batch-mean prediction. The paper's λ = 5 also suits fixed features:
        on digits pixels (20 seeds) it gives mean ACC 0.869 against 0.862 for λ = 2 and 0.862 for λ = 8
        (smaller λ lets similar classes share a cluster, larger λ forces equal sizes). 0 disables the term,
        which lets heads collapse.
    epochs : int
        Passes over all anchors in the SCAN step (50 epochs: 0.857, 100: 0.869, 200: 0.872 on digits).
    batch_size : int
        Anchors per step. The entropy term is estimated on a batch, so it must hold several samples per
        cluster; ``fit`` uses ``max(batch_size, 4 · n_clusters)`` (capped at n).
    lr, weight_decay : float
        Adam parameters. The paper's lr = 1e-4 fine-tunes a whole backbone; a head on fixed features starts
        from scratch and needs far larger steps: on digits lr = 3e-3 reaches 0.855 in 100 epochs, 1e-2
        0.869 and 3e-2 0.870, so 1e-2 is the default. weight_decay = 1e-4 as in the paper.
    self_label : bool
        Run the self-labeling step after SCAN.
    confidence : float
        Self-labeling threshold on the top predicted probability (paper: 0.99).
    self_label_epochs : int
        Maximum self-labeling epochs; it stops earlier once the number of confident samples has not grown
        for ``SELF_LABEL_PATIENCE`` epochs.
    self_label_lr : float or None
        Adam learning rate of self-labeling; None means ``lr / 10``. Self-labeling fine-tunes a head SCAN
        already trained, and where the confident samples are a biased core its fixed point is worse than the
        SCAN head: on digits pixels a linear classifier refit on the confident samples scores 2-4 points
        below the SCAN head that produced them (SCAN also used the neighbours of unconfident samples), and
        self-labeling at the full lr drifts toward it (mean ACC −0.018 over 20 seeds). At lr / 10 it stays a
        refinement (−0.002, within seed noise); on features whose confident core is clean it can still move.
    augment : {"auto", "views", "features", "none"}
        Augmentation of the training inputs. "views": every anchor and neighbour (SCAN) and every confident
        sample (self-labeling) is replaced by one of the cached augmented views passed to ``fit``, drawn at
        random. "features": feature-space augmentation (no images needed): Gaussian noise of ``NOISE_STD``
        per-dimension standard deviations plus dimension dropout ``DROP_PROB`` in both steps, and in
        self-labeling the sample is first moved a random fraction of the way to one of its mined neighbours
        (see ``selflabel.mix_with_neighbors``). "auto": "views" when ``augmented`` is given, else "features".
        "none": clean features. On digits (20 seeds) "features" gives SCAN 0.869 against 0.866 with "none",
        and self-labeling −0.002 with neighbour mixing against −0.008 with noise alone.
    random_state : int
        Seeds head initialisation, neighbour sampling, shuffling and augmentation: same seed, same numbers.
    device : "auto" | str | torch.device
        "auto" is CUDA when available, else CPU.
    verbose : bool
        tqdm progress bars.

    Features are standardised per dimension (training mean and std, stored in ``mean_``/``scale_``) before
    the heads: features from different backbones differ in scale by orders of magnitude, standardising makes
    one learning rate fit all, and on digits it beats L2-normalised rows (ACC 0.876 vs 0.861). Neighbours are
    mined by cosine similarity on the features as given (digits: neighbour purity 0.937, against 0.895 on
    standardised features, whose rare border pixels get inflated).

    Attributes
    ----------
    labels_, probs_ : cluster of every training sample and its (n, k) soft assignment (final head).
    best_head_ : index of the head kept after the SCAN step.
    head_losses_ : (n_heads,) SCAN loss of every head on the full training set (with all K neighbours).
    neighbors_ : (n, K) mined neighbour indices.
    n_confident_ : list with the number of confident samples at every self-labeling epoch ([] without it).
    degenerate_ : True when the final clustering uses < 2 clusters or one cluster holds > 90 % of samples.
    cluster_sizes_ : (k,) number of training samples per cluster.
    heads_ : all heads after the SCAN step (MultiHead); head_ : the one-head model used for prediction.
    """

    def __init__(self, n_clusters: int, n_heads: int = 10, head: str = "linear", hidden_dim: int = 512,
                 n_neighbors: int = 20, entropy_weight: float = 5.0, epochs: int = 100, batch_size: int = 256,
                 lr: float = 1e-2, weight_decay: float = 1e-4, self_label: bool = False,
                 confidence: float = 0.99, self_label_epochs: int = 50, self_label_lr: float | None = None,
                 augment: str = "auto",
                 random_state: int = 0, device="auto", verbose: bool = True):
        self.n_clusters = n_clusters
        self.n_heads = n_heads
        self.head = head
        self.hidden_dim = hidden_dim
        self.n_neighbors = n_neighbors
        self.entropy_weight = entropy_weight
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.self_label = self_label
        self.confidence = confidence
        self.self_label_epochs = self_label_epochs
        self.self_label_lr = self_label_lr
        self.augment = augment
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # ------------------------------------------------------------------ validation
    def _check_params(self) -> None:
        positive_ints = {"n_heads": self.n_heads, "hidden_dim": self.hidden_dim, "n_neighbors": self.n_neighbors,
                         "epochs": self.epochs, "batch_size": self.batch_size,
                         "self_label_epochs": self.self_label_epochs}
        if not _is_int(self.n_clusters) or self.n_clusters < 2:
            raise ValueError(f"n_clusters must be an integer >= 2, got {self.n_clusters!r}")
        for name, value in positive_ints.items():
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.head not in ("linear", "mlp"):
            raise ValueError(f"head must be 'linear' or 'mlp', got {self.head!r}")
        for name in ("entropy_weight", "weight_decay"):
            value = getattr(self, name)
            if not _is_real(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("lr", "self_label_lr"):
            value = getattr(self, name)
            if (value is not None or name == "lr") and (not _is_real(value) or value <= 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not _is_real(self.confidence) or not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence!r}")
        if self.augment not in ("auto", "views", "features", "none"):
            raise ValueError(f"augment must be 'auto', 'views', 'features' or 'none', got {self.augment!r}")
        if not _is_int(self.random_state):
            raise ValueError(f"random_state must be an integer, got {self.random_state!r}")

    def _resolve_device(self) -> torch.device:
        if isinstance(self.device, str) and self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}") from e
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device={self.device!r} but torch sees no CUDA device; use device='auto' or 'cpu'")
        return device

    @staticmethod
    def _check_features(X, name: str = "features", verbose: bool = False, min_rows: int = 2,
                        stats: bool = True):
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
        block = _block_rows(d)
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

    def _check_augmented(self, augmented, n: int, d: int):
        if not hasattr(augmented, "shape") or not hasattr(augmented, "dtype"):
            augmented = np.asarray(augmented)
        if len(augmented.shape) != 3 or augmented.shape[1:] != (n, d):
            raise ValueError(f"augmented must have shape (n_views, {n}, {d}) matching features, "
                             f"got {tuple(augmented.shape)}")
        if augmented.shape[0] < 1:
            raise ValueError("augmented holds no views (n_views = 0)")
        block = _block_rows(d)
        for v in range(augmented.shape[0]):
            for start in tqdm(range(0, n, block), desc=f"check view {v}", disable=not self.verbose or n <= block,
                              leave=False):
                if not np.all(np.isfinite(np.asarray(augmented[v, start:start + block], dtype=np.float32))):
                    raise ValueError(f"augmented view {v} contains NaN or inf values")
        return augmented

    def _validate_fit(self, X, augmented) -> tuple:
        """Validate ``fit``'s inputs; returns ``(X, mean, std, augmented, mode, device)``.

        ``mode`` is the resolved ``self.augment``: "auto" becomes "views" when ``augmented`` is given, else
        "features". Shared with the other heads (see :class:`~ssl_cluster_bench.heads.base.HeadEstimator`).
        """
        self._check_params()
        X, mean, std = self._check_features(X, "features", verbose=self.verbose)
        n, d = X.shape
        if int(self.n_clusters) > n:
            raise ValueError(f"n_clusters={self.n_clusters} exceeds the number of samples ({n})")
        if augmented is not None:
            augmented = self._check_augmented(augmented, n, d)
        if self.augment == "views" and augmented is None:
            raise ValueError("augment='views' needs the cached views: pass augmented=(n_views, n, dim) to fit")
        mode = self.augment if self.augment != "auto" else ("views" if augmented is not None else "features")
        return X, mean, std, augmented, mode, self._resolve_device()

    def _check_neighbors(self, neighbors, n: int) -> np.ndarray:
        neighbors = np.asarray(neighbors)
        if neighbors.ndim != 2 or neighbors.shape[0] != n or neighbors.shape[1] < 1:
            raise ValueError(f"neighbors must have shape ({n}, K) with K >= 1, got {neighbors.shape}")
        if neighbors.dtype.kind not in "iu":
            raise ValueError(f"neighbors must hold integer indices, got dtype {neighbors.dtype}")
        if neighbors.min() < 0 or neighbors.max() >= n:
            raise ValueError(f"neighbors holds indices outside 0..{n - 1}")
        return neighbors.astype(np.int64, copy=False)

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, augmented=None, neighbors=None) -> "SCAN":
        """Train on features ``X`` (n, d) (array or memory map); ``y`` is ignored (unsupervised).

        ``augmented``: optional (V, n, d) cached augmented views of the same samples, same order.
        ``neighbors``: optional precomputed (n, K) neighbour indices (e.g. from :func:`mine_neighbors`, to
        reuse one mining across seeds); mined from ``X`` with ``n_neighbors`` when omitted.
        """
        X, mean, std, augmented, mode, device = self._validate_fit(X, augmented)
        n, d = X.shape
        k = int(self.n_clusters)
        if neighbors is None and self.n_neighbors >= n:
            raise ValueError(f"n_neighbors={self.n_neighbors} must be smaller than the number of samples ({n})")

        init_gen = torch.Generator().manual_seed(int(self.random_state))
        noise_gen = torch.Generator(device=device).manual_seed(int(self.random_state) + 1)
        rng = np.random.default_rng(int(self.random_state))

        if neighbors is None:
            self.neighbors_ = mine_neighbors(X, int(self.n_neighbors), verbose=self.verbose,
                                             gpu="auto" if device.type == "cuda" else False)
        else:
            self.neighbors_ = self._check_neighbors(neighbors, n)

        # Constant dimensions carry no information; dividing them by 1 keeps them at 0 instead of NaN.
        self.mean_ = mean.astype(np.float32)
        self.scale_ = np.where(std > 1e-12, std, 1.0).astype(np.float32)
        self.n_features_in_ = d
        t_mean, t_scale = torch.from_numpy(self.mean_), torch.from_numpy(self.scale_)
        rows = _Rows(X, t_mean, t_scale, device, verbose=self.verbose, desc="load features")
        views = _Rows(augmented, t_mean, t_scale, device, verbose=self.verbose, desc="load views") \
            if mode == "views" else None
        n_neighbors = self.neighbors_.shape[1]

        scan_inputs = training_inputs(mode, rows, views, rng, noise_gen)

        def self_label_inputs(idx: np.ndarray) -> torch.Tensor:
            if mode == "views":
                return random_view(views, idx, rng)
            if mode == "features":
                partners = self.neighbors_[idx, rng.integers(n_neighbors, size=idx.shape[0])]
                mixed = mix_with_neighbors(rows.get(idx), rows.get(partners), noise_gen)
                return augment_features(mixed, NOISE_STD, DROP_PROB, noise_gen)
            return rows.get(idx)

        heads = MultiHead(d, k, int(self.n_heads), self.head, int(self.hidden_dim), generator=init_gen).to(device)
        with _torch_threads(self._threads(device, d, self._effective_batch(n))):
            self._train_scan(heads, scan_inputs, n, rng)
            self.head_losses_ = self._full_scan_loss(heads, rows)
            self.best_head_ = int(np.argmin(self.head_losses_))
            self.heads_ = heads
            self.head_ = heads.select(self.best_head_)
            self.n_confident_ = []
            if self.self_label:
                self._train_self_label(self.head_, rows, self_label_inputs, rng)
            self.probs_ = self._predict_rows(self.head_, rows)
        self.labels_ = self.probs_.argmax(axis=1).astype(np.int64)
        self._check_degenerate()
        return self

    def _threads(self, device: torch.device, dim: int, batch: int) -> int | None:
        """1 for heads too small to gain from torch's CPU thread pool (see _SINGLE_THREAD_WORK), else None."""
        if device.type != "cpu":
            return None
        k, width = int(self.n_clusters), int(self.hidden_dim)
        per_row = dim * k if self.head == "linear" else dim * width + width * k
        return 1 if int(self.n_heads) * batch * per_row < _SINGLE_THREAD_WORK else None

    def _effective_batch(self, n: int) -> int:
        return int(min(n, max(int(self.batch_size), 4 * int(self.n_clusters))))

    def _train_scan(self, heads: MultiHead, inputs, n: int, rng: np.random.Generator) -> None:
        """SCAN step: every epoch, each anchor is paired with one of its K neighbours drawn at random."""
        optimizer = torch.optim.Adam(heads.parameters(), lr=float(self.lr), weight_decay=float(self.weight_decay))
        bs = self._effective_batch(n)
        n_neighbors = self.neighbors_.shape[1]
        # Drop the short last batch: its entropy estimate would be too noisy to step on.
        n_batches = max(1, n // bs)
        heads.train()
        bar = tqdm(range(int(self.epochs)), desc=f"SCAN k={self.n_clusters}", unit="epoch",
                   disable=not self.verbose, leave=False)
        for _ in bar:
            order = rng.permutation(n)
            for b in range(n_batches):
                anchors = order[b * bs:(b + 1) * bs]
                partners = self.neighbors_[anchors, rng.integers(n_neighbors, size=anchors.shape[0])]
                # One forward for anchors and partners together: half the kernel launches.
                logits = heads(inputs(np.concatenate([anchors, partners])))
                total, consistency, entropy = scan_loss(logits[:, :anchors.size], logits[:, anchors.size:],
                                                        float(self.entropy_weight))
                optimizer.zero_grad(set_to_none=True)
                # Heads share no parameters, so the gradient of the sum trains each on its own loss.
                total.sum().backward()
                optimizer.step()
            bar.set_postfix(loss=f"{total.min().item():.3f}", consistency=f"{consistency.min().item():.3f}")

    @torch.no_grad()
    def _full_scan_loss(self, heads: MultiHead, rows: _Rows) -> np.ndarray:
        """SCAN loss of every head over all anchors and all K neighbours (clean features, no augmentation)."""
        heads.eval()
        n, n_neighbors = self.neighbors_.shape
        k = int(self.n_clusters)
        # Keep the (heads × block × K × k) probability tensor around 32M floats.
        block = max(1, min(n, (1 << 25) // max(1, heads.n_heads * n_neighbors * k)))
        consistency = torch.zeros(heads.n_heads, dtype=torch.float64, device=rows.device)
        prob_sum = torch.zeros(heads.n_heads, k, dtype=torch.float64, device=rows.device)
        for start in tqdm(range(0, n, block), desc="score heads", disable=not self.verbose or n <= block,
                          leave=False):
            idx = np.arange(start, min(start + block, n))
            p_anchor = _softmax(heads(rows.get(idx)))
            partners = self.neighbors_[idx].reshape(-1)
            p_partner = _softmax(heads(rows.get(partners))).reshape(heads.n_heads, idx.size, n_neighbors, k)
            similarity = torch.einsum("hbc,hbjc->hbj", p_anchor, p_partner)
            consistency -= torch.log(similarity.clamp_min(_EPS)).sum(dim=(1, 2)).double()
            prob_sum += p_anchor.sum(dim=1).double()
        consistency /= n * n_neighbors
        mean_p = prob_sum / n
        entropy = -(mean_p * torch.log(mean_p.clamp_min(_EPS))).sum(dim=1)
        return (consistency - float(self.entropy_weight) * entropy).cpu().numpy()

    def _train_self_label(self, head: MultiHead, rows: _Rows, inputs, rng: np.random.Generator) -> None:
        """Self-labeling: class-balanced cross-entropy on augmented inputs towards confident predictions.

        Confident samples (top probability > ``confidence`` on clean features) are re-selected every epoch;
        training stops when their number has not grown for SELF_LABEL_PATIENCE epochs.
        """
        lr = float(self.self_label_lr) if self.self_label_lr is not None else float(self.lr) / 10.0
        optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=float(self.weight_decay))
        k = int(self.n_clusters)
        best, stale = -1, 0
        bar = tqdm(range(int(self.self_label_epochs)), desc=f"self-label k={k}", unit="epoch",
                   disable=not self.verbose, leave=False)
        for _ in bar:
            mask, cluster = self._confident(head, rows)
            confident = np.flatnonzero(mask)
            self.n_confident_.append(int(confident.size))
            bar.set_postfix(confident=confident.size)
            if confident.size == 0:
                warnings.warn(f"self-labeling found no sample with confidence > {self.confidence}; keeping the "
                              "SCAN head as it is (lower confidence or train SCAN longer)", RuntimeWarning,
                              stacklevel=3)
                break
            if confident.size > best:
                best, stale = confident.size, 0
            else:
                stale += 1
                if stale >= SELF_LABEL_PATIENCE:
                    break
            weights = balanced_class_weights(torch.from_numpy(cluster[confident]), k).to(rows.device)
            bs = min(confident.size, int(self.batch_size))
            order = confident[rng.permutation(confident.size)]
            head.train()
            # Whole batches only, as in the SCAN step.
            for start in range(0, confident.size - bs + 1, bs):
                idx = order[start:start + bs]
                logits = head(inputs(idx))[0]
                loss = self_label_loss(logits, torch.from_numpy(cluster[idx]).to(rows.device), weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

    # ------------------------------------------------------------------ predict
    def _row_blocks(self, rows: _Rows, desc: str):
        block = _block_rows(max(rows.array.shape[-1], int(self.n_clusters)), 1 << 22)
        for start in tqdm(range(0, rows.n, block), desc=desc, disable=not self.verbose or rows.n <= block,
                          leave=False):
            yield np.arange(start, min(start + block, rows.n))

    @torch.no_grad()
    def _predict_rows(self, head: MultiHead, rows: _Rows) -> np.ndarray:
        """(n, k) float32 probabilities of a one-head model on all rows, computed in blocks."""
        head.eval()
        out = np.empty((rows.n, int(head.weights[-1].shape[-1])), dtype=np.float32)
        for idx in self._row_blocks(rows, "predict"):
            out[idx[0]:idx[-1] + 1] = _softmax(head(rows.get(idx))[0]).cpu().numpy()
        return out

    @torch.no_grad()
    def _confident(self, head: MultiHead, rows: _Rows) -> tuple[np.ndarray, np.ndarray]:
        """Confidence mask and argmax cluster of every row (see ``confident_targets``), computed in blocks
        so the (n, k) probabilities are never held at once."""
        head.eval()
        mask = np.empty(rows.n, dtype=bool)
        targets = np.empty(rows.n, dtype=np.int64)
        for idx in self._row_blocks(rows, "confidence"):
            m, t = confident_targets(_softmax(head(rows.get(idx))[0]), float(self.confidence))
            mask[idx[0]:idx[-1] + 1] = m.cpu().numpy()
            targets[idx[0]:idx[-1] + 1] = t.cpu().numpy()
        return mask, targets

    def _check_fitted(self) -> None:
        if not hasattr(self, "head_"):
            raise RuntimeError("SCAN is not fitted yet: call fit(features) first (or SCAN.load(path))")

    def predict_proba(self, X, head: int | None = None) -> np.ndarray:
        """Soft cluster assignment (n, n_clusters) float32 of features ``X`` from the training feature space.

        ``head=None`` uses the final model (the chosen head, after self-labeling when enabled); ``head=i``
        uses SCAN head i as it was at the end of the SCAN step (e.g. to compare heads).
        """
        self._check_fitted()
        if head is None:
            model = self.head_
        elif _is_int(head) and 0 <= head < self.heads_.n_heads:
            model = self.heads_.select(int(head))
        else:
            raise ValueError(f"head must be None or an integer in 0..{self.heads_.n_heads - 1}, got {head!r}")
        X, _, _ = self._check_features(X, "X", min_rows=1, stats=False)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has dim {X.shape[1]}, the model was fitted on dim {self.n_features_in_}")
        device = next(self.head_.parameters()).device
        rows = _Rows(X, torch.from_numpy(self.mean_), torch.from_numpy(self.scale_), device)
        with _torch_threads(self._threads(device, self.n_features_in_, int(self.batch_size))):
            return self._predict_rows(model.to(device), rows)

    def predict(self, X, head: int | None = None) -> np.ndarray:
        """Most probable cluster (int64) of every row of ``X`` (``head`` as in :meth:`predict_proba`)."""
        return self.predict_proba(X, head=head).argmax(axis=1).astype(np.int64)

    def _check_degenerate(self) -> None:
        k = int(self.n_clusters)
        self.cluster_sizes_, used, largest, self.degenerate_ = cluster_usage(self.labels_, k)
        if self.degenerate_:
            warnings.warn(
                f"SCAN head {self.best_head_} is degenerate: it uses {used} of {k} clusters and its largest "
                f"cluster holds {largest:.1%} of the samples. Check that the features vary across samples, "
                f"raise entropy_weight (now {self.entropy_weight}) or lower lr.",
                DegenerateClusteringWarning, stacklevel=3)

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        """Write hyper-parameters and fitted state with ``torch.save`` (loadable with ``weights_only=True``).

        Saved: parameters, standardisation, all SCAN heads and the prediction head, head losses, best head,
        self-labeling history, cluster sizes, degenerate flag and training labels. Not saved: ``probs_`` and
        ``neighbors_`` (n × k and n × K arrays; recompute with ``predict_proba`` / :func:`mine_neighbors`).
        """
        self._check_fitted()
        params = self.get_params()
        params["device"] = str(params["device"])
        state = {
            "format": _SAVE_FORMAT,
            "params": params,
            "n_features_in": int(self.n_features_in_),
            "mean": torch.from_numpy(self.mean_),
            "scale": torch.from_numpy(self.scale_),
            "heads": {k: v.detach().cpu() for k, v in self.heads_.state_dict().items()},
            "head": {k: v.detach().cpu() for k, v in self.head_.state_dict().items()},
            "best_head": int(self.best_head_),
            "head_losses": torch.from_numpy(np.asarray(self.head_losses_, dtype=np.float64)),
            "n_confident": [int(c) for c in self.n_confident_],
            "degenerate": bool(self.degenerate_),
            "cluster_sizes": torch.from_numpy(self.cluster_sizes_),
            "labels": torch.from_numpy(self.labels_),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
        return path

    @classmethod
    def load(cls, path, device="auto") -> "SCAN":
        """A fitted SCAN from :meth:`save`; its heads are placed on ``device`` ("auto": CUDA if available)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no saved SCAN model at {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != _SAVE_FORMAT:
            raise ValueError(f"{path} is not a SCAN model saved by ssl_cluster_bench (format {_SAVE_FORMAT})")
        est = cls(**{**state["params"], "device": device})
        target = est._resolve_device()
        est.n_features_in_ = int(state["n_features_in"])
        est.mean_ = state["mean"].numpy()
        est.scale_ = state["scale"].numpy()
        for attr, key in (("heads_", "heads"), ("head_", "head")):
            setattr(est, attr, MultiHead.from_state_dict(state[key], est.head).to(target))
        est.best_head_ = int(state["best_head"])
        est.head_losses_ = state["head_losses"].numpy()
        est.n_confident_ = list(state["n_confident"])
        est.degenerate_ = bool(state["degenerate"])
        est.cluster_sizes_ = state["cluster_sizes"].numpy()
        est.labels_ = state["labels"].numpy()
        return est
