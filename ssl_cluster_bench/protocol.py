"""Protocol: the whole clustering protocol as one record (what is clustered, and how).

Entry points:
    Protocol(methods=("kmeans",), overcluster=(1.0, 1.5), seeds=5, pca_dim=256, reduce="pca", ...)   frozen
                                     dataclass (``n_clusters="auto"``: k picked by a label-free criterion)
    Protocol.from_yaml(path) / .to_yaml(path=None) / .from_dict(d) / .to_dict() / .replace(**changes)
    Protocol.hash                    12 hex chars of the canonical JSON: names the whole record
    Protocol.row_hash(method)        what one leaderboard row depends on (stored as ``protocol_hash``)
    resolve_protocol(protocol=None, **changes) -> Protocol   (None, a Protocol, a dict or a YAML path)

The CLI, the Python API and suite files all build this record and pass it down whole, so a run can be saved,
diffed and shared, and rows made under different protocols are never averaged together.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .cluster import KMeansSettings  # how k-means runs: a field of the protocol, defined beside KMeans
from .errors import did_you_mean

__all__ = ["KMeansSettings", "Protocol", "resolve_protocol"]


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    # plain Python numbers (numpy floats are floats): the record is dumped to YAML and hashed as JSON
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _as_tuple(value) -> tuple | None:
    """``value`` as a tuple when it is a list-like of values (not a string, mapping or scalar), else None."""
    if isinstance(value, (str, bytes, Mapping)):
        return None
    try:
        return tuple(value)
    except TypeError:
        return None


# Fields that list which rows to make; each row depends only on its own method, k and seed, so these are left
# out of a row's hash (adding a seed or a method to a run does not change the rows it already made).
_RUN_LIST_FIELDS = ("methods", "overcluster", "n_clusters", "seeds")
# Fields added after rows were committed, with their defaults: left out of to_dict() (so of every hash) while they
# hold these values, so the rows of the default protocol (reduce "pca") keep the hash they were written with.
_LATER_FIELDS = {"reduce": "pca", "reduce_options": {}, "k_grid": None, "k_criterion": "silhouette"}
#: label-free criteria ``n_clusters="auto"`` may pick k by (computed on the reduced features), and their direction
K_CRITERIA = {"silhouette": "max", "calinski_harabasz": "max", "davies_bouldin": "min"}


@dataclass(frozen=True)
class Protocol:
    """What is clustered and how.

    methods : method names from the registry (:func:`ssl_cluster_bench.methods.list_methods`).
    overcluster : k = round(factor × #classes) for each factor; ignored when ``n_clusters`` is given.
    n_clusters : explicit k values, or "auto": k picked per (data, method) by ``k_criterion`` over ``k_grid``.
    seeds : an int n (seeds 0..n-1) or explicit seeds.
    pca_dim, whiten, l2_normalize : the PCA of the "pca" and "zscore+pca" reducers (None = no PCA);
        l2_normalize applies after every reducer.
    reduce : the reducer (:data:`ssl_cluster_bench.reduce.REDUCERS`): "pca", "zscore+pca", "umap" or "none".
    reduce_options : the reducer's own settings (umap: n_components, n_neighbors, min_dist, metric), filled in
        with their defaults so that the hash names them.
    k_grid : the k values ``n_clusters="auto"`` tries (None: 2 .. 2 × #classes).
    k_criterion : "silhouette" (default), "calinski_harabasz" or "davies_bouldin".
    kmeans : :class:`KMeansSettings` (a dict is accepted).
    method_options : per-method keyword options, e.g. ``{"scan": {"n_neighbors": 20}}``.
    """

    methods: tuple[str, ...] = ("kmeans",)
    overcluster: tuple[float, ...] = (1.0, 1.5)
    n_clusters: tuple[int, ...] | str | None = None
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    pca_dim: int | None = 256
    whiten: bool = False
    l2_normalize: bool = False
    kmeans: KMeansSettings = field(default_factory=KMeansSettings)
    method_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    reduce: str = "pca"
    reduce_options: Mapping[str, Any] = field(default_factory=dict)
    k_grid: tuple[int, ...] | None = None
    k_criterion: str = "silhouette"

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        methods = (self.methods,) if isinstance(self.methods, str) else _as_tuple(self.methods)
        if not methods or not all(isinstance(m, str) and m for m in methods):
            raise ValueError(f"methods must be a non-empty list of method names, got {self.methods!r}")
        if len(set(methods)) != len(methods):
            raise ValueError(f"methods lists a method twice: {list(methods)}")
        from .methods import get_method  # the registry imports this module; looked up at construction time

        for name in methods:
            get_method(name)  # an unknown name fails here, before any feature is extracted (with did-you-mean)
        set_("methods", methods)
        overcluster = _as_tuple(self.overcluster)
        if not overcluster or not all(_is_number(f) and 0 < f < math.inf for f in overcluster):
            raise ValueError(f"overcluster factors must be positive finite numbers (k = factor × #classes), given "
                             f"as a non-empty list; got {self.overcluster!r}")
        set_("overcluster", tuple(float(f) for f in overcluster))
        if self.n_clusters == "auto":
            pass
        elif self.n_clusters is not None:
            ks = _as_tuple(self.n_clusters)
            if not ks or not all(_is_int(k) and k >= 2 for k in ks):
                raise ValueError(f"n_clusters must be a list of integers >= 2 or \"auto\", got {self.n_clusters!r}")
            set_("n_clusters", tuple(int(k) for k in ks))
        if self.k_grid is not None:
            grid = _as_tuple(self.k_grid)
            if not grid or not all(_is_int(k) and k >= 2 for k in grid):
                raise ValueError(f"k_grid must be a list of integers >= 2 (the k values n_clusters: auto tries), "
                                 f"got {self.k_grid!r}")
            if self.n_clusters != "auto":
                raise ValueError("k_grid is used only with n_clusters: auto (k picked by a label-free criterion); "
                                 "set n_clusters to auto or drop k_grid")
            set_("k_grid", tuple(sorted(set(int(k) for k in grid))))
        if self.k_criterion not in K_CRITERIA:
            raise ValueError(f"k_criterion must be one of {', '.join(K_CRITERIA)}, got {self.k_criterion!r}"
                             f"{did_you_mean(self.k_criterion, K_CRITERIA)}")
        if _is_int(self.seeds):
            if self.seeds < 1:
                raise ValueError(f"seeds must be a count >= 1 or a list of integers >= 0, got {self.seeds!r}")
            seeds = tuple(range(self.seeds))
        elif _as_tuple(self.seeds) and all(_is_int(s) and s >= 0 for s in _as_tuple(self.seeds)):
            seeds = tuple(int(s) for s in _as_tuple(self.seeds))
            if len(set(seeds)) != len(seeds):
                raise ValueError(f"seeds lists a seed twice: {list(seeds)} (each seed is one run)")
        else:
            raise ValueError(f"seeds must be a count >= 1 or a list of integers >= 0, got {self.seeds!r}")
        set_("seeds", seeds)
        if self.pca_dim is not None and (not _is_int(self.pca_dim) or self.pca_dim < 1):
            raise ValueError(f"pca_dim must be a positive integer or null (no PCA), got {self.pca_dim!r}")
        for name in ("whiten", "l2_normalize"):
            # YAML reads `whiten: "no"` as a string, which is truthy: only real booleans are accepted
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false (unquoted in YAML), got {getattr(self, name)!r}")
        if isinstance(self.kmeans, Mapping):
            known = [f.name for f in dataclasses.fields(KMeansSettings)]
            unknown = [k for k in self.kmeans if k not in known]
            if unknown:
                raise ValueError(f"kmeans: unknown setting {unknown[0]!r}{did_you_mean(unknown[0], known)}; "
                                 f"known settings: {', '.join(known)}")
            set_("kmeans", KMeansSettings(**self.kmeans))
        elif not isinstance(self.kmeans, KMeansSettings):
            raise ValueError(f"kmeans must be KMeansSettings or a dict, got {type(self.kmeans).__name__}")
        if not isinstance(self.method_options, Mapping) or not all(
                isinstance(v, Mapping) for v in self.method_options.values()):
            raise ValueError("method_options must map a method name to a dict of its options")
        from .methods import check_options

        for name, options in self.method_options.items():
            check_options(name, options)
        set_("method_options", {str(k): dict(v) for k, v in self.method_options.items()})
        from .reduce import resolve_reducer_options  # the reducer registry: looked up at construction time

        set_("reduce_options", resolve_reducer_options(self.reduce, self.reduce_options))

    # --- conversions ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["methods"], d["overcluster"] = list(self.methods), list(self.overcluster)
        d["n_clusters"] = list(self.n_clusters) if isinstance(self.n_clusters, tuple) else self.n_clusters
        d["seeds"] = len(self.seeds) if self.seeds == tuple(range(len(self.seeds))) else list(self.seeds)
        d["method_options"] = {k: dict(v) for k, v in sorted(self.method_options.items())}
        d["reduce_options"] = dict(sorted(self.reduce_options.items()))
        d["k_grid"] = list(self.k_grid) if self.k_grid is not None else None
        for name, default in _LATER_FIELDS.items():
            if d[name] == default:
                del d[name]  # the hash of a protocol without them stays the one its rows were written with
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Protocol":
        if not isinstance(d, Mapping):
            raise ValueError(f"a protocol must be a mapping of its fields, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown protocol field(s) {unknown}{did_you_mean(unknown[0], known)}; "
                             f"known fields: {sorted(known)}")
        return cls(**d)

    def to_yaml(self, path=None) -> str:
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            from .safeio import atomic_write_text

            atomic_write_text(path, text)
        return text

    @classmethod
    def from_yaml(cls, path) -> "Protocol":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"protocol file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"protocol file {path} is not valid YAML: {e}") from None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"protocol file {path}: {e}") from None

    def replace(self, **changes) -> "Protocol":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown protocol field(s) {unknown}; known fields: {sorted(known)}")
        return dataclasses.replace(self, **changes)

    # --- identity -------------------------------------------------------------------------------------------
    @property
    def hash(self) -> str:
        return _digest(self.to_dict())

    def row_hash(self, method: str) -> str:
        """Hash of what a row of ``method`` depends on: the reduction, and only that method's settings."""
        d = {k: v for k, v in self.to_dict().items() if k not in _RUN_LIST_FIELDS}
        if self.n_clusters == "auto":
            # k picked by a criterion over a grid: a row of that k depends on how it was picked
            d["n_clusters"] = "auto"
        else:
            d.pop("k_grid", None)
            d.pop("k_criterion", None)
        d["method_options"] = d["method_options"].get(method, {})
        if method != "kmeans":
            d.pop("kmeans")
        return _digest({"method": method, **d})

    def options_for(self, method: str) -> dict:
        return dict(self.method_options.get(method, {}))


def _digest(d: Mapping) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def resolve_protocol(protocol=None, **changes) -> Protocol:
    """A :class:`Protocol` from None (the defaults), a Protocol, a dict or a YAML path, with ``changes`` applied."""
    if protocol is None:
        base = Protocol()
    elif isinstance(protocol, Protocol):
        base = protocol
    elif isinstance(protocol, Mapping):
        base = Protocol.from_dict(protocol)
    elif isinstance(protocol, (str, os.PathLike)):
        base = Protocol.from_yaml(protocol)
    else:
        raise ValueError(f"protocol must be a Protocol, a dict or a YAML path, got {type(protocol).__name__}")
    return base.replace(**changes) if changes else base
