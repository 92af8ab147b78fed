"""TURTLE on frozen (cached) features of one or several backbones: the labeling whose linear classifiers fit best.

Entry points:
    TaskEncoder(space_dims, n_clusters): one weight-normalised linear layer per space, softmax outputs averaged
    turtle_step(encoder, optimizer, spaces, gamma, inner_steps, inner_lr, generator) -> (prediction error, entropy)
    generalization_score(spaces, labels, n_folds=10) -> mean over spaces of the cross-validated accuracy of a
        logistic regression trained on ``labels`` (higher is better)
    TURTLE(n_clusters, ...).fit(X or [X_1, X_2, ...]) -> .labels_, .probs_, .score_, .predict(X), .predict_proba(X)

Method (Gadetsky, Jiang, Brbić, "Let Go of Your Labels with Unsupervised Transfer", ICML 2024): a task encoder
maps every sample to a soft labeling, the average over representation spaces of softmax(θ_i · z_i). In every outer
step, fresh linear classifiers (one per space) take M Adam steps on the current labels (held fixed: the
first-order hypergradient), then the encoder takes one Adam step on

    Σ_spaces CE(classifier_i(z_i), labels) − γ · Σ_spaces H(mean_b softmax(θ_i · z_i)),

so it prefers labelings that a linear classifier learns quickly (large margin) in every space at once, and the
entropy term keeps all clusters in use. Spaces are cache entries of the same dataset and split from different
backbones, aligned row by row.

Differences from the official code (github.com/mlbio-epfl/turtle, run_turtle.py at 4674efa), line by line.
"Bench" is benchmarks/official_heads.py, results in benchmarks/README.md, section "Official heads":
- Objective: the same, Σ_i CE(classifier_i(z_i), labels) − γ · Σ_i H(mean_b softmax_i), soft-label cross-entropy.
  Equal to the official outer step: 5 steps from identical weights, classifiers and batches differ by ≤ 2.1e-6
  in the loss and ≤ 1.9e-5 in the weights (digits and Fashion-MNIST spaces; bench, column "max Δloss / ΔW");
  test_turtle_steps_equal_the_official_update holds 3 official steps to 1e-5 / 1e-6.
- Inner update: the same Adam (torch's defaults, M = 10 steps, cold start: fresh classifiers every outer step),
  with the gradient written in closed form instead of autograd (test_inner_loop_equals_torch_adam_on_cross_entropy;
  faster, see _train_inner). The official --warm_start option is not offered (cold start is its default).
- Inner learning rate: official 1e-3 for every space; ours inner_lr="auto", 0.75 / (mean L1 norm of the space's
  rows as the encoder sees them), per space. Adam moves a weight by about lr per step, so the logit z·w moves by
  up to lr·‖z‖₁: a fixed lr is too small for short rows (digits pixels, ‖z‖₁ = 46: 1e-3 gives 0.71 ACC) and too
  large for long ones (Fashion-MNIST EfficientNet-Lite0, ‖z‖₁ = 751: 1e-2 gives 0.43-0.59). 0.75 was chosen by the
  label-free generalisation score over digits pixels, digits random-resnet18 and Fashion-MNIST Lite0 (table in
  benchmarks/README.md); it gives exactly the official 1e-3 on Fashion-MNIST Lite0. On several spaces
  clustered jointly the score prefers a larger step (benchmarks/turtle_inner_lr.py: digits pixels +
  random-resnet18 0.962 at c = 0.75, 0.968 at 1.5, 0.973 at 3; Fashion-MNIST pixels + Lite0 0.893, 0.913,
  0.918), while on a small two-space problem with more dimensions than rows c = 3 overshoots (score 0.74, and
  the labelling the official defaults reach is lost: test_turtle_defaults_reach_the_official_labelling_in_two_
  wide_spaces). No fixed joint c is safe, so "auto" on several spaces trains twice, at c = 0.75 and c = 3 (the best joint value
  on digits), from the same seed, and keeps the labelling with the better generalisation score (twice the
  time; one space: one training, as before).
- Initialisation: the same draws. Encoder and classifiers get torch.nn.Linear's initialisation (kaiming-uniform
  with a = √5, bias U(±1/√d)), the encoder weight-normalised (g = ‖v‖ per cluster row, through
  torch.nn.utils.parametrizations.weight_norm where the official code uses the deprecated nn.utils.weight_norm).
  The numbers come from the estimator's own torch generator seeded with random_state, in the official
  script's order: the encoder, one set of classifiers that the first cold start discards, then fresh
  classifiers every step. torch.manual_seed(s) in the official script gives the same numbers
  (test_turtle_draws_the_official_initialisation), and the caller's global RNG is left alone. Before this,
  the draws came in another order, so a seed meant other draws. On Fashion-MNIST Lite0, seed 0 then gave
  0.694 against the official 0.705; with the official draws it gives 0.704 (bench).
- Batches: the same sampler. When n > batch, each step draws np.random.choice(n, batch, replace=False) from a
  numpy RandomState seeded with random_state, the stream the official script's np.random.seed gives. When
  n ≤ batch, ours takes all rows in order where the official code takes a permutation of them. The loss is a
  mean over rows, so the two are the same up to float summation order. Batch 10,000 in both.
- Encoder optimiser: the same (Adam, lr 1e-3, betas 0.9 / 0.999), γ = 10 in both.
- Feature preprocessing: official none (raw features); ours centres every space and divides it by one RMS spread
  (standardize="global"). On raw digits pixels (0-255) the official code collapses to one cluster (ACC 0.11,
  3 seeds) and on raw random-resnet18 features reaches 0.32; fed our standardised features it reaches 0.763 and
  0.702, ours 0.804 and 0.706 (bench, T = 1000). On raw Fashion-MNIST pixels + Lite0 it collapses (0.100).
- Stopping: both a fixed number of outer steps, no early stopping. Official T = 6000; ours T = 6000 when the data
  is larger than a batch, 1000 when every step sees all rows (n_steps="auto"; training curve on digits: the
  prediction error stops falling by step ~333). The bench runs both at T = 1000.
- Output: both label by the argmax of the spaces' mean soft labels. The official script scores its validation
  split against ground truth every 20 steps (display only); ours never reads labels.
- Generalisation score: official cuML LogisticRegression (C = 1, 1,000 iterations) 10-fold on the raw features;
  ours scikit-learn's (C = 1) 10-fold on the standardised features, on at most 10,000 sampled rows (the official
  one needs a GPU; not compared).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from .base import HeadEstimator
from .common import Rows, check_features
from .constraints import Interval, Options

__all__ = ["TURTLE", "TaskEncoder", "generalization_score", "turtle_step"]

# Score problems (rows × dims) below this size run on one BLAS thread (see generalization_score).
_SINGLE_THREAD_VALUES = 5_000_000
# inner_lr="auto": Adam moves every weight by about the learning rate per step, so the logit z·w of a row moves
# by up to lr·‖z‖₁; "auto" sets lr = c / mean ‖z‖₁ per space, c = _INNER_LOGIT_STEP for one space and
# _INNER_LOGIT_STEP_JOINT for several clustered jointly (see the module docstring; benchmarks/turtle_inner_lr.py).
_INNER_LOGIT_STEP = 0.75
_INNER_LOGIT_STEP_JOINT = 3.0


def _linear_init(d: int, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (k, d) and bias (k,) drawn as ``torch.nn.Linear(d, k)`` draws them (kaiming-uniform with a = √5,
    then U(±1/√d)), in the same order, from ``generator``: with a generator seeded s, the very numbers
    ``torch.manual_seed(s); torch.nn.Linear(d, k)`` gives (test_turtle_draws_the_official_initialisation)."""
    weight = torch.empty(k, d)
    torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    bound = 1 / math.sqrt(d)
    return weight, torch.empty(k).uniform_(-bound, bound, generator=generator)


class TaskEncoder(torch.nn.Module):
    """One weight-normalised linear layer (torch ``weight_norm``) per space; ``forward`` returns the averaged
    soft labels (B, k) and the per-space softmax outputs (list of (B, k))."""

    def __init__(self, space_dims, n_clusters: int, generator: torch.Generator | None = None):
        super().__init__()
        layers = []
        for d in space_dims:
            # built without torch's own initialisation (which would draw from the global RNG), then given
            # nn.Linear's draws from our generator
            layer = torch.nn.utils.skip_init(torch.nn.Linear, int(d), int(n_clusters))
            weight, bias = _linear_init(int(d), int(n_clusters), generator or torch.Generator())
            with torch.no_grad():
                layer.weight.copy_(weight)
                layer.bias.copy_(bias)
            layers.append(torch.nn.utils.parametrizations.weight_norm(layer))
        self.layers = torch.nn.ModuleList(layers)

    @property
    def space_dims(self) -> list[int]:
        return [layer.in_features for layer in self.layers]

    def forward(self, spaces: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        per_space = [F.softmax(layer(z), dim=-1) for layer, z in zip(self.layers, spaces)]
        return torch.stack(per_space).mean(dim=0), per_space


def _fresh_classifiers(space_dims, k: int, device, generator: torch.Generator) -> list[list[torch.Tensor]]:
    """[weight (d, k), bias (k,)] of a new linear classifier per space: torch.nn.Linear's draws (see
    :func:`_linear_init`); the weight is the transposed view of nn.Linear's (k, d) one."""
    params = []
    for d in space_dims:
        weight, bias = _linear_init(int(d), k, generator)
        params.append([weight.T.to(device), bias.to(device)])
    return params


@torch.no_grad()
def _train_inner(spaces: list[torch.Tensor], target: torch.Tensor, params: list[list[torch.Tensor]], steps: int,
                 lr, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
    """``steps`` Adam steps (torch's defaults) of every space's linear classifier on CE(z W + b, target), in place.

    ``lr``: one learning rate, or one per space.

    Written out instead of autograd + torch.optim.Adam: the gradient of softmax cross-entropy of a linear map is
    closed-form, (softmax(zW + b) − target)ᵀ z / B, and on digits the hand-written loop took 32-35 ms per outer
    step against 55-64 ms for autograd + a fresh torch.optim.Adam (busy 2-core machine), in the loop that
    dominates TURTLE's time. The tests check it against torch.optim.Adam step for step. The weight gradient is
    formed as (residualᵀ z)ᵀ: on a (10000, 1280) space with one thread it took 15 ms against 139 ms for zᵀ
    residual, which runs over the transposed view of z (benchmarks/turtle_step.py).
    """
    b1, b2 = betas
    lrs = [float(r) for r in lr] if isinstance(lr, (list, tuple)) else [float(lr)] * len(spaces)
    moments = [[(torch.zeros_like(p), torch.zeros_like(p)) for p in wb] for wb in params]
    for t in range(1, int(steps) + 1):
        for z, wb, mv, lr in zip(spaces, params, moments, lrs):
            residual = (torch.softmax(z @ wb[0] + wb[1], dim=-1) - target) / z.shape[0]
            for p, g, (m, v) in zip(wb, ((residual.T @ z).T, residual.sum(dim=0)), mv):
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                step = lr / (1 - b1 ** t)
                p.addcdiv_(m, (v / (1 - b2 ** t)).sqrt_().add_(eps), value=-step)


def turtle_step(encoder: TaskEncoder, optimizer: torch.optim.Optimizer, spaces: list[torch.Tensor],
                gamma: float = 10.0, inner_steps: int = 10, inner_lr=1e-3,
                generator: torch.Generator | None = None,
                classifiers: list[list[torch.Tensor]] | None = None) -> tuple[float, float]:
    """One outer TURTLE step on a batch: fresh classifiers, ``inner_steps`` Adam steps, one encoder step.

    ``spaces``: the batch's rows in every space, aligned (list of (B, d_i) tensors). The classifiers train on
    the detached labels (first-order hypergradient); the encoder then minimises
    Σ_i CE(classifier_i(z_i), labels) − γ · Σ_i H(mean prediction of space i). Returns both sums (prediction
    error, entropy) as they were before the encoder's update. ``inner_lr``: one rate or one per space.
    ``classifiers``: starting [weight (d_i, k), bias (k,)] of every space's classifier instead of fresh draws
    from ``generator`` (copied, not modified): lets a test or benchmark replay another implementation's
    initialisation exactly.
    """
    k = encoder.layers[0].out_features
    labels, per_space = encoder(spaces)
    if classifiers is None:
        params = _fresh_classifiers(encoder.space_dims, k, spaces[0].device, generator or torch.Generator())
    else:
        params = [[w.detach().clone().to(spaces[0].device), b.detach().clone().to(spaces[0].device)]
                  for w, b in classifiers]
    _train_inner(spaces, labels.detach(), params, inner_steps, inner_lr)
    with torch.no_grad():
        logits = [z @ w + b for z, (w, b) in zip(spaces, params)]
    prediction_error = sum(F.cross_entropy(lg, labels) for lg in logits)
    entropy = sum(torch.special.entr(p.mean(dim=0)).sum() for p in per_space)
    optimizer.zero_grad(set_to_none=True)
    (prediction_error - gamma * entropy).backward()
    optimizer.step()
    return float(prediction_error.detach()), float(entropy.detach())


def generalization_score(spaces, labels, n_folds: int = 10, max_samples: int | None = 10000,
                         random_state: int = 0) -> float:
    """TURTLE's label-free generalisation score of a labeling (higher is better).

    For every space, the mean accuracy over ``n_folds`` folds (shuffled ``KFold``) of a scikit-learn
    ``LogisticRegression`` (C = 1) trained on the other folds' ``labels``; then the mean over spaces. A labeling
    that linear classifiers learn from a part of the data and transfer to the rest scores high. With more than
    ``max_samples`` rows, a seeded random subset of that size is scored (None: all rows). NaN when ``labels``
    use fewer than two clusters (nothing to classify).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, cross_val_score

    labels = np.asarray(labels)
    spaces = [spaces] if hasattr(spaces, "shape") else list(spaces)
    if any(z.shape[0] != labels.shape[0] for z in spaces):
        raise ValueError(f"every space must have one row per label ({labels.shape[0]}), got "
                         f"{[z.shape[0] for z in spaces]}")
    if np.unique(labels).size < 2:
        return float("nan")
    rows = np.arange(labels.shape[0])
    if max_samples is not None and labels.shape[0] > max_samples:
        rows = np.sort(np.random.default_rng(random_state).choice(labels.shape[0], max_samples, replace=False))
    folds = KFold(n_splits=int(n_folds), shuffle=True, random_state=random_state)
    scores = []
    for z in spaces:
        z = np.asarray(z[rows], dtype=np.float64)
        z = (z - z.mean(axis=0)) / max(float(np.sqrt(z.var(axis=0).mean())), 1e-12)
        # Small problems on one BLAS thread: on a busy 2-core machine the digits score took 69 s with the
        # default thread pool and 1.3 s with one thread.
        with threadpool_limits(1 if z.size < _SINGLE_THREAD_VALUES else None):
            clf = LogisticRegression(C=1.0, max_iter=1000)
            scores.append(cross_val_score(clf, z, labels[rows], cv=folds).mean())
    return float(np.mean(scores))


class TURTLE(HeadEstimator):
    """TURTLE: unsupervised transfer by the labeling with maximal-margin linear classifiers in every space.

    Parameters (defaults follow the paper and its official code unless a line says otherwise)
    ----------
    n_clusters : int
        Number of clusters k (≥ 2).
    gamma : float
        γ, weight of the entropy of every space's mean prediction (10).
    n_steps : int or "auto"
        T, outer steps. The paper's T = 6,000 at batch 10,000 is 1,200 passes over CIFAR's 50,000 training
        images; "auto" keeps T = 6,000 for data larger than a batch and uses T = 1,000 when the whole dataset is
        one batch, where every step already sees all rows: on digits (2,000 steps, seed 0) the encoder's
        prediction error fell from 2.18 to 0.88 by step 333 and then only wandered (0.67-0.81), and a step costs
        a fifth of a second on a busy CPU.
    inner_steps : int
        M, Adam steps of the fresh linear classifiers in every outer step (10).
    inner_lr : float or "auto"
        Adam learning rate of the inner classifiers, one for all spaces, or "auto" (default): per space 0.75 over
        the mean L1 norm of its rows as the encoder sees them (the official 1e-3 on Fashion-MNIST
        EfficientNet-Lite0, 0.016 on digits pixels); on several spaces both 0.75 and 3 over that norm are
        trained and the better generalisation score is kept. See the module docstring for why and how.
    lr : float
        Adam learning rate of the task encoder (1e-3, the paper's).
    batch_size : int
        Rows per outer step (10,000; capped at n, where every step uses all rows).
    standardize : {"global", "dims"}
        Every space is centred and divided by one root-mean-square spread ("global", default) or every
        dimension by its own ("dims"). The paper feeds raw CLIP / DINOv2 features; a fixed learning rate for
        the inner classifiers needs comparable scales across spaces (raw pixels run 0-16, a random ResNet's
        features 0-0.1), which one scale per space gives without whitening the space.
    score_folds, score_max_samples : int, int or None
        Folds and row cap of the generalisation score (:func:`generalization_score`).
    random_state : int
        Seeds the encoder, the inner classifiers, the batches and the score's folds.
    device : "auto" | str | torch.device
    verbose : bool

    Attributes
    ----------
    labels_, probs_ : cluster of every sample and the (n, k) averaged soft labels of the encoder.
    score_ : the generalisation score of ``labels_`` (higher is better; the method's own label-free criterion).
    space_dims_ : (n_spaces,) input dim of every space. encoder_ : the TaskEncoder.
    history_ : (T, 2) prediction error and entropy of every outer step.
    inner_lr_ : (n_spaces,) the inner learning rate used in every space (the kept candidate's).
    inner_lr_scores_ : the generalisation score of each candidate trained ("auto" on several spaces: two).
    cluster_sizes_, degenerate_ : as in SCAN. mean_, scale_ : standardisation of the concatenated spaces.
    """

    _MODULES = ("encoder_",)
    _ARRAYS = HeadEstimator._ARRAYS + ("space_dims_", "history_", "inner_lr_", "inner_lr_scores_")
    _SCALARS = HeadEstimator._SCALARS + ("score_",)

    def __init__(self, n_clusters: int, gamma: float = 10.0, n_steps="auto", inner_steps: int = 10,
                 inner_lr="auto", lr: float = 1e-3, batch_size: int = 10000, standardize: str = "global",
                 score_folds: int = 10, score_max_samples: int | None = 10000, random_state: int = 0,
                 device="auto", verbose: bool = True):
        self.n_clusters = n_clusters
        self.gamma = gamma
        self.n_steps = n_steps
        self.inner_steps = inner_steps
        self.inner_lr = inner_lr
        self.lr = lr
        self.batch_size = batch_size
        self.standardize = standardize
        self.score_folds = score_folds
        self.score_max_samples = score_max_samples
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    _TAKES_VIEWS = False
    _parameter_constraints = {
        **HeadEstimator._parameter_constraints,
        "gamma": [Interval("real", 0)],
        "n_steps": [Interval("int", 1), Options("auto")],
        "inner_steps": [Interval("int", 1)],
        "inner_lr": [Interval("real", 0, closed="neither"), Options("auto")],
        "lr": [Interval("real", 0, closed="neither")],
        "score_folds": [Interval("int", 2)],
        "score_max_samples": [Interval("int", 2), None],
    }

    def _inner_lr_candidates(self, rows: Rows, n: int, seed: int) -> list[np.ndarray]:
        """The learning rates (one per space) to train with: ``inner_lr``, or for "auto" c over the mean L1 norm of
        the space's rows as the encoder sees them (a seeded sample of at most one batch), with c =
        _INNER_LOGIT_STEP for one space and each of _INNER_LOGIT_STEP and _INNER_LOGIT_STEP_JOINT for several."""
        if self.inner_lr != "auto":
            return [np.full(len(self.space_dims_), float(self.inner_lr))]
        bs = min(n, int(self.batch_size))
        idx = np.arange(n) if bs == n else np.sort(np.random.default_rng([seed, 1]).choice(n, bs, replace=False))
        l1 = np.array([max(float(z.abs().sum(dim=1).mean()), 1e-12) for z in self._space_tensors(rows, idx)])
        steps = [_INNER_LOGIT_STEP] if len(self.space_dims_) == 1 else \
            list(dict.fromkeys([_INNER_LOGIT_STEP, _INNER_LOGIT_STEP_JOINT]))
        return [c / l1 for c in steps]

    def _n_steps(self, n: int) -> int:
        if self.n_steps != "auto":
            return int(self.n_steps)
        return 1000 if n <= int(self.batch_size) else 6000

    # ------------------------------------------------------------------ spaces
    @staticmethod
    def _as_spaces(X, name: str, min_rows: int, stats: bool):
        """Validate one (n, d) array or a list of aligned ones; returns (spaces, means, stds)."""
        spaces = [X] if hasattr(X, "shape") and len(X.shape) == 2 else list(X)
        if not spaces:
            raise ValueError(f"{name} is empty: pass an (n, d) array or a list of aligned (n, d_i) arrays")
        checked = [check_features(z, f"{name}[{i}]" if len(spaces) > 1 else name, min_rows=min_rows, stats=stats)
                   for i, z in enumerate(spaces)]
        n_rows = {c[0].shape[0] for c in checked}
        if len(n_rows) > 1:
            raise ValueError(f"the spaces of {name} are not aligned: they have {[c[0].shape[0] for c in checked]} "
                             "rows; every space must hold the same samples in the same order")
        return [c[0] for c in checked], [c[1] for c in checked], [c[2] for c in checked]

    def _space_tensors(self, rows: Rows, idx: np.ndarray) -> list[torch.Tensor]:
        z = rows.get(idx)
        return list(torch.split(z, [int(d) for d in self.space_dims_], dim=1))

    def _rows(self, X) -> Rows:
        self._check_fitted()
        spaces, _, _ = self._as_spaces(X, "X", min_rows=1, stats=False)
        dims = [z.shape[1] for z in spaces]
        if dims != [int(d) for d in self.space_dims_]:
            raise ValueError(f"X has space dims {dims}, the model was fitted on {self.space_dims_.tolist()}")
        return Rows(np.hstack([np.asarray(z, dtype=np.float32) for z in spaces]), torch.from_numpy(self.mean_),
                    torch.from_numpy(self.scale_), self._model_device())

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None) -> "TURTLE":
        """Train on ``X``: one (n, d) feature array, or a list of aligned arrays (one per representation space,
        same samples in the same order); ``y`` is ignored (unsupervised).

        Its own loop rather than HeadEstimator's template: one task encoder over several spaces, no heads to
        choose between (the parameters are checked by the same constraints)."""
        self._validate_params()
        spaces, means, stds = self._as_spaces(X, "features", min_rows=2, stats=True)
        n = spaces[0].shape[0]
        k = int(self.n_clusters)
        if k > n:
            raise ValueError(f"n_clusters={k} exceeds the number of samples ({n})")
        device = self._resolve_device()
        self.space_dims_ = np.array([z.shape[1] for z in spaces], dtype=np.int64)
        self.mean_ = np.concatenate(means).astype(np.float32)
        self.scale_ = np.concatenate([self._scale_from_std(s) for s in stds])
        self.n_features_in_ = int(self.space_dims_.sum())
        joined = spaces[0] if len(spaces) == 1 else np.hstack([np.asarray(z, dtype=np.float32) for z in spaces])
        rows = Rows(joined, torch.from_numpy(self.mean_), torch.from_numpy(self.scale_), device,
                    verbose=self.verbose, desc="load features")

        seed = int(self.random_state)
        bs = int(min(n, int(self.batch_size)))
        full = self._space_tensors(rows, np.arange(n)) if bs == n else None
        n_steps = self._n_steps(n)
        # The score sees the spaces as the encoder does (centred and scaled); the row cap is applied here once.
        cap = self.score_max_samples
        idx = np.arange(n) if cap is None or n <= cap else \
            np.sort(np.random.default_rng(seed).choice(n, int(cap), replace=False))
        spaces_seen = [z.cpu().numpy() for z in self._space_tensors(rows, idx)]
        # One training per candidate inner learning rate (one, except "auto" on several spaces), each from the same
        # seed; the labelling with the best generalisation score is kept: TURTLE's own criterion, no label read.
        best, scores = None, []
        for inner_lr in self._inner_lr_candidates(rows, n, seed):
            # The official script's draws for the same seed: torch's (encoder, then one set of classifiers that
            # its first cold start replaces, then fresh ones every step) and numpy's legacy ones (the batches).
            gen = torch.Generator().manual_seed(seed)
            rng = np.random.RandomState(seed)
            encoder = TaskEncoder(self.space_dims_.tolist(), k, generator=gen).to(device)
            _fresh_classifiers(self.space_dims_.tolist(), k, "cpu", gen)
            optimizer = torch.optim.Adam(encoder.parameters(), lr=float(self.lr))
            history = np.empty((n_steps, 2), dtype=np.float64)
            with self._threads(device, (int(self.inner_steps) + 2) * 3 * bs * self.n_features_in_ * k):
                bar = tqdm(range(n_steps), desc=f"TURTLE k={k}", unit="step", disable=not self.verbose, leave=False)
                for step in bar:
                    batch = full if full is not None else \
                        self._space_tensors(rows, np.sort(rng.choice(n, bs, replace=False)))
                    history[step] = turtle_step(encoder, optimizer, batch, float(self.gamma), int(self.inner_steps),
                                                inner_lr.tolist(), gen)
                    if step % 50 == 0 or step == n_steps - 1:
                        bar.set_postfix(error=f"{history[step, 0]:.3f}", entropy=f"{history[step, 1]:.3f}")
                self.encoder_ = encoder
                probs = self._proba_rows(rows)
            score = generalization_score(spaces_seen, probs.argmax(axis=1)[idx], n_folds=int(self.score_folds),
                                         max_samples=None, random_state=seed)
            scores.append(score)
            if best is None or score > best[0]:  # a tie keeps the first (the single-space step)
                best = (score, encoder, history, probs, inner_lr)
        self.score_, self.encoder_, self.history_, probs, self.inner_lr_ = best
        self.inner_lr_scores_ = np.array(scores, dtype=np.float64)
        self._finish(probs)
        return self

    # ------------------------------------------------------------------ predict
    @torch.no_grad()
    def _proba_rows(self, rows: Rows, block: int = 65536) -> np.ndarray:
        self.encoder_.eval()
        out = np.empty((rows.n, int(self.n_clusters)), dtype=np.float32)
        for start in range(0, rows.n, block):
            idx = np.arange(start, min(start + block, rows.n))
            out[start:start + idx.size] = self.encoder_(self._space_tensors(rows, idx))[0].cpu().numpy()
        return out

    def _build_module(self, name: str, state: dict) -> torch.nn.Module:
        return TaskEncoder([int(d) for d in self.space_dims_], int(self.n_clusters), generator=torch.Generator())
