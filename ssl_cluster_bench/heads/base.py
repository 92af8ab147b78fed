"""Shared plumbing of the clustering heads trained on cached features (SCAN, MMDC, TwoStageUC, TEMI, TURTLE).

Entry points:
    HeadEstimator: sklearn-style base class: declarative parameter constraints checked at fit, the training
        template ``fit``, centring/scaling of the features, device choice, degenerate-clustering check,
        predict/predict_proba plumbing and torch.save-based save/load.
    FitContext: what one fit's hooks share (standardised rows, cached views, batch size, seeded random streams)
    align_labels(reference, labels, n_clusters) -> (k,) permutation mapping ``labels``' ids onto ``reference``'s
    majority_vote(labels, n_clusters, reference=0) -> (voted (n,), perms (R, k)): vote of runs aligned to one
    vote_aligned(aligned, reference, n_clusters) -> (n,) per-sample most frequent label of aligned runs

The training template (:meth:`HeadEstimator.fit`) is the same for every head: validate the parameters and
inputs → mine or check neighbours (heads that pair samples) → seed the random streams → standardise → build the
heads → train them (epoch loop) → score every head on the whole training set → keep the lowest-loss head →
finish (labels, degenerate check). A head fills in the steps that differ: ``_build(ctx)``,
``_train(model, ctx)``, ``_full_loss(ctx)`` and ``_final_assignment(ctx)``; it declares its hyper-parameters'
``_parameter_constraints`` (no hand-written checks), implements ``_proba_rows(rows)`` and ``_build_module``,
and lists its fitted modules, arrays and scalars in ``_MODULES``, ``_ARRAYS`` and ``_SCALARS`` so that
save/load needs no code of its own. TURTLE trains on several spaces at once with its own ``fit`` and shares
the rest.
"""
from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.base import BaseEstimator, ClusterMixin

from ..safeio import atomic_write
from .common import (SINGLE_THREAD_WORK, DegenerateClusteringWarning, Rows, check_augmented, check_features,
                     check_neighbors, cluster_usage, resolve_device, torch_threads)
from .constraints import NO_VALIDATION, Interval, Options, check_param
from .neighbors import mine_neighbors

__all__ = ["FitContext", "HeadEstimator", "align_labels", "majority_vote", "vote_aligned"]


def align_labels(reference, labels, n_clusters: int) -> np.ndarray:
    """Permutation ``perm`` (k,) so that ``perm[labels]`` agrees best with ``reference``.

    Hungarian matching (scipy ``linear_sum_assignment``) on the k × k co-occurrence matrix
    ``C[a, b] = #{i : labels_i = a, reference_i = b}``: cluster ids are arbitrary, so two runs that found the
    same partition under different names are mapped onto each other exactly.
    """
    reference = np.asarray(reference, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    k = int(n_clusters)
    if reference.shape != labels.shape or reference.ndim != 1:
        raise ValueError(f"reference {reference.shape} and labels {labels.shape} must be 1-D of equal length")
    for name, y in (("reference", reference), ("labels", labels)):
        if y.size and (y.min() < 0 or y.max() >= k):
            raise ValueError(f"{name} must lie in 0..{k - 1}")
    co = np.bincount(labels * k + reference, minlength=k * k).reshape(k, k)
    rows, cols = linear_sum_assignment(co, maximize=True)
    perm = np.empty(k, dtype=np.int64)
    perm[rows] = cols
    return perm


def majority_vote(labels, n_clusters: int, reference: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Majority vote of R clusterings ``labels`` (R, n) after aligning each to run ``reference``.

    Returns ``(voted (n,) int64, perms (R, k))`` with ``perms[r]`` the alignment of run r. Ties go to the
    reference run's label when it is among the tied, else to the smallest tied id.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim != 2 or labels.shape[0] < 1:
        raise ValueError(f"labels must have shape (n_runs >= 1, n_samples), got {labels.shape}")
    if not 0 <= reference < labels.shape[0]:
        raise ValueError(f"reference must be a run index in 0..{labels.shape[0] - 1}, got {reference}")
    k = int(n_clusters)
    perms = np.stack([align_labels(labels[reference], run, k) for run in labels])
    return vote_aligned(np.take_along_axis(perms, labels, axis=1), reference, k), perms


def vote_aligned(aligned, reference: int, n_clusters: int) -> np.ndarray:
    """Per-sample most frequent label of already aligned runs ``aligned`` (R, n); ties go to run ``reference``."""
    aligned = np.asarray(aligned, dtype=np.int64)
    n = aligned.shape[1]
    votes = np.zeros((n, int(n_clusters)), dtype=np.float64)
    np.add.at(votes, (np.broadcast_to(np.arange(n), aligned.shape), aligned), 1.0)
    # Half a vote breaks ties towards the reference run and cannot outweigh a full vote.
    votes[np.arange(n), aligned[reference]] += 0.5
    return votes.argmax(axis=1).astype(np.int64)


@dataclass
class FitContext:
    """What the steps of one fit share: the training rows, the cached views and the seeded random streams.

    ``init`` draws initial weights (a CPU generator, so a seed gives the same weights on every device),
    ``noise`` augmentation noise and target points (on the training device), ``rng`` shuffles, neighbour and
    view choices. All three are seeded from ``seed`` (``noise`` from ``seed + 1``); heads that need more
    streams derive them from ``seed`` too.
    """

    rows: Rows
    views: Rows | None
    mode: str
    batch: int
    seed: int
    device: torch.device
    init: torch.Generator
    noise: torch.Generator
    rng: np.random.Generator

    @property
    def n(self) -> int:
        return self.rows.n


class HeadEstimator(ClusterMixin, BaseEstimator):
    """Base of the clustering-head estimators: validation, training template, standardisation, prediction and
    persistence.

    Subclasses store ``n_clusters``, ``random_state``, ``device`` and ``verbose`` (and usually ``batch_size``
    and ``standardize``) as hyper-parameters, and declare every ``__init__`` parameter in
    ``_parameter_constraints``. Fitted state common to all: ``mean_``, ``scale_`` (standardisation),
    ``n_features_in_``, ``labels_``, ``probs_``, ``cluster_sizes_``, ``degenerate_``; the template also sets
    ``head_losses_`` and ``best_head_``.
    """

    #: parameter name -> list of accepted values (see :mod:`.constraints`), checked once at ``fit``; a subclass
    #: extends it with ``{**HeadEstimator._parameter_constraints, ...}`` and must cover its whole ``__init__``
    _parameter_constraints: dict = {
        "n_clusters": [Interval("int", 2)],
        "batch_size": [Interval("int", 1)],
        "standardize": [Options("global", "dims")],
        "random_state": [Interval("int")],
        "device": NO_VALIDATION,   # resolve_device names the accepted forms
        "verbose": NO_VALIDATION,  # any truthy value turns the progress bars on
    }

    #: names of fitted torch.nn.Module attributes saved as state dicts (rebuilt by ``_build_module``)
    _MODULES: tuple[str, ...] = ()
    #: names of fitted numpy-array attributes saved as tensors
    _ARRAYS: tuple[str, ...] = ("mean_", "scale_", "labels_", "cluster_sizes_")
    #: names of fitted scalar (int / float / bool / str) attributes
    _SCALARS: tuple[str, ...] = ("n_features_in_", "degenerate_")
    #: ``fit`` takes cached augmented views (``augmented=``) / precomputed neighbours (``neighbors=``)
    _TAKES_VIEWS = True
    _USES_NEIGHBORS = False

    #: version in the saved file's format tag; bumped by a head whose saved layout changed
    _FORMAT_VERSION = 1

    _check_features = staticmethod(check_features)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A parameter without a constraint would go unchecked: refuse the class where it is defined.
        params = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
        missing = [n for n in params if n not in cls._parameter_constraints]
        if missing:
            raise TypeError(f"{cls.__name__}._parameter_constraints has no entry for {', '.join(missing)}")

    # ------------------------------------------------------------------ validation
    def _validate_params(self) -> None:
        """Raise ValueError naming the first hyper-parameter outside its ``_parameter_constraints``."""
        for name, value in self.get_params(deep=False).items():
            check_param(name, value, self._parameter_constraints[name])

    def _resolve_device(self) -> torch.device:
        return resolve_device(self.device)

    def _check_augmented(self, augmented, n: int, d: int):
        return check_augmented(augmented, n, d, verbose=self.verbose)

    def _validate_fit(self, X, augmented, neighbors=None) -> tuple:
        """Validate ``fit``'s inputs; returns ``(X, mean, std, augmented, mode, device)``.

        ``mode`` is the resolved ``self.augment``: "auto" becomes "views" when ``augmented`` is given, else
        "features" (heads without an ``augment`` parameter get "none").
        """
        self._validate_params()
        name = type(self).__name__
        if augmented is not None and not self._TAKES_VIEWS:
            raise ValueError(f"{name} takes no augmented views (augmented=...): it trains on the features alone")
        if neighbors is not None and not self._USES_NEIGHBORS:
            raise ValueError(f"{name} uses no neighbours (neighbors=...): leave it out")
        X, mean, std = self._check_features(X, "features", verbose=self.verbose)
        n, d = X.shape
        if int(self.n_clusters) > n:
            raise ValueError(f"n_clusters={self.n_clusters} exceeds the number of samples ({n})")
        if neighbors is None and self._USES_NEIGHBORS and int(self.n_neighbors) >= n:
            raise ValueError(f"n_neighbors={self.n_neighbors} must be smaller than the number of samples ({n})")
        if augmented is not None:
            augmented = self._check_augmented(augmented, n, d)
        augment = getattr(self, "augment", "none")
        if augment == "views" and augmented is None:
            raise ValueError("augment='views' needs the cached views: pass augmented=(n_views, n, dim) to fit")
        mode = augment if augment != "auto" else ("views" if augmented is not None else "features")
        return X, mean, std, augmented, mode, self._resolve_device()

    # ------------------------------------------------------------------ fit (the template)
    def fit(self, X, y=None, augmented=None, neighbors=None):
        """Train on features ``X`` (n, d) (array or memory map); ``y`` is ignored (unsupervised).

        ``augmented``: optional (V, n, d) cached augmented views of the same samples, same order (heads that
        train on views). ``neighbors``: optional precomputed (n, K) cosine neighbour indices, e.g. shared across
        seeds (heads that pair neighbours; mined from ``X`` with ``n_neighbors`` when omitted).
        """
        X, mean, std, augmented, mode, device = self._validate_fit(X, augmented, neighbors)
        n, d = X.shape
        if self._USES_NEIGHBORS:
            self.neighbors_ = check_neighbors(neighbors, n) if neighbors is not None else mine_neighbors(
                X, int(self.n_neighbors), verbose=self.verbose, gpu="auto" if device.type == "cuda" else False)
        seed = int(self.random_state)
        rows, views = self._standardized_rows(X, mean, std, device, augmented if mode == "views" else None)
        ctx = FitContext(rows, views, mode, self._effective_batch(n), seed, device,
                         init=torch.Generator().manual_seed(seed),
                         noise=torch.Generator(device=device).manual_seed(seed + 1),
                         rng=np.random.default_rng(seed))
        model = self._build(ctx)
        with self._threads(device, self._fit_work(ctx.batch)):
            self._train(model, ctx)
            self.head_losses_ = self._full_loss(ctx)
            self.best_head_ = int(np.argmin(self.head_losses_))
            probs, labels = self._final_assignment(ctx)
        self._finish(probs, labels)
        return self

    def _build(self, ctx: FitContext):
        """The untrained heads (a module, or what ``_train`` takes), initialised from ``ctx.init``, on the device."""
        raise NotImplementedError

    def _train(self, model, ctx: FitContext) -> None:
        """The epoch loop; stores the trained modules (``_MODULES``) on ``self``."""
        raise NotImplementedError

    def _full_loss(self, ctx: FitContext) -> np.ndarray:
        """(n_heads,) loss of every trained head on the whole training set (labels never used)."""
        raise NotImplementedError

    def _final_assignment(self, ctx: FitContext) -> tuple[np.ndarray, np.ndarray | None]:
        """``(probs (n, k), labels or None)`` of the kept head(s); None: labels are the argmax of probs."""
        raise NotImplementedError

    def _work(self, batch: int) -> int:
        """Multiply-adds of all heads on one batch (decides the CPU thread count, see SINGLE_THREAD_WORK)."""
        raise NotImplementedError

    def _fit_work(self, batch: int) -> int:
        """The work that sets the thread count of the training loop."""
        return self._work(batch)

    def _effective_batch(self, n: int) -> int:
        """Batch size: at least 4 samples per cluster (batch statistics need them), at most n."""
        return int(min(n, max(int(self.batch_size), 4 * int(self.n_clusters))))

    def _standardized_rows(self, X, mean: np.ndarray, std: np.ndarray, device: torch.device,
                           augmented=None) -> tuple[Rows, Rows | None]:
        """Store the standardisation and return the training rows (and cached views) on ``device``.

        ``self.standardize``: "dims" divides every centred dimension by its own standard deviation; "global"
        divides all of them by one number, the root-mean-square spread, which keeps the relative scale of the
        dimensions (after PCA, per-dimension scaling is whitening: it blows the near-constant last components up
        to the same weight as the first ones, and on PCA'd digits cost TwoStageUC 15-25 points of ACC).
        """
        self.mean_ = mean.astype(np.float32)
        self.scale_ = self._scale_from_std(std)
        self.n_features_in_ = int(X.shape[1])
        t_mean, t_scale = torch.from_numpy(self.mean_), torch.from_numpy(self.scale_)
        rows = Rows(X, t_mean, t_scale, device, verbose=self.verbose, desc="load features")
        views = None if augmented is None else Rows(augmented, t_mean, t_scale, device, verbose=self.verbose,
                                                    desc="load views")
        return rows, views

    def _scale_from_std(self, std: np.ndarray) -> np.ndarray:
        """(d,) float32 divisors of the centred features for ``self.standardize`` (see _standardized_rows)."""
        if self.standardize == "global":
            rms = float(np.sqrt(np.mean(std ** 2)))
            return np.full(std.shape, rms if rms > 0 else 1.0, dtype=np.float32)
        # Dimensions that are constant up to rounding (relative to the widest one) carry no information;
        # dividing them by 1 keeps them near 0 instead of inflating rounding noise to unit variance.
        return np.where(std > 1e-6 * max(float(std.max()), 1e-30), std, 1.0).astype(np.float32)

    def _finish(self, probs: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Set ``probs_``/``labels_`` and flag a degenerate clustering with a DegenerateClusteringWarning."""
        self.probs_ = probs
        self.labels_ = (probs.argmax(axis=1) if labels is None else labels).astype(np.int64)
        k = int(self.n_clusters)
        self.cluster_sizes_, used, largest, self.degenerate_ = cluster_usage(self.labels_, k)
        if self.degenerate_:
            warnings.warn(
                f"{type(self).__name__} is degenerate: it uses {used} of {k} clusters and its largest cluster "
                f"holds {largest:.1%} of the samples. Check that the features vary across samples, "
                f"{self._degenerate_hint()}.", DegenerateClusteringWarning, stacklevel=3)

    def _degenerate_hint(self) -> str:
        """The head-specific advice of the degenerate-clustering warning."""
        return "train longer or lower lr"

    @staticmethod
    def _threads(device: torch.device, work: int):
        """Context capping torch to one CPU thread when a step's multiply-adds are below _SINGLE_THREAD_WORK.

        Small heads lose more to thread-pool waits on a busy CPU than they gain (see SCAN's measurement).
        """
        return torch_threads(1 if device.type == "cpu" and work < SINGLE_THREAD_WORK else None)

    # ------------------------------------------------------------------ predict
    def _check_fitted(self) -> None:
        if not hasattr(self, "labels_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet: call fit(features) first "
                               f"(or {type(self).__name__}.load(path))")

    def _proba_rows(self, rows: Rows) -> np.ndarray:
        raise NotImplementedError

    def _model_device(self) -> torch.device:
        return next(getattr(self, self._MODULES[0]).parameters()).device

    def _rows(self, X) -> Rows:
        """Validated, standardised rows of new features ``X`` on the model's device."""
        self._check_fitted()
        X, _, _ = self._check_features(X, "X", min_rows=1, stats=False)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has dim {X.shape[1]}, the model was fitted on dim {self.n_features_in_}")
        return Rows(X, torch.from_numpy(self.mean_), torch.from_numpy(self.scale_), self._model_device())

    def predict_proba(self, X) -> np.ndarray:
        """Soft cluster assignment (n, n_clusters) float32 of features ``X`` from the training feature space."""
        return self._proba_rows(self._rows(X))

    def predict(self, X) -> np.ndarray:
        """Most probable cluster (int64) of every row of ``X``."""
        return self.predict_proba(X).argmax(axis=1).astype(np.int64)

    # ------------------------------------------------------------------ persistence
    def _build_module(self, name: str, state: dict) -> torch.nn.Module:
        """An empty module of the right shapes for the saved ``state`` of attribute ``name``."""
        raise NotImplementedError

    def save(self, path) -> Path:
        """Write hyper-parameters and fitted state with ``torch.save`` (loadable with ``weights_only=True``).

        Saved: parameters, the modules in ``_MODULES``, arrays in ``_ARRAYS`` and scalars in ``_SCALARS``.
        ``probs_`` (n × k) is not saved; recompute it with :meth:`predict_proba`.
        """
        self._check_fitted()
        params = self.get_params()
        params["device"] = str(params["device"])
        state = {
            "format": self._format(),
            "params": params,
            "modules": {m: {k: v.detach().cpu() for k, v in getattr(self, m).state_dict().items()}
                        for m in self._MODULES},
            "arrays": {a: torch.from_numpy(np.ascontiguousarray(getattr(self, a))) for a in self._ARRAYS},
            "scalars": {s: getattr(self, s) for s in self._SCALARS},
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:  # an interrupted save leaves the previous model, not half of a new one
            torch.save(state, f)
        return path

    @classmethod
    def _format(cls) -> str:
        return f"ssl_cluster_bench.heads.{cls.__name__}/{cls._FORMAT_VERSION}"

    @classmethod
    def load(cls, path, device="auto"):
        """A fitted estimator from :meth:`save`; its modules are placed on ``device`` ("auto": CUDA if any)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no saved {cls.__name__} model at {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        fmt = cls._format()
        if not isinstance(state, dict) or state.get("format") != fmt:
            raise ValueError(f"{path} is not a {cls.__name__} model saved by ssl_cluster_bench (format {fmt})")
        est = cls(**{**state["params"], "device": device})
        target = est._resolve_device()
        # Arrays and scalars first: a module's shape may depend on them (e.g. TURTLE's space dims).
        for name, value in state["arrays"].items():
            setattr(est, name, value.numpy())
        for name, value in state["scalars"].items():
            setattr(est, name, value)
        for name, module_state in state["modules"].items():
            module = est._build_module(name, module_state)
            module.load_state_dict(module_state)
            setattr(est, name, module.to(target))
        return est

