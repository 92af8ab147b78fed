"""MMDC clustering heads on frozen (cached) features: match embeddings to points of a spherical Gaussian mixture.

Entry points:
    sample_targets(n, n_clusters, sigma, generator) -> (n, k) target points on the unit sphere
    mmdc_loss(embeddings, targets) -> (loss, assignment): mean squared distance after an optimal one-to-one match
    MMDC(n_clusters, ...).fit(features, augmented=None) -> .labels_, .probs_, .predict(X), .predict_proba(X)

Method: a head maps every feature vector to a unit-norm embedding in R^k. The target distribution is a k-component
Gaussian mixture with means at the one-hot vectors e_1..e_k and isotropic spread σ, projected onto the unit
sphere. Every training step draws as many fresh target points as the batch holds, matches embeddings to targets
one-to-one by the Hungarian algorithm on squared distances, and pulls each embedding towards its target. Since
the mixture is balanced and its components are well apart, the embeddings form k compact, equally sized groups
around the means, and the cluster of a sample is its nearest mean (the argmax of its embedding).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from tqdm.auto import tqdm

from .base import FitContext, HeadEstimator, majority_vote, vote_aligned
from .common import MultiHead, Rows, training_inputs
from .constraints import BOOLEAN, Interval, Options

__all__ = ["MMDC", "mmdc_loss", "sample_targets"]

# Lloyd iterations of the optional k-means refinement of the embeddings.
REFINE_ITER = 20


def sample_targets(n: int, n_clusters: int, sigma: float = 0.1,
                   generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """``n`` points (n, k) float32 of the balanced mixture of N(e_c, σ² I), c = 1..k, each L2-normalised."""
    if n < 1 or n_clusters < 2:
        raise ValueError(f"need n >= 1 and n_clusters >= 2, got n={n}, n_clusters={n_clusters}")
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    component = torch.randint(n_clusters, (n,), generator=generator, device=device)
    noise = torch.randn(n, n_clusters, generator=generator, device=device)
    points = F.one_hot(component, n_clusters).float() + sigma * noise
    return F.normalize(points, dim=-1)


def mmdc_loss(embeddings: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared distance of ``embeddings`` (..., B, k) to ``targets`` (B, k) under the best one-to-one match.

    The match minimises the summed squared distance (scipy ``linear_sum_assignment``, one per leading index,
    e.g. per head); the loss is differentiable in the embeddings with the match held fixed. Returns
    ``(loss (...), assignment (..., B) int64)``, where ``assignment[..., i]`` is the target matched to embedding i.
    """
    if embeddings.ndim < 2 or targets.ndim != 2 or embeddings.shape[-2:] != targets.shape:
        raise ValueError(f"embeddings (..., B, k) {tuple(embeddings.shape)} and targets (B, k) "
                         f"{tuple(targets.shape)} must agree in B and k")
    lead = embeddings.shape[:-2]
    flat = embeddings.reshape(-1, *targets.shape)
    e = flat.detach()
    # ||e||² + ||t||² − 2 e·t: one matmul instead of a (heads, B, B, k) difference tensor.
    cost = ((e * e).sum(-1, keepdim=True) + (targets * targets).sum(-1) - 2 * e @ targets.T).cpu().numpy()
    assignment = np.empty(cost.shape[:2], dtype=np.int64)
    for h in range(cost.shape[0]):
        rows, cols = linear_sum_assignment(cost[h])
        assignment[h, rows] = cols
    index = torch.from_numpy(assignment).to(targets.device)
    loss = ((flat - targets[index]) ** 2).sum(dim=-1).mean(dim=-1)
    return loss.reshape(lead), index.reshape(*lead, targets.shape[0])


class MMDC(HeadEstimator):
    """MMDC clustering heads on frozen features.

    Parameters
    ----------
    n_clusters : int
        Number of clusters k (≥ 2); also the embedding dimension.
    n_heads : int
        Heads (runs) trained together from different random initialisations; see ``ensemble``.
    head : {"linear", "mlp"}
        Linear map or Linear → ReLU → Linear (``hidden_dim`` units) to R^k, followed by L2 normalisation.
    hidden_dim : int
        Hidden width of the "mlp" head.
    sigma : float
        Isotropic standard deviation σ of every mixture component before projection to the sphere. Small σ asks
        for tight clusters; σ = 0 collapses each cluster onto its mean.
    epochs, batch_size : int
        Passes over the data and samples per step. Every batch is matched to as many fresh targets, so it must
        hold several samples per cluster: ``fit`` uses ``max(batch_size, 4 · n_clusters)`` (capped at n).
    lr, weight_decay : float
        Adam parameters.
    refine : bool
        After training, run spherical k-means (faiss, ``REFINE_ITER`` Lloyd iterations) on every head's training
        embeddings, initialised at the one-hot means (so cluster c stays cluster c), and use the refined centres
        instead of the means. Helps when the embeddings' groups settled off the exact means.
    ensemble : {"lowest_loss", "vote"}
        "lowest_loss": the head with the lowest MMDC loss on the whole training set (labels are never used).
        "vote": every head's clusters are aligned to that head's by Hungarian matching on their co-occurrence
        matrix, then each sample takes the majority cluster (ties to the lowest-loss head).
    temperature : float
        T of the soft assignment ``probs_ = softmax(cos(embedding, centre_c) / T)``; cosines lie in [-1, 1], so
        T = 0.1 makes a sample at its centre ~e^10 times more likely there than at an orthogonal one.
    augment : {"auto", "views", "features", "none"}
        Training inputs: a random cached augmented view ("views"), SCAN's feature-space augmentation
        (Gaussian noise of ``NOISE_STD`` scaled units + dimension dropout ``DROP_PROB``, "features"), or clean
        features ("none"); "auto" is "views" when ``augmented`` is passed to ``fit``, else "features".
    standardize : {"global", "dims"}
        Input scaling after centring: one root-mean-square spread for all dimensions ("global", keeps the
        relative scale of e.g. PCA components) or every dimension to unit variance ("dims", as SCAN).
    random_state : int
        Seeds initialisation, shuffling, targets, augmentation and refinement: same seed, same numbers.
    device : "auto" | str | torch.device
    verbose : bool

    Features are centred and scaled (``mean_``/``scale_``, see ``standardize``) before the heads.

    Attributes
    ----------
    labels_, probs_ : cluster of every training sample and its (n, k) soft assignment (for "vote", the
        average of the heads' aligned soft assignments).
    head_losses_ : (n_heads,) MMDC loss of every head on the training set; best_head_ : argmin of it.
    centers_ : (n_heads, k, k) unit cluster centres of every head (identity rows without ``refine``).
    alignments_ : (n_heads, k) permutation mapping every head's cluster ids to the best head's (identity for
        the best head).
    heads_ : all heads (MultiHead); cluster_sizes_, degenerate_ as in SCAN.
    """

    _MODULES = ("heads_",)
    _ARRAYS = HeadEstimator._ARRAYS + ("head_losses_", "centers_", "alignments_")
    _SCALARS = HeadEstimator._SCALARS + ("best_head_",)

    def __init__(self, n_clusters: int, n_heads: int = 5, head: str = "linear", hidden_dim: int = 512,
                 sigma: float = 0.1, epochs: int = 50, batch_size: int = 256, lr: float = 1e-2,
                 weight_decay: float = 1e-4, refine: bool = False, ensemble: str = "lowest_loss",
                 temperature: float = 0.1, augment: str = "auto", standardize: str = "global",
                 random_state: int = 0, device="auto", verbose: bool = True):
        self.n_clusters = n_clusters
        self.n_heads = n_heads
        self.head = head
        self.hidden_dim = hidden_dim
        self.sigma = sigma
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.refine = refine
        self.ensemble = ensemble
        self.temperature = temperature
        self.augment = augment
        self.standardize = standardize
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    _parameter_constraints = {
        **HeadEstimator._parameter_constraints,
        "n_heads": [Interval("int", 1)],
        "head": [Options("linear", "mlp")],
        "hidden_dim": [Interval("int", 1)],
        "sigma": [Interval("real", 0)],
        "epochs": [Interval("int", 1)],
        "lr": [Interval("real", 0, closed="neither")],
        "weight_decay": [Interval("real", 0)],
        "refine": [BOOLEAN],
        "ensemble": [Options("lowest_loss", "vote")],
        "temperature": [Interval("real", 0, closed="neither")],
        "augment": [Options("auto", "views", "features", "none")],
    }

    def _work(self, batch: int) -> int:
        k, d = int(self.n_clusters), int(self.n_features_in_)
        per_row = d * k if self.head == "linear" else d * int(self.hidden_dim) + int(self.hidden_dim) * k
        return int(self.n_heads) * batch * per_row

    # ------------------------------------------------------------------ fit (steps of HeadEstimator.fit)
    def _build(self, ctx: FitContext) -> MultiHead:
        return MultiHead(self.n_features_in_, int(self.n_clusters), int(self.n_heads), self.head,
                         int(self.hidden_dim), generator=ctx.init).to(ctx.device)

    def _train(self, heads: MultiHead, ctx: FitContext) -> None:
        inputs = training_inputs(ctx.mode, ctx.rows, ctx.views, ctx.rng, ctx.noise)
        n, bs, rng, noise_gen = ctx.n, ctx.batch, ctx.rng, ctx.noise
        optimizer = torch.optim.Adam(heads.parameters(), lr=float(self.lr), weight_decay=float(self.weight_decay))
        device = next(heads.parameters()).device
        # Drop the short last batch: matching a few samples to a few targets is a poor sample of the mixture.
        n_batches = max(1, n // bs)
        heads.train()
        bar = tqdm(range(int(self.epochs)), desc=f"MMDC k={self.n_clusters}", unit="epoch",
                   disable=not self.verbose, leave=False)
        for _ in bar:
            order = rng.permutation(n)
            for b in range(n_batches):
                idx = order[b * bs:(b + 1) * bs]
                embeddings = F.normalize(heads(inputs(idx)), dim=-1)
                targets = sample_targets(idx.size, int(self.n_clusters), float(self.sigma), noise_gen, device)
                loss, _ = mmdc_loss(embeddings, targets)
                optimizer.zero_grad(set_to_none=True)
                # Heads share no parameters, so the gradient of the sum trains each on its own loss.
                loss.sum().backward()
                optimizer.step()
            bar.set_postfix(loss=f"{loss.min().item():.4f}")
        self.heads_ = heads

    def _final_assignment(self, ctx: FitContext) -> tuple[np.ndarray, np.ndarray | None]:
        k = int(self.n_clusters)
        embeddings = self._embed(ctx.rows)
        self.centers_ = self._refine(embeddings, ctx.seed) if self.refine else \
            np.broadcast_to(np.eye(k, dtype=np.float32), (int(self.n_heads), k, k)).copy()
        head_probs = self._head_probs(embeddings)
        head_labels = head_probs.argmax(axis=2)
        if self.ensemble == "vote":
            labels, self.alignments_ = majority_vote(head_labels, k, reference=self.best_head_)
        else:
            labels = None
            self.alignments_ = np.stack([np.arange(k)] * int(self.n_heads))
        return self._combine(head_probs), labels

    @torch.no_grad()
    def _full_loss(self, ctx: FitContext) -> np.ndarray:
        """MMDC loss of every head on the clean training set, batch by batch against the same fresh targets.

        One fixed shuffle and one fixed target draw serve all heads, so their losses differ only by the heads.
        """
        rows, bs, seed = ctx.rows, ctx.batch, ctx.seed
        self.heads_.eval()
        gen = torch.Generator(device=rows.device).manual_seed(seed + 2)
        order = np.random.default_rng(seed + 2).permutation(rows.n)
        total = np.zeros(self.heads_.n_heads)
        for start in tqdm(range(0, rows.n, bs), desc="score heads", disable=not self.verbose, leave=False):
            idx = order[start:start + bs]
            embeddings = F.normalize(self.heads_(rows.get(idx)), dim=-1)
            targets = sample_targets(idx.size, int(self.n_clusters), float(self.sigma), gen, rows.device)
            total += mmdc_loss(embeddings, targets)[0].double().cpu().numpy() * idx.size
        return total / rows.n

    @torch.no_grad()
    def _embed(self, rows: Rows, block: int = 65536) -> np.ndarray:
        """Unit embeddings (n_heads, n, k) float32 of all rows."""
        self.heads_.eval()
        out = np.empty((self.heads_.n_heads, rows.n, int(self.n_clusters)), dtype=np.float32)
        for start in range(0, rows.n, block):
            idx = np.arange(start, min(start + block, rows.n))
            out[:, idx] = F.normalize(self.heads_(rows.get(idx)), dim=-1).cpu().numpy()
        return out

    def _refine(self, embeddings: np.ndarray, seed: int) -> np.ndarray:
        """Spherical k-means centres (n_heads, k, k) of every head's embeddings, started at the one-hot means."""
        from ..cluster import import_faiss

        faiss = import_faiss()  # the one check that a single faiss distribution provides the module

        k = int(self.n_clusters)
        centers = np.empty((embeddings.shape[0], k, k), dtype=np.float32)
        for h, emb in enumerate(embeddings):
            km = faiss.Kmeans(k, k, niter=REFINE_ITER, spherical=True, seed=seed + 1, min_points_per_centroid=1,
                              max_points_per_centroid=max(256, emb.shape[0] // k + 1), verbose=False)
            km.train(np.ascontiguousarray(emb), init_centroids=np.eye(k, dtype=np.float32))
            centers[h] = km.centroids.reshape(k, k)
        if not np.all(np.isfinite(centers)):
            warnings.warn("k-means refinement produced non-finite centres; using the one-hot means",
                          RuntimeWarning, stacklevel=3)
            centers[:] = np.eye(k, dtype=np.float32)
        return centers / np.maximum(np.linalg.norm(centers, axis=2, keepdims=True), 1e-12)

    def _head_probs(self, embeddings: np.ndarray) -> np.ndarray:
        """Soft assignments (n_heads, n, k): softmax of cosine to every head's centres over the temperature."""
        cos = torch.from_numpy(np.einsum("hnd,hcd->hnc", embeddings, self.centers_))
        return F.softmax(cos / float(self.temperature), dim=-1).numpy()

    def _combine(self, head_probs: np.ndarray) -> np.ndarray:
        """The final (n, k) soft assignment: the best head's, or for "vote" the mean of the aligned heads'."""
        if self.ensemble == "lowest_loss":
            return head_probs[self.best_head_]
        aligned = np.empty_like(head_probs)
        for h, perm in enumerate(self.alignments_):
            aligned[h][:, perm] = head_probs[h]
        return aligned.mean(axis=0)

    # ------------------------------------------------------------------ predict
    def _proba_rows(self, rows: Rows) -> np.ndarray:
        with self._threads(rows.device, self._work(int(self.batch_size))):
            return self._combine(self._head_probs(self._embed(rows)))

    def predict(self, X) -> np.ndarray:
        """Cluster (int64) of every row of ``X``: the best head's nearest centre, or the aligned heads' vote."""
        if self.ensemble == "lowest_loss":
            return super().predict(X)
        rows = self._rows(X)
        with self._threads(rows.device, self._work(int(self.batch_size))):
            labels = self._head_probs(self._embed(rows)).argmax(axis=2)
        return vote_aligned(np.take_along_axis(self.alignments_, labels, axis=1), self.best_head_,
                            int(self.n_clusters))

    def _build_module(self, name: str, state: dict) -> torch.nn.Module:
        return MultiHead.from_state_dict(state, self.head)
