"""Methods: the registry of clustering methods (name -> estimator class) and the inputs they share.

Entry points:
    @register_method("name")         class decorator: makes the class available by name
    get_method(name) -> class        (clear error listing the known names)
    list_methods() -> [names]
    MethodInputs(features, protocol, augmented=None, spaces=None)   what a method may use, computed once

A method class follows the estimator contract: ``__init__(n_clusters, random_state=0, verbose=False,
**options)`` stores its arguments; ``fit(inputs)`` returns self with ``labels_`` (n,) int64, ``probs_`` (n, k)
or None, ``degenerate_`` (bool), ``score_`` (its own label-free criterion, lower is better, or None) and
``config_`` (extra leaderboard columns: backend, pca_dim, ...). ``multi_space = True`` marks a method that
uses every aligned space in ``inputs.spaces`` (joint runs over several backbones take only those). ``from_protocol`` builds it from a
:class:`~ssl_cluster_bench.protocol.Protocol`. A new method is one module plus one ``register_method`` line.
"""
from __future__ import annotations

import difflib
import time
from typing import Callable

import numpy as np

from .protocol import Protocol

__all__ = ["ClusteringMethod", "MethodInputs", "get_method", "list_methods", "register_method"]

_REGISTRY: dict[str, type] = {}


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: register ``cls`` under ``name`` (a second class under the same name is an error)."""
    def deco(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def list_methods() -> list[str]:
    return list(_REGISTRY)


def get_method(name: str) -> type:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown method {name!r}.{hint} Known methods: {', '.join(_REGISTRY)}") from None


class MethodInputs:
    """Everything a method may read, each derived once and shared by every method × k × seed of a run.

    ``features`` are the cached features as stored; ``reduced`` is the PCA of the protocol (computed on first
    use); ``neighbors(k)`` the cosine k nearest neighbours (self excluded, computed once per k); ``augmented``
    the cached augmented views (views, n, d) or None; ``spaces`` the aligned feature matrices of multi-space
    methods (default: just ``features``). ``prep_seconds`` counts the time spent deriving them.
    """

    def __init__(self, features, protocol: Protocol, *, augmented=None, spaces=None, progress: bool = True):
        self.features = features
        self.protocol = protocol
        self.augmented = augmented
        self.spaces = list(spaces) if spaces is not None else [features]
        self.progress = progress
        self.prep_seconds = 0.0
        self._reduced = None
        self._neighbors: dict[int, np.ndarray] = {}

    @property
    def reduced(self) -> np.ndarray:
        if self._reduced is None:
            from .reduce import PCA

            p = self.protocol
            n, dim = self.features.shape
            # PCA cannot give more components than samples or dims; at the input dim it is only a rotation
            eff_dim = None if p.pca_dim is None or p.pca_dim >= dim else int(min(p.pca_dim, n))
            t0 = time.perf_counter()
            self._reduced = PCA(eff_dim, whiten=p.whiten, l2_normalize=p.l2_normalize,
                                progress=self.progress).fit_transform(self.features)
            self.prep_seconds += time.perf_counter() - t0
        return self._reduced

    def neighbors(self, k: int) -> np.ndarray:
        k = int(k)
        if k not in self._neighbors:
            from .heads import mine_neighbors

            t0 = time.perf_counter()
            self._neighbors[k] = mine_neighbors(self.features, k, verbose=self.progress)
            self.prep_seconds += time.perf_counter() - t0
        return self._neighbors[k]


class ClusteringMethod:
    """Base of the registered methods: stores ``n_clusters``, ``random_state``, ``verbose`` and ``options``."""

    name = "?"
    #: True for methods that use all of ``MethodInputs.spaces`` (several backbones' aligned features at once)
    multi_space = False
    #: True when ``score_`` compares between runs on different feature spaces (backbones): a loss over
    #: probabilities. False when it does not: k-means inertia is in the units of the features, and TURTLE's
    #: cross-validated linear accuracy rises with the dimension of the space for any labeling. Such scores are
    #: compared only between runs on the same space(s) (:mod:`ssl_cluster_bench.selection`).
    score_across_spaces = True

    def __init__(self, n_clusters: int, random_state: int = 0, verbose: bool = False, **options):
        self.n_clusters = n_clusters
        self.random_state = random_state
        self.verbose = verbose
        self.options = options

    @classmethod
    def from_protocol(cls, protocol: Protocol, n_clusters: int, random_state: int, verbose: bool = False):
        return cls(n_clusters, random_state=random_state, verbose=verbose, **protocol.options_for(cls.name))

    def fit(self, inputs: MethodInputs) -> "ClusteringMethod":
        raise NotImplementedError

    def fit_predict(self, inputs: MethodInputs) -> np.ndarray:
        return self.fit(inputs).labels_


@register_method("kmeans")
class KMeansMethod(ClusteringMethod):
    """k-means on the PCA-reduced features, as ``protocol.kmeans`` says; score = inertia per row."""

    score_across_spaces = False

    @classmethod
    def from_protocol(cls, protocol, n_clusters, random_state, verbose=False):
        return cls(n_clusters, random_state=random_state, verbose=verbose, settings=protocol.kmeans)

    def fit(self, inputs: MethodInputs) -> "KMeansMethod":
        from .protocol import KMeansSettings

        settings = self.options.get("settings") or KMeansSettings()
        reduced = inputs.reduced
        km = settings.make(self.n_clusters, self.random_state, progress=self.verbose).fit(reduced)
        self.estimator_ = km
        self.labels_, self.probs_, self.degenerate_ = km.labels_, None, False
        empty = int(self.n_clusters) - np.unique(km.labels_).size
        self.flag_ = f"empty_clusters={empty}" if empty else ""
        self.score_ = km.inertia_ / max(1, reduced.shape[0])
        p = inputs.protocol
        self.config_ = {"pca_dim": reduced.shape[1], "whiten": p.whiten, "l2_normalize": p.l2_normalize,
                        **settings.columns(km)}
        return self


class HeadMethod(ClusteringMethod):
    """A clustering head of :mod:`ssl_cluster_bench.heads` trained on the cached features themselves.

    Heads standardise the features internally; doing so on PCA components would amount to whitening, which
    costs them accuracy, so they skip the protocol's reduction. score = the estimator's ``score_`` where it has
    one (SCAN, TEMI: the kept head's loss), else the lowest of its ``head_losses_``.
    """

    head_options: dict = {}

    def _estimator(self):
        raise NotImplementedError

    def _fit_estimator(self, est, inputs: MethodInputs):
        return est.fit(inputs.features, augmented=inputs.augmented)

    def fit(self, inputs: MethodInputs) -> "HeadMethod":
        est = self._fit_estimator(self._estimator()(n_clusters=self.n_clusters, random_state=self.random_state,
                                                    verbose=self.verbose, **self.head_options, **self.options),
                                  inputs)
        self.estimator_ = est
        self.labels_, self.probs_ = est.labels_, est.probs_
        self.degenerate_ = bool(getattr(est, "degenerate_", False))
        self.flag_ = "degenerate" if self.degenerate_ else ""
        losses = getattr(est, "head_losses_", None)
        own = getattr(est, "score_", None)
        self.score_ = float(own) if own is not None else float(np.min(losses)) if losses is not None else None
        self.config_ = {"backend": "torch", "pca_dim": inputs.features.shape[1], "whiten": False,
                        "l2_normalize": False}
        return self


@register_method("scan")
class SCANMethod(HeadMethod):
    """SCAN (neighbours shared across seeds and k); score = the lowest SCAN loss among its heads."""

    head_options = {"self_label": False}

    def _estimator(self):
        from .heads import SCAN

        return SCAN

    def _fit_estimator(self, est, inputs):
        return est.fit(inputs.features, augmented=inputs.augmented,
                       neighbors=inputs.neighbors(int(self.options.get("n_neighbors", 20))))


@register_method("scan+selflabel")
class SCANSelfLabelMethod(SCANMethod):
    """SCAN followed by its self-labeling step."""

    head_options = {"self_label": True}


@register_method("mmdc")
class MMDCMethod(HeadMethod):
    """MMDC: Gaussian-mixture target points, per-batch Hungarian matching."""

    def _estimator(self):
        from .heads.mmdc import MMDC

        return MMDC


@register_method("twostage")
class TwoStageMethod(HeadMethod):
    """TwoStageUC: normalised-FC heads, IIC mutual information between views."""

    def _estimator(self):
        from .heads.twostage import TwoStageUC

        return TwoStageUC


@register_method("temi")
class TEMIMethod(HeadMethod):
    """TEMI (neighbours shared across seeds and k); score = the kept head's TEMI loss."""

    def _estimator(self):
        from .heads.temi import TEMI

        return TEMI

    def _fit_estimator(self, est, inputs):
        return est.fit(inputs.features, neighbors=inputs.neighbors(int(self.options.get("n_neighbors", 50))))


@register_method("turtle")
class TURTLEMethod(HeadMethod):
    """TURTLE on every aligned space of the inputs (one backbone: its features; a joint run: all of them).

    score = 1 − TURTLE's generalisation score: the cross-validated error of linear classifiers trained on the
    found labels (lower is better, as for every method).
    """

    multi_space = True
    score_across_spaces = False

    def _estimator(self):
        from .heads.turtle import TURTLE

        return TURTLE

    def _fit_estimator(self, est, inputs):
        return est.fit(inputs.spaces)

    def fit(self, inputs: MethodInputs) -> "TURTLEMethod":
        super().fit(inputs)
        self.score_ = 1.0 - self.estimator_.score_
        self.config_["pca_dim"] = int(sum(z.shape[1] for z in inputs.spaces))
        return self
