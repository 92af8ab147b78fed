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

import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from .base import FitContext, HeadEstimator
from .common import (DROP_PROB, EPS, NOISE_STD, DegenerateClusteringWarning, MultiHead, Rows, block_rows, is_int,
                     random_view, softmax, training_inputs)
from .constraints import BOOLEAN, Interval, Options
from .selflabel import (augment_features, balanced_class_weights, confident_targets, mix_with_neighbors,
                        self_label_loss)

__all__ = ["SCAN", "DegenerateClusteringWarning", "MultiHead", "scan_loss"]

# Self-labeling stops once the number of confident samples has not grown for this many epochs.
SELF_LABEL_PATIENCE = 5


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
    p_anchor = softmax(anchor_logits)
    p_neighbor = softmax(neighbor_logits)
    similarity = (p_anchor * p_neighbor).sum(dim=-1)
    consistency = -torch.log(similarity.clamp_min(EPS)).mean(dim=-1)
    mean_p = p_anchor.mean(dim=-2)
    entropy = -(mean_p * torch.log(mean_p.clamp_min(EPS))).sum(dim=-1)
    return consistency - entropy_weight * entropy, consistency, entropy



class SCAN(HeadEstimator):
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
    score_ : SCAN loss of the kept head on the full training set, ``head_losses_[best_head_]``: the method's own
        label-free criterion (lower is better).
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

    _MODULES = ("heads_", "head_")
    _ARRAYS = HeadEstimator._ARRAYS + ("head_losses_",)
    _SCALARS = HeadEstimator._SCALARS + ("best_head_", "score_", "n_confident_")
    # 2: the layout of HeadEstimator.save (SCAN/1 files had their own keys)
    _FORMAT_VERSION = 2

    _USES_NEIGHBORS = True
    _parameter_constraints = {
        **HeadEstimator._parameter_constraints,
        "n_heads": [Interval("int", 1)],
        "head": [Options("linear", "mlp")],
        "hidden_dim": [Interval("int", 1)],
        "n_neighbors": [Interval("int", 1)],
        "entropy_weight": [Interval("real", 0)],
        "epochs": [Interval("int", 1)],
        "lr": [Interval("real", 0, closed="neither")],
        "weight_decay": [Interval("real", 0)],
        "self_label": [BOOLEAN],
        "confidence": [Interval("real", 0, 1, closed="neither")],
        "self_label_epochs": [Interval("int", 1)],
        "self_label_lr": [Interval("real", 0, closed="neither"), None],
        "augment": [Options("auto", "views", "features", "none")],
    }

    def _scale_from_std(self, std: np.ndarray) -> np.ndarray:
        # Per-dimension standardisation; constant dimensions carry no information and are divided by 1, which
        # keeps them at 0 instead of NaN.
        return np.where(std > 1e-12, std, 1.0).astype(np.float32)

    def _degenerate_hint(self) -> str:
        return f"raise entropy_weight (now {self.entropy_weight}) or lower lr"

    # ------------------------------------------------------------------ fit (steps of HeadEstimator.fit)
    def _build(self, ctx: FitContext) -> MultiHead:
        return MultiHead(self.n_features_in_, int(self.n_clusters), int(self.n_heads), self.head,
                         int(self.hidden_dim), generator=ctx.init).to(ctx.device)

    def _full_loss(self, ctx: FitContext) -> np.ndarray:
        return self._full_scan_loss(self.heads_, ctx.rows)

    def _final_assignment(self, ctx: FitContext) -> tuple[np.ndarray, None]:
        """The kept head, fine-tuned by self-labeling when ``self_label``."""
        self.score_ = float(self.head_losses_[self.best_head_])
        self.head_ = self.heads_.select(self.best_head_)
        self.n_confident_ = []
        if self.self_label:
            self._train_self_label(self.head_, ctx.rows, self._self_label_inputs(ctx), ctx.rng)
        return self._predict_rows(self.head_, ctx.rows), None

    def _self_label_inputs(self, ctx: FitContext):
        """``idx -> inputs`` of a self-labeling step (see ``augment``)."""
        rows, views, mode, rng, noise_gen = ctx.rows, ctx.views, ctx.mode, ctx.rng, ctx.noise
        n_neighbors = self.neighbors_.shape[1]

        def inputs(idx: np.ndarray) -> torch.Tensor:
            if mode == "views":
                return random_view(views, idx, rng)
            if mode == "features":
                partners = self.neighbors_[idx, rng.integers(n_neighbors, size=idx.shape[0])]
                mixed = mix_with_neighbors(rows.get(idx), rows.get(partners), noise_gen)
                return augment_features(mixed, NOISE_STD, DROP_PROB, noise_gen)
            return rows.get(idx)
        return inputs

    def _work(self, batch: int) -> int:
        """Multiply-adds of all heads on one batch (decides the CPU thread count, see SINGLE_THREAD_WORK)."""
        k, width, d = int(self.n_clusters), int(self.hidden_dim), int(self.n_features_in_)
        per_row = d * k if self.head == "linear" else d * width + width * k
        return int(self.n_heads) * batch * per_row

    def _train(self, heads: MultiHead, ctx: FitContext) -> None:
        """SCAN step: every epoch, each anchor is paired with one of its K neighbours drawn at random."""
        inputs, n, rng = training_inputs(ctx.mode, ctx.rows, ctx.views, ctx.rng, ctx.noise), ctx.n, ctx.rng
        optimizer = torch.optim.Adam(heads.parameters(), lr=float(self.lr), weight_decay=float(self.weight_decay))
        bs = ctx.batch
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
        self.heads_ = heads

    @torch.no_grad()
    def _full_scan_loss(self, heads: MultiHead, rows: Rows) -> np.ndarray:
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
            p_anchor = softmax(heads(rows.get(idx)))
            partners = self.neighbors_[idx].reshape(-1)
            p_partner = softmax(heads(rows.get(partners))).reshape(heads.n_heads, idx.size, n_neighbors, k)
            similarity = torch.einsum("hbc,hbjc->hbj", p_anchor, p_partner)
            consistency -= torch.log(similarity.clamp_min(EPS)).sum(dim=(1, 2)).double()
            prob_sum += p_anchor.sum(dim=1).double()
        consistency /= n * n_neighbors
        mean_p = prob_sum / n
        entropy = -(mean_p * torch.log(mean_p.clamp_min(EPS))).sum(dim=1)
        return (consistency - float(self.entropy_weight) * entropy).cpu().numpy()

    def _train_self_label(self, head: MultiHead, rows: Rows, inputs, rng: np.random.Generator) -> None:
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
    def _row_blocks(self, rows: Rows, desc: str):
        block = block_rows(max(rows.array.shape[-1], int(self.n_clusters)), 1 << 22)
        for start in tqdm(range(0, rows.n, block), desc=desc, disable=not self.verbose or rows.n <= block,
                          leave=False):
            yield np.arange(start, min(start + block, rows.n))

    @torch.no_grad()
    def _predict_rows(self, head: MultiHead, rows: Rows) -> np.ndarray:
        """(n, k) float32 probabilities of a one-head model on all rows, computed in blocks."""
        head.eval()
        out = np.empty((rows.n, int(head.weights[-1].shape[-1])), dtype=np.float32)
        for idx in self._row_blocks(rows, "predict"):
            out[idx[0]:idx[-1] + 1] = softmax(head(rows.get(idx))[0]).cpu().numpy()
        return out

    @torch.no_grad()
    def _confident(self, head: MultiHead, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
        """Confidence mask and argmax cluster of every row (see ``confident_targets``), computed in blocks
        so the (n, k) probabilities are never held at once."""
        head.eval()
        mask = np.empty(rows.n, dtype=bool)
        targets = np.empty(rows.n, dtype=np.int64)
        for idx in self._row_blocks(rows, "confidence"):
            m, t = confident_targets(softmax(head(rows.get(idx))[0]), float(self.confidence))
            mask[idx[0]:idx[-1] + 1] = m.cpu().numpy()
            targets[idx[0]:idx[-1] + 1] = t.cpu().numpy()
        return mask, targets

    def _proba_rows(self, rows: Rows) -> np.ndarray:
        with self._threads(rows.device, self._work(int(self.batch_size))):
            return self._predict_rows(self.head_, rows)

    def predict_proba(self, X, head: int | None = None) -> np.ndarray:
        """Soft cluster assignment (n, n_clusters) float32 of features ``X`` from the training feature space.

        ``head=None`` uses the final model (the chosen head, after self-labeling when enabled); ``head=i``
        uses SCAN head i as it was at the end of the SCAN step (e.g. to compare heads).
        """
        self._check_fitted()
        if head is None:
            return super().predict_proba(X)
        if not (is_int(head) and 0 <= head < self.heads_.n_heads):
            raise ValueError(f"head must be None or an integer in 0..{self.heads_.n_heads - 1}, got {head!r}")
        rows = self._rows(X)
        with self._threads(rows.device, self._work(int(self.batch_size))):
            return self._predict_rows(self.heads_.select(int(head)), rows)

    def predict(self, X, head: int | None = None) -> np.ndarray:
        """Most probable cluster (int64) of every row of ``X`` (``head`` as in :meth:`predict_proba`)."""
        return self.predict_proba(X, head=head).argmax(axis=1).astype(np.int64)

    # ------------------------------------------------------------------ persistence
    def _build_module(self, name: str, state: dict) -> torch.nn.Module:
        return MultiHead.from_state_dict(state, self.head)
