"""Methods: the registry of clustering methods (name -> estimator class) and the inputs they share.

Entry points:
    @register_method("name")         class decorator: makes the class available by name
    get_method(name) -> class        (clear error listing the known names)
    list_methods() -> [names]
    check_options(name, options)     protocol ``method_options`` of one method checked against its parameters
    MethodInputs(features, protocol, augmented=None, spaces=None)   what a method may use, computed once

A method class follows the estimator contract: ``__init__(n_clusters, random_state=0, verbose=False,
**options)`` stores its arguments; ``fit(inputs)`` returns self with ``labels_`` (n,) int64, ``probs_`` (n, k)
or None, ``degenerate_`` (bool), ``score_`` (its own label-free criterion, lower is better, or None) and
``config_`` (extra leaderboard columns: backend, pca_dim, ...). ``multi_space = True`` marks a method that
uses every aligned space in ``inputs.spaces`` (joint runs over several backbones take only those). ``from_protocol`` builds it from a
:class:`~ssl_cluster_bench.protocol.Protocol`. A new method is one module plus one ``register_method`` line.
``verbose=True`` shows the method's own bars (epochs, restarts) when it is used directly; a run builds it with
``verbose=False`` and advances one bar per method itself (:mod:`ssl_cluster_bench.progress`).
"""
from __future__ import annotations

import difflib
import inspect
import math
import time
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

from .cluster import KMeansSettings
from .errors import did_you_mean
from .heads.constraints import Interval, Options

if TYPE_CHECKING:  # annotations only: protocol.py checks its method names against this registry
    from .protocol import Protocol

__all__ = ["ClusteringMethod", "MethodInputs", "check_options", "get_method", "list_methods",
           "register_method"]

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


# Set by the runner (k and seed from the protocol; verbose=False, as the runner owns the method's one progress
# bar), never by a method's options
_RUNNER_ARGS = ("self", "n_clusters", "random_state", "verbose")
_TYPE_WORDS = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string", "None": "null"}


def _annotation_types(annotation) -> set[str] | None:
    """{"int", "None", ...} of a parameter annotated with plain types, or None when it is not checked here."""
    if annotation is inspect.Parameter.empty:
        return None
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    names = {t.strip().replace("NoneType", "None") for t in text.split("|")}
    return names if names <= set(_TYPE_WORDS) else None


def _type_ok(value, types: set[str]) -> bool:
    # plain Python values only (as YAML gives them): the options are dumped to YAML and hashed as JSON
    return ((value is None and "None" in types) or (isinstance(value, bool) and "bool" in types)
            or (not isinstance(value, bool) and (
                (isinstance(value, int) and ("int" in types or "float" in types))
                or (isinstance(value, float) and "float" in types)
                or (isinstance(value, str) and "str" in types))))


def check_options(method: str, options: Mapping) -> None:
    """Raise ValueError unless every option is a parameter of ``method`` with a value it accepts.

    The message names ``method_options.<method>.<option>``, the close spellings (difflib) and the parameters
    the method takes. A value is checked against the method's ``option_constraints()`` (a head: its
    estimator's ``_parameter_constraints``, the same check ``fit`` makes), else against the parameter's plain
    type annotation. Methods whose ``__init__`` takes ``**options`` (the base class) are not checked.
    """
    from .heads.constraints import check_param

    try:
        cls = get_method(method)
    except ValueError as e:
        raise ValueError(f"method_options: {e}") from None
    params = cls.option_parameters()
    if params is None:
        return
    constraints = cls.option_constraints()
    for key, value in options.items():
        where = f"method_options.{method}.{key}"
        if key not in params:
            hint = did_you_mean(key, params)
            takes = f"{method} takes: {', '.join(params)}" if params else f"{method} takes no options"
            raise ValueError(f"method_options.{method}: unknown option {key!r}{hint}; {takes}"
                             + (f". {cls.options_note}" if cls.options_note else ""))
        if key in constraints:
            check_param(key, value, constraints[key], where=f"method_options.{method}.")
        types = _annotation_types(params[key].annotation)
        if types is not None and not _type_ok(value, types):
            words = " or ".join(_TYPE_WORDS[t] for t in sorted(types, key=list(_TYPE_WORDS).index))
            raise ValueError(f"{where} must be {words}, got {value!r}")
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise ValueError(f"{where} must be a plain YAML value (a number, a string, true/false or null), "
                             f"got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where} must be finite, got {value!r}")


class MethodInputs:
    """Everything a method may read, each derived once and shared by every method × k × seed of a run.

    ``features`` are the cached features as stored; ``reduced_for(seed)`` is the protocol's reduction (PCA,
    zscore+pca, umap or none; computed on first use, once per seed only for a seeded reducer) and ``reduced`` that
    of the first seed; ``neighbors(k)`` the cosine k nearest neighbours (self excluded, computed once per k); ``augmented``
    the cached augmented views (views, n, d) or None; ``spaces`` the aligned feature matrices of multi-space
    methods (default: just ``features``). ``prep_seconds`` counts the time spent deriving them. ``progress``: the
    reduction shows its one bar (see :mod:`ssl_cluster_bench.progress`); neighbour mining runs inside a
    method's fit, whose bar the runner owns, so it shows none.
    """

    def __init__(self, features, protocol: Protocol, *, augmented=None, spaces=None, progress: bool = True):
        self.features = features
        self.protocol = protocol
        self.augmented = augmented
        self.spaces = list(spaces) if spaces is not None else [features]
        self.progress = progress
        self.prep_seconds = 0.0
        self._reduced: dict = {}
        self._neighbors: dict[int, np.ndarray] = {}

    @property
    def reduced(self) -> np.ndarray:
        """The protocol's reduction of the features (of the first seed, for a seeded reducer such as umap)."""
        return self.reduced_for(self.protocol.seeds[0])

    def reduced_for(self, seed: int) -> np.ndarray:
        """The protocol's reduction (:func:`ssl_cluster_bench.reduce.reduce_features`) as seen by ``seed``: one
        array shared by every seed unless the reducer is seeded (umap), which is fitted once per seed."""
        from .reduce import REDUCERS, reduce_features

        key = int(seed) if REDUCERS[self.protocol.reduce].seeded else None
        if key not in self._reduced:
            t0 = time.perf_counter()
            self._reduced[key] = reduce_features(self.features, self.protocol, random_state=key or 0,
                                                 progress=self.progress)
            self.prep_seconds += time.perf_counter() - t0
        return self._reduced[key]

    def neighbors(self, k: int) -> np.ndarray:
        k = int(k)
        if k not in self._neighbors:
            from .heads import mine_neighbors

            t0 = time.perf_counter()
            self._neighbors[k] = mine_neighbors(self.features, k, verbose=False)
            self.prep_seconds += time.perf_counter() - t0
        return self._neighbors[k]


def reduced_columns(protocol: Protocol, reduced) -> dict:
    """Leaderboard columns naming the space a method clustered: the reducer, its output dim, whitening, L2."""
    from .reduce import REDUCERS

    return {"reduce": protocol.reduce, "pca_dim": int(reduced.shape[1]),
            "whiten": protocol.whiten and REDUCERS[protocol.reduce].uses_pca, "l2_normalize": protocol.l2_normalize}


class ClusteringMethod:
    """Base of the registered methods: stores ``n_clusters``, ``random_state``, ``verbose`` and ``options``."""

    name = "?"
    #: True for methods that use all of ``MethodInputs.spaces`` (several backbones' aligned features at once)
    multi_space = False
    #: True when ``score_`` compares between runs on different feature spaces (backbones): a loss over
    #: probabilities. False when it does not: k-means inertia is in the units of the features, and TURTLE's
    #: cross-validated linear accuracy rises with the dimension of the space for any labeling. Such scores are
    #: compared only between runs on the same space(s) (:mod:`ssl_cluster_bench.criteria`).
    score_across_spaces = True

    #: shown after the list of options when an unknown one is given (where the method's settings live instead)
    options_note = ""
    #: True when ``labels_`` may hold -1 for points left out of every cluster (noise; hdbscan)
    has_noise = False

    @classmethod
    def k_free(cls, options: Mapping) -> bool:
        """True when the method finds its own number of clusters with these options (``n_clusters`` is ignored;
        the row records the number found): hdbscan, affinity, agglomerative with a distance_threshold."""
        return False

    @classmethod
    def check_size(cls, n_samples: int, dim: int, options: Mapping) -> None:
        """Raise ValueError (one line: the size, what runs out, the limit, what to do) when the method cannot
        finish on ``n_samples`` rows on this machine; called for every method before the first fit."""

    def __init__(self, n_clusters: int, random_state: int = 0, verbose: bool = False, **options):
        self.n_clusters = n_clusters
        self.random_state = random_state
        self.verbose = verbose
        self.options = options

    @classmethod
    def option_parameters(cls) -> dict[str, inspect.Parameter] | None:
        """The options a protocol may set (name -> parameter of ``__init__``); None: any (``**options``)."""
        params = inspect.signature(cls.__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return None
        return {n: p for n, p in params.items() if n not in _RUNNER_ARGS}

    @classmethod
    def option_constraints(cls) -> dict:
        """Option name -> declarative constraints (see :mod:`ssl_cluster_bench.heads.constraints`) checked where
        a protocol is read; options not listed are checked by their type annotation only."""
        return {}

    @classmethod
    def from_protocol(cls, protocol: Protocol, n_clusters: int | None, random_state: int, verbose: bool = False):
        return cls(n_clusters, random_state=random_state, verbose=verbose, **protocol.options_for(cls.name))

    def fit(self, inputs: MethodInputs) -> "ClusteringMethod":
        raise NotImplementedError

    def fit_predict(self, inputs: MethodInputs) -> np.ndarray:
        return self.fit(inputs).labels_


@register_method("kmeans")
class KMeansMethod(ClusteringMethod):
    """k-means on the PCA-reduced features, as ``protocol.kmeans`` says; score = inertia per row."""

    score_across_spaces = False
    options_note = ("k-means is set by the protocol's kmeans field (backend, n_init, n_iter, "
                    "max_points_per_centroid), not by method_options")

    @classmethod
    def option_parameters(cls):
        return {}

    @classmethod
    def from_protocol(cls, protocol, n_clusters, random_state, verbose=False):
        return cls(n_clusters, random_state=random_state, verbose=verbose, settings=protocol.kmeans)

    def fit(self, inputs: MethodInputs) -> "KMeansMethod":
        settings = self.options.get("settings") or KMeansSettings()
        reduced = inputs.reduced_for(self.random_state)
        km = settings.make(self.n_clusters, self.random_state, progress=self.verbose).fit(reduced)
        self.estimator_ = km
        self.labels_, self.probs_, self.degenerate_ = km.labels_, None, False
        empty = int(self.n_clusters) - np.unique(km.labels_).size
        self.flag_ = f"empty_clusters={empty}" if empty else ""
        self.score_ = km.inertia_ / max(1, reduced.shape[0])
        p = inputs.protocol
        self.config_ = {**reduced_columns(p, reduced), **settings.columns(km)}
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

    @classmethod
    def option_parameters(cls):
        # the estimator's __init__ is the list of options; _estimator reads no state, so a bare instance names it
        est = object.__new__(cls)._estimator()
        params = inspect.signature(est.__init__).parameters
        return {n: p for n, p in params.items() if n not in _RUNNER_ARGS and n not in cls.head_options
                and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}

    @classmethod
    def option_constraints(cls):
        # the estimator's own constraints: the protocol refuses what fit would refuse, before any extraction
        constraints = object.__new__(cls)._estimator()._parameter_constraints
        return {n: constraints[n] for n in cls.option_parameters()}

    def option(self, name: str):
        """An option's value: the protocol's, else the estimator's default (defaults live on the estimator)."""
        return self.options.get(name, self.option_parameters()[name].default)

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
        self.config_ = {"backend": "torch", "reduce": "none", "pca_dim": inputs.features.shape[1], "whiten": False,
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
                       neighbors=inputs.neighbors(int(self.option("n_neighbors"))))


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
        return est.fit(inputs.features, neighbors=inputs.neighbors(int(self.option("n_neighbors"))))


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


# --- Lowe et al.'s clusterers (scikit-learn's estimators on the protocol's reduced space) ------------------------
def _available_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2 ** 30:,.1f} GiB"


class ReducedSpaceMethod(ClusteringMethod):
    """A scikit-learn clusterer fitted on the protocol's reduced features (``inputs.reduced_for(seed)``).

    ``max_samples``: above it the method is refused before any fit: its time grows with the square (or more) of
    the rows, measured on this project's 2-core CPU machine (benchmarks/peer_method_limits.py) so that one fit
    stays under about ten minutes. ``bytes_per_pair``: memory per pair of rows its dense matrices hold (refused
    when they would not fit in the available memory).
    """

    max_samples: int | None = None
    bytes_per_pair: float = 0.0
    why_limit = ""
    # option -> accepted values (heads/constraints.py), checked where the protocol is read and again at fit
    _parameter_constraints: dict = {}

    @classmethod
    def option_constraints(cls):
        return cls._parameter_constraints

    @classmethod
    def check_size(cls, n_samples, dim, options):
        need = cls.bytes_per_pair * float(n_samples) ** 2
        available = _available_memory()
        if need and need > 0.5 * available:
            raise ValueError(f"{cls.name} on {n_samples:,} samples needs {_gib(need)} for {cls.why_limit} "
                             f"(half the {_gib(available)} of memory available here is the limit): refused before "
                             f"any fit; cluster a subset of the data (e.g. --subset) or use kmeans")
        if cls.max_samples is not None and n_samples > cls.max_samples:
            raise ValueError(f"{cls.name} on {n_samples:,} samples is beyond its measured limit of "
                             f"{cls.max_samples:,} on this machine ({cls.why_limit}; its time grows with the square "
                             f"of the samples, so it would run for hours): refused before any fit; cluster a "
                             f"subset of the data or use kmeans")

    def _estimator(self, n_samples: int):
        raise NotImplementedError

    def fit(self, inputs: MethodInputs) -> "ReducedSpaceMethod":
        from .heads.constraints import check_param

        for option, constraints in self._parameter_constraints.items():
            check_param(option, getattr(self, option), constraints, where=f"method_options.{self.name}.")
        reduced = inputs.reduced_for(self.random_state)
        est = self._estimator(reduced.shape[0]).fit(reduced)
        self.estimator_ = est
        labels = np.asarray(est.labels_, dtype=np.int64)
        self.labels_, self.probs_, self.degenerate_ = labels, None, False
        found = np.unique(labels[labels >= 0]).size
        self.n_found_ = int(found)
        self.degenerate_ = found < 2
        self.flag_ = "degenerate" if self.degenerate_ else ""
        self.score_ = None
        self.config_ = {**reduced_columns(inputs.protocol, reduced), "backend": "sklearn"}
        return self


@register_method("agglomerative")
class AgglomerativeMethod(ReducedSpaceMethod):
    """Agglomerative clustering (Ward by default) of the reduced features, to k or to a distance_threshold.

    scikit-learn's estimator; with ``distance_threshold`` k is unknown: the tree is cut where merges get that far
    apart, and the row records the number found."""

    # scipy's linkage keeps the condensed distance matrix: n(n-1)/2 float64, plus its copy while it is built
    bytes_per_pair = 8.0
    max_samples = 40000
    why_limit = "the pairwise distance matrix of the linkage tree"
    _parameter_constraints = {"linkage": [Options("ward", "complete", "average", "single")],
                              "distance_threshold": [None, Interval("real", 0, None, closed="neither")]}

    def __init__(self, n_clusters, random_state: int = 0, verbose: bool = False, linkage: str = "ward",
                 distance_threshold: float | None = None):
        super().__init__(n_clusters, random_state, verbose)
        self.linkage = linkage
        self.distance_threshold = distance_threshold

    @classmethod
    def k_free(cls, options):
        return options.get("distance_threshold") is not None

    def _estimator(self, n_samples):
        from sklearn.cluster import AgglomerativeClustering

        if self.distance_threshold is not None:
            return AgglomerativeClustering(n_clusters=None, distance_threshold=self.distance_threshold,
                                           linkage=self.linkage)
        return AgglomerativeClustering(n_clusters=int(self.n_clusters), linkage=self.linkage)


@register_method("hdbscan")
class HDBSCANMethod(ReducedSpaceMethod):
    """HDBSCAN of the reduced features: finds its own k, leaves noise points out (scored both ways).

    scikit-learn's ``sklearn.cluster.HDBSCAN``; points of no dense region get label -1 (noise). Rows are scored
    with the noise as one extra cluster and without it (the *_clustered columns), with ``noise_fraction``."""

    has_noise = True
    max_samples = 50000
    why_limit = "its mutual-reachability spanning tree in the reduced space"
    _parameter_constraints = {"min_cluster_size": [Interval("int", 2, None)],
                              "min_samples": [None, Interval("int", 1, None)],
                              "cluster_selection_method": [Options("eom", "leaf")]}

    def __init__(self, n_clusters=None, random_state: int = 0, verbose: bool = False, min_cluster_size: int = 5,
                 min_samples: int | None = None, cluster_selection_method: str = "eom"):
        super().__init__(n_clusters, random_state, verbose)
        self.min_cluster_size = min_cluster_size
        self.min_samples = min_samples
        self.cluster_selection_method = cluster_selection_method

    @classmethod
    def k_free(cls, options):
        return True

    def _estimator(self, n_samples):
        from sklearn.cluster import HDBSCAN

        # copy: scikit-learn 1.8 warns unless it is given; the reduced features are shared with the other rows
        copy = {"copy": True} if "copy" in inspect.signature(HDBSCAN).parameters else {}
        return HDBSCAN(min_cluster_size=self.min_cluster_size, min_samples=self.min_samples,
                       cluster_selection_method=self.cluster_selection_method, **copy)



@register_method("spectral")
class SpectralMethod(ReducedSpaceMethod):
    """Spectral clustering of the reduced features' k-nearest-neighbour graph (scikit-learn).

    The sparse neighbour graph scales past the dense RBF kernel (``affinity: rbf``); labels are assigned by
    k-means in the spectral embedding."""

    max_samples = 50000
    why_limit = "the eigenvectors of its neighbour graph"
    _parameter_constraints = {"n_neighbors": [Interval("int", 1, None)],
                              "affinity": [Options("nearest_neighbors", "rbf")]}

    def __init__(self, n_clusters, random_state: int = 0, verbose: bool = False, n_neighbors: int = 10,
                 affinity: str = "nearest_neighbors"):
        super().__init__(n_clusters, random_state, verbose)
        self.n_neighbors = n_neighbors
        self.affinity = affinity

    @classmethod
    def check_size(cls, n_samples, dim, options):
        if options.get("affinity") == "rbf":
            # the dense kernel: n × n float64, plus the Laplacian made from it
            need = 16.0 * float(n_samples) ** 2
            available = _available_memory()
            if need > 0.5 * available:
                raise ValueError(f"spectral (affinity rbf) on {n_samples:,} samples needs {_gib(need)} for its "
                                 f"dense kernel (half the {_gib(available)} available here is the limit): refused "
                                 f"before any fit; use affinity nearest_neighbors or a subset")
        super().check_size(n_samples, dim, options)

    def _estimator(self, n_samples):
        from sklearn.cluster import SpectralClustering

        return SpectralClustering(n_clusters=int(self.n_clusters), affinity=self.affinity,
                                  n_neighbors=int(min(self.n_neighbors, n_samples - 1)),
                                  assign_labels="kmeans", random_state=self.random_state)


@register_method("affinity")
class AffinityPropagationMethod(ReducedSpaceMethod):
    """Affinity propagation of the reduced features (scikit-learn): finds its own number of clusters.

    The number is set by ``preference`` (None = the median similarity); damping 0.5 and at most 1000 iterations
    as Lowe et al. run it."""

    # the similarity, responsibility and availability matrices (n × n float64 each) and a temporary
    bytes_per_pair = 32.0
    max_samples = 10000
    why_limit = "its three dense n × n message matrices"
    _parameter_constraints = {"damping": [Interval("real", 0.5, 1, closed="left")],
                              "max_iter": [Interval("int", 1, None)],
                              "preference": [None, Interval("real")]}

    def __init__(self, n_clusters=None, random_state: int = 0, verbose: bool = False, damping: float = 0.5,
                 max_iter: int = 1000, preference: float | None = None):
        super().__init__(n_clusters, random_state, verbose)
        self.damping = damping
        self.max_iter = max_iter
        self.preference = preference

    @classmethod
    def k_free(cls, options):
        return True

    def _estimator(self, n_samples):
        from sklearn.cluster import AffinityPropagation

        return AffinityPropagation(damping=self.damping, max_iter=int(self.max_iter), preference=self.preference,
                                   random_state=self.random_state)

    def fit(self, inputs):
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            super().fit(inputs)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            # scikit-learn labels every point -1 when the messages did not converge: say so in the row
            self.flag_ = "not_converged"
            self.degenerate_ = True
        self.labels_ = np.where(self.labels_ < 0, 0, self.labels_)  # no noise: non-convergence is one cluster
        return self
