"""Shared plumbing of the clustering heads trained on cached features (SCAN, MMDC, TwoStageUC, TEMI, TURTLE).

Entry points:
    HeadEstimator: sklearn-style base class: input validation, centring/scaling of the features, device choice,
        degenerate-clustering check, predict/predict_proba plumbing and torch.save-based save/load.
    align_labels(reference, labels, n_clusters) -> (k,) permutation mapping ``labels``' ids onto ``reference``'s
    majority_vote(labels, n_clusters, reference=0) -> (voted (n,), perms (R, k)): vote of runs aligned to one
    vote_aligned(aligned, reference, n_clusters) -> (n,) per-sample most frequent label of aligned runs

Subclasses implement ``_check_params`` (calling ``_check_common_params``), ``fit`` (starting with
``_validate_fit`` and ``_standardized_rows``, ending with ``_finish``), ``_proba_rows(rows)`` and
``_build_module``, and list their fitted modules, arrays and scalars in ``_MODULES``, ``_ARRAYS`` and
``_SCALARS`` so that save/load needs no code of its own.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.base import BaseEstimator, ClusterMixin

from .common import (SINGLE_THREAD_WORK, DegenerateClusteringWarning, Rows, check_augmented, check_features,
                     cluster_usage, is_int, is_real, resolve_device, torch_threads)

__all__ = ["HeadEstimator", "align_labels", "majority_vote", "vote_aligned"]


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


class HeadEstimator(ClusterMixin, BaseEstimator):
    """Base of the clustering-head estimators: validation, standardisation, prediction and persistence.

    Subclasses store ``n_clusters``, ``batch_size``, ``standardize``, ``random_state``, ``device`` and ``verbose``
    as hyper-parameters. Fitted state common to all: ``mean_``, ``scale_`` (standardisation), ``n_features_in_``,
    ``labels_``, ``probs_``, ``cluster_sizes_``, ``degenerate_``.
    """

    #: names of fitted torch.nn.Module attributes saved as state dicts (rebuilt by ``_build_module``)
    _MODULES: tuple[str, ...] = ()
    #: names of fitted numpy-array attributes saved as tensors
    _ARRAYS: tuple[str, ...] = ("mean_", "scale_", "labels_", "cluster_sizes_")
    #: names of fitted scalar (int / float / bool / str) attributes
    _SCALARS: tuple[str, ...] = ("n_features_in_", "degenerate_")

    #: version in the saved file's format tag; bumped by a head whose saved layout changed
    _FORMAT_VERSION = 1

    _check_features = staticmethod(check_features)

    # ------------------------------------------------------------------ validation
    def _resolve_device(self) -> torch.device:
        return resolve_device(self.device)

    def _check_augmented(self, augmented, n: int, d: int):
        return check_augmented(augmented, n, d, verbose=self.verbose)

    def _validate_fit(self, X, augmented) -> tuple:
        """Validate ``fit``'s inputs; returns ``(X, mean, std, augmented, mode, device)``.

        ``mode`` is the resolved ``self.augment``: "auto" becomes "views" when ``augmented`` is given, else
        "features" (heads without an ``augment`` parameter get "none").
        """
        self._check_params()
        X, mean, std = self._check_features(X, "features", verbose=self.verbose)
        n, d = X.shape
        if int(self.n_clusters) > n:
            raise ValueError(f"n_clusters={self.n_clusters} exceeds the number of samples ({n})")
        if augmented is not None:
            augmented = self._check_augmented(augmented, n, d)
        augment = getattr(self, "augment", "none")
        if augment == "views" and augmented is None:
            raise ValueError("augment='views' needs the cached views: pass augmented=(n_views, n, dim) to fit")
        mode = augment if augment != "auto" else ("views" if augmented is not None else "features")
        return X, mean, std, augmented, mode, self._resolve_device()

    def _check_common_params(self, positive_ints: dict, nonneg_reals: dict | None = None,
                             pos_reals: dict | None = None) -> None:
        """Raise ValueError naming the first bad hyper-parameter (n_clusters, random_state and the dicts)."""
        if not is_int(self.n_clusters) or self.n_clusters < 2:
            raise ValueError(f"n_clusters must be an integer >= 2, got {self.n_clusters!r}")
        for name, value in positive_ints.items():
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, value in (nonneg_reals or {}).items():
            if not is_real(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name, value in (pos_reals or {}).items():
            if not is_real(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not is_int(self.random_state):
            raise ValueError(f"random_state must be an integer, got {self.random_state!r}")
        if hasattr(self, "standardize") and self.standardize not in ("global", "dims"):
            raise ValueError(f"standardize must be 'global' or 'dims', got {self.standardize!r}")

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
        torch.save(state, path)
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

