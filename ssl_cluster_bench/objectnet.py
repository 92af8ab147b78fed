"""ObjectNet evaluation: cluster ObjectNet directly, and carry ImageNet clusters over to ObjectNet.

Entry points:
    run_objectnet(backbone, imagenet_root, objectnet_root, ...) -> DataFrame   extract + both protocols + leaderboard
    load_objectnet_mapping(mappings_dir, imagenet_classes) -> {ObjectNet class name: {ImageNet class index}}
    direct_protocol(features, labels, overlap_classes, ...) -> DataFrame       one row per k x seed
    transfer_protocol(imnet_features, imnet_labels, on_features, on_labels, on_to_in, ...) -> DataFrame
    direct_scores(...) / transfer_scores(...) -> dict                           the metrics of given clusterings
    summary_table(rows) -> str                                                  mean ± std with the chance level

Protocols (rows carry ``protocol``):

* ``objectnet-direct``: PCA + k-means on the ObjectNet features, k = round(factor x #ObjectNet classes present).
  ACC/NMI/AMI/ARI on every sample. One global cluster -> class matching (Hungarian, many-to-one for extra
  clusters) is computed on all samples; ``acc_overlap`` / ``acc_nonoverlap`` are the fraction of samples of the
  ImageNet-overlapping / non-overlapping classes whose cluster is matched to their own class, so
  ``acc = w * acc_overlap + (1 - w) * acc_nonoverlap`` with w the share of overlapping samples.
* ``objectnet-transfer``: PCA fitted and k-means trained on ImageNet features (k = round(factor x #ImageNet
  classes)); ObjectNet samples of the overlapping classes are projected with that PCA and assigned to the
  nearest ImageNet centroid. ``acc_tr``: the cluster -> ImageNet class matching is computed on ImageNet
  (its labels vs its clusters) and a sample counts as correct when its cluster's class is one of the ImageNet
  classes its ObjectNet class maps to. ``acc_val`` (also stored as ``acc``): the matching is computed on the
  ObjectNet overlap samples themselves. NMI/AMI/ARI are of (ObjectNet label, cluster) on those samples.

``chance`` is the accuracy of putting every evaluated sample into a single cluster (largest class share).

As in ``sscb run``, every row carries a run id (protocol, cache entry, k, seed, protocol hash) and its cluster
assignment of the ObjectNet samples is saved next to the leaderboard (transfer: -1 for samples outside the
mapping); a run already done (:func:`~ssl_cluster_bench.predictions.done_runs`) is not made again.
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import api
from .cache import FeatureCache, resolve_cache
from .leaderboard import aggregate, append_rows, check_writable, default_results_path
from .metrics import evaluate, match_clusters
from .predictions import done_runs, make_run_id, save_predictions, save_sample_scores
from .protocol import KMeansSettings, Protocol, resolve_protocol
from .progress import stage_bar
from .reduce import PCA, reduction_progress
from .specs import BackboneSpec, ExtractSettings, backbone_spec, extract_settings, split_options
from .version import software_versions

__all__ = [
    "MAPPING_FILES",
    "PROTOCOL_DIRECT",
    "PROTOCOL_TRANSFER",
    "chance_level",
    "direct_protocol",
    "direct_scores",
    "imagenet_wnids",
    "load_objectnet_mapping",
    "objectnet_mappings_dir",
    "run_objectnet",
    "summary_table",
    "transfer_protocol",
    "transfer_scores",
]

log = logging.getLogger(__name__)

PROTOCOL_DIRECT = "objectnet-direct"
PROTOCOL_TRANSFER = "objectnet-transfer"

# The four files of objectnet-1.0/mappings/ the mapping is read from (they ship with the dataset).
FOLDER_TO_LABEL = "folder_to_objectnet_label.json"
OBJECTNET_TO_IMAGENET = "objectnet_to_imagenet_1k.json"
IMAGENET_LABELS = "imagenet_to_label_2012_v2"
PYTORCH_TO_LINE = "pytorch_to_imagenet_2012_id.json"
MAPPING_FILES = (FOLDER_TO_LABEL, OBJECTNET_TO_IMAGENET, IMAGENET_LABELS, PYTORCH_TO_LINE)

_ROW_METRICS = ("acc", "nmi", "ami", "ari", "acc_tr", "acc_val", "acc_overlap", "acc_nonoverlap", "chance")


# ---------------------------------------------------------------------------------------------------------
# Mapping ObjectNet classes to ImageNet class indices
# ---------------------------------------------------------------------------------------------------------
def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k wnids in the standard (PyTorch) class-index order, from timm's bundled list."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo("imagenet-1k").label_names())


def objectnet_mappings_dir(objectnet_root: str | os.PathLike) -> Path:
    """``<root>/objectnet-1.0/mappings`` when the release folder is there, else ``<root>/mappings``."""
    root = Path(objectnet_root).expanduser()
    release = root / "objectnet-1.0"
    return release / "mappings" if (release / "images").is_dir() else root / "mappings"


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as exc:
        raise ValueError(f"{str(path)!r}: key {exc.args[0]!r} appears more than once") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} must hold a JSON object, found {type(data).__name__}")
    return data


def _require_mapping_files(mappings_dir: Path) -> None:
    if not mappings_dir.is_dir():
        raise FileNotFoundError(
            f"ObjectNet mappings folder {str(mappings_dir)!r} does not exist; it ships with ObjectNet as "
            f"objectnet-1.0/mappings/ and must hold {', '.join(MAPPING_FILES)}"
        )
    for name in MAPPING_FILES:
        if not (mappings_dir / name).is_file():
            raise FileNotFoundError(
                f"ObjectNet mapping file {str(mappings_dir / name)!r} is missing; it ships with the ObjectNet "
                "download in objectnet-1.0/mappings/ (nothing is downloaded at run time)"
            )


def _read_pytorch_to_line(path: Path, n_lines: int, n_wnids: int) -> dict[int, int]:
    """``{line of imagenet_to_label_2012_v2: PyTorch class index}``, checked for range and duplicates."""
    line_to_index: dict[int, int] = {}
    for key, value in _read_json_object(path).items():
        try:
            index = int(key)
        except ValueError:
            raise ValueError(f"{str(path)!r}: key {key!r} is not a PyTorch class index (an integer)") from None
        if not 0 <= index < n_wnids:
            raise ValueError(f"{str(path)!r}: PyTorch class index {key!r} is out of range 0..{n_wnids - 1}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{str(path)!r}: entry {key!r}: {value!r} is not a line index (an integer)")
        if not 0 <= value < n_lines:
            raise ValueError(
                f"{str(path)!r}: entry {key!r} points to line {value}, but {IMAGENET_LABELS} has {n_lines} lines"
            )
        if value in line_to_index:
            raise ValueError(
                f"{str(path)!r}: line {value} is claimed by PyTorch class indices {line_to_index[value]} and {index}"
            )
        line_to_index[value] = index
    return line_to_index


def load_objectnet_mapping(mappings_dir: str | os.PathLike, imagenet_classes: Sequence[str], *,
                           wnids: Sequence[str] | None = None) -> dict[str, set[int]]:
    """Map ObjectNet class names to indices into ``imagenet_classes``, from ObjectNet's own mapping files.

    ``mappings_dir`` is ``objectnet-1.0/mappings``. ``imagenet_classes`` are the wnids of the user's ImageNet
    in label order (``ImageNetDataset.classes``). The chain is: ObjectNet name -> ImageNet names
    (``objectnet_to_imagenet_1k.json``, "; "-separated) -> line of ``imagenet_to_label_2012_v2`` -> PyTorch class
    index (``pytorch_to_imagenet_2012_id.json``) -> wnid (``wnids``, default the standard ImageNet-1k order)
    -> position in ``imagenet_classes``. ImageNet classes missing from ``imagenet_classes`` are dropped, and so
    are ObjectNet classes left with none. Inconsistent files raise ValueError naming the file and entry.
    """
    mappings_dir = Path(mappings_dir).expanduser()
    _require_mapping_files(mappings_dir)
    wnids = list(imagenet_wnids() if wnids is None else wnids)
    classes = [str(c) for c in imagenet_classes]
    position = {wnid: i for i, wnid in enumerate(classes)}
    if len(position) != len(classes):
        raise ValueError("imagenet_classes lists some class more than once")
    known = set(wnids)
    if not known.intersection(classes):
        raise ValueError(
            f"none of the {len(classes)} ImageNet classes ({', '.join(map(repr, classes[:5]))}"
            f"{', ...' if len(classes) > 5 else ''}) is an ImageNet-1k wnid such as {wnids[0]!r}: the ImageNet "
            "class folders must be named by wnid"
        )
    unknown = [c for c in classes if c not in known]
    if unknown:
        log.warning("%d ImageNet class folder(s) are not ImageNet-1k wnids and take no part in the mapping: %s",
                    len(unknown), ", ".join(unknown[:5]))

    folder_path = mappings_dir / FOLDER_TO_LABEL
    objectnet_labels = set()
    for folder, label in _read_json_object(folder_path).items():
        if not isinstance(label, str):
            raise ValueError(f"{str(folder_path)!r}: folder {folder!r} maps to {label!r}, not a class name")
        objectnet_labels.add(label)

    labels_path = mappings_dir / IMAGENET_LABELS
    lines = [line.strip() for line in labels_path.read_text(encoding="utf-8").splitlines()]
    name_to_lines: dict[str, list[int]] = {}
    for i, name in enumerate(lines):
        if name:
            name_to_lines.setdefault(name, []).append(i)
    line_to_index = _read_pytorch_to_line(mappings_dir / PYTORCH_TO_LINE, len(lines), len(wnids))

    on_path = mappings_dir / OBJECTNET_TO_IMAGENET
    mapping: dict[str, set[int]] = {}
    for on_name, joined in _read_json_object(on_path).items():
        if on_name not in objectnet_labels:
            close = difflib.get_close_matches(on_name, objectnet_labels, n=3)
            hint = f" (close: {', '.join(map(repr, close))})" if close else ""
            raise ValueError(
                f"{str(on_path)!r}: ObjectNet class {on_name!r} is not a class name of {FOLDER_TO_LABEL}{hint}"
            )
        if not isinstance(joined, str) or not joined.strip():
            raise ValueError(f"{str(on_path)!r}: entry {on_name!r} must be ImageNet class names joined by '; '")
        indices: set[int] = set()
        for in_name in (part.strip() for part in joined.split(";")):
            found = name_to_lines.get(in_name)
            if not found:
                close = difflib.get_close_matches(in_name, name_to_lines, n=3)
                hint = f" (close: {', '.join(map(repr, close))})" if close else ""
                raise ValueError(
                    f"{str(on_path)!r}: entry {on_name!r} names ImageNet class {in_name!r}, which is not a line "
                    f"of {str(labels_path)!r}{hint}"
                )
            if len(found) > 1:
                raise ValueError(
                    f"{str(on_path)!r}: entry {on_name!r} names ImageNet class {in_name!r}, which is ambiguous: "
                    f"it is on lines {found} of {str(labels_path)!r}"
                )
            if found[0] not in line_to_index:
                raise ValueError(
                    f"{str(on_path)!r}: entry {on_name!r}: ImageNet class {in_name!r} (line {found[0]} of "
                    f"{IMAGENET_LABELS}) has no PyTorch class index in {PYTORCH_TO_LINE}"
                )
            wnid = wnids[line_to_index[found[0]]]
            if wnid in position:
                indices.add(position[wnid])
        if indices:
            mapping[on_name] = indices
    return mapping


# ---------------------------------------------------------------------------------------------------------
# Scores of given clusterings (pure array functions)
# ---------------------------------------------------------------------------------------------------------
def _int_labels(y, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of integer labels, got shape {y.shape}")
    if y.size and y.dtype.kind not in "iu":
        if y.dtype.kind != "f" or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"{name} must hold integer labels, got dtype {y.dtype}")
    return y.astype(np.int64)


def _same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{name_a} ({a.shape[0]} rows) and {name_b} ({b.shape[0]}) differ in length")


def chance_level(labels) -> float:
    """Accuracy of a single cluster holding every sample: the largest class share."""
    labels = _int_labels(labels, "labels")
    if labels.size == 0:
        raise ValueError("labels are empty: no chance level without samples")
    return float(np.unique(labels, return_counts=True)[1].max() / labels.size)


def _overlap_ids(overlap_classes, labels: np.ndarray) -> np.ndarray:
    arr = np.asarray(list(overlap_classes) if not hasattr(overlap_classes, "__array__") else overlap_classes)
    if arr.dtype == bool:
        if arr.ndim != 1 or arr.size <= labels.max(initial=-1):
            raise ValueError(
                f"overlap_classes as a boolean mask needs one entry per class (labels go up to {labels.max()}), "
                f"got shape {arr.shape}"
            )
        return np.flatnonzero(arr)
    return _int_labels(arr.ravel(), "overlap_classes")


def direct_scores(labels, clusters, overlap_classes) -> dict[str, float]:
    """Metrics of one clustering of ObjectNet: acc, nmi, ami, ari, acc_overlap, acc_nonoverlap, chance.

    ``overlap_classes`` are the class labels with an ImageNet counterpart (ids, or a boolean mask per class).
    ``acc_overlap`` / ``acc_nonoverlap`` restrict the correctness under the global matching (computed once on
    all samples) to the samples of those classes / of the others; NaN when there are no such samples.
    """
    labels = _int_labels(labels, "labels")
    clusters = _int_labels(clusters, "clusters")
    _same_length(labels, clusters, "labels", "clusters")
    scores = evaluate(labels, clusters)
    correct = match_clusters(labels, clusters).map(clusters) == labels
    is_overlap = np.isin(labels, _overlap_ids(overlap_classes, labels))
    scores["acc_overlap"] = float(correct[is_overlap].mean()) if is_overlap.any() else float("nan")
    scores["acc_nonoverlap"] = float(correct[~is_overlap].mean()) if (~is_overlap).any() else float("nan")
    scores["chance"] = chance_level(labels)
    return scores


def _check_on_to_in(on_to_in: Mapping[int, Iterable[int]]) -> dict[int, set[int]]:
    if not isinstance(on_to_in, Mapping) or not on_to_in:
        raise ValueError("on_to_in must be a non-empty dict {ObjectNet class label: set of ImageNet class labels}")
    out: dict[int, set[int]] = {}
    for on_label, in_labels in on_to_in.items():
        targets = {int(i) for i in in_labels}
        if not targets or min(targets) < 0 or int(on_label) < 0:
            raise ValueError(
                f"on_to_in[{on_label!r}] = {in_labels!r}: every ObjectNet class needs a non-empty set of "
                "non-negative ImageNet class labels"
            )
        out[int(on_label)] = targets
    return out


def transfer_scores(imnet_labels, imnet_clusters, on_labels, on_clusters,
                    on_to_in: Mapping[int, Iterable[int]]) -> dict[str, float]:
    """Metrics of ObjectNet samples assigned to clusters learnt on ImageNet.

    Only ObjectNet samples whose label is a key of ``on_to_in`` (ObjectNet label -> ImageNet labels) are scored.
    Returns acc_tr (matching from ImageNet labels vs ImageNet clusters; correct if the cluster's ImageNet class
    is any class the ObjectNet class maps to; clusters no ImageNet sample fell in count as wrong), acc_val
    (matching computed on the scored ObjectNet samples; also returned as acc), nmi, ami, ari, chance, n_samples
    and n_classes. ImageNet labels < 0 (unlabelled) take no part in the matching.
    """
    imnet_labels = _int_labels(imnet_labels, "imnet_labels")
    imnet_clusters = _int_labels(imnet_clusters, "imnet_clusters")
    on_labels = _int_labels(on_labels, "on_labels")
    on_clusters = _int_labels(on_clusters, "on_clusters")
    _same_length(imnet_labels, imnet_clusters, "imnet_labels", "imnet_clusters")
    _same_length(on_labels, on_clusters, "on_labels", "on_clusters")
    on_to_in = _check_on_to_in(on_to_in)
    labelled = imnet_labels >= 0
    if not labelled.any():
        raise ValueError("imnet_labels has no labelled sample (all < 0): acc_tr needs ImageNet labels")
    keep = np.isin(on_labels, np.fromiter(on_to_in, dtype=np.int64))
    if not keep.any():
        raise ValueError("no ObjectNet sample belongs to a class of on_to_in: nothing to evaluate")
    y, c = on_labels[keep], on_clusters[keep]

    imagenet_class = match_clusters(imnet_labels[labelled], imnet_clusters[labelled]).map(c, unknown=-1)
    # (ObjectNet label, ImageNet label) pairs encoded as one integer so np.isin checks set membership.
    width = int(max(imnet_labels.max(), max(max(s) for s in on_to_in.values()))) + 1
    allowed = np.array([o * width + i for o, targets in on_to_in.items() for i in targets], dtype=np.int64)
    correct_tr = (imagenet_class >= 0) & np.isin(y * width + imagenet_class, allowed)

    scores = evaluate(y, c)
    return {
        "acc": scores["acc"],
        "acc_tr": float(correct_tr.mean()),
        "acc_val": scores["acc"],
        "nmi": scores["nmi"],
        "ami": scores["ami"],
        "ari": scores["ari"],
        "chance": chance_level(y),
        "n_samples": int(y.size),
        "n_classes": int(np.unique(y).size),
    }


# ---------------------------------------------------------------------------------------------------------
# Protocols: PCA + k-means over seeds, one row per k x seed
# ---------------------------------------------------------------------------------------------------------
def _check_features(features, name: str) -> None:
    if getattr(features, "ndim", None) != 2:
        raise ValueError(f"{name} must be a 2-D array (n_samples, dim), got shape {getattr(features, 'shape', None)}")
    if features.shape[0] == 0:
        raise ValueError(f"{name} is empty")


def _cluster_counts(n_clusters, overcluster, n_classes: int, n_samples: int, what: str) -> list[tuple[float, int]]:
    """``[(overcluster factor, k)]`` from explicit k values or from factors of ``n_classes``."""
    if n_clusters is not None and overcluster is not None:
        raise ValueError("pass either n_clusters or overcluster, not both")
    if n_clusters is not None:
        ks = [n_clusters] if np.isscalar(n_clusters) else list(n_clusters)
        pairs = [(round(int(k) / n_classes, 4), int(k)) for k in ks]
    else:
        factors = list(overcluster) if overcluster is not None else [1.0]
        bad = [f for f in factors if not f > 0]
        if bad:
            raise ValueError(f"overcluster factors must be positive, got {bad}")
        pairs = [(float(f), max(2, int(round(n_classes * f)))) for f in factors]
    if not pairs:
        raise ValueError("no cluster count given: n_clusters / overcluster is empty")
    for f, k in pairs:
        if k < 1:
            raise ValueError(f"n_clusters must be positive, got {k}")
        if k > n_samples:
            raise ValueError(f"k={k} (factor {f} x {n_classes} classes) exceeds the {n_samples} {what} samples")
    return pairs


def _seed_list(seeds) -> list[int]:
    seeds = list(range(seeds)) if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty: give at least one random seed")
    return seeds


def _fit_pca(features, pca_dim, whiten: bool, l2_normalize: bool) -> tuple[PCA, float]:
    if pca_dim is not None and int(pca_dim) < 1:
        raise ValueError(f"pca_dim must be a positive integer or None, got {pca_dim!r}")
    dim = features.shape[1]
    eff = None if pca_dim is None or int(pca_dim) >= dim else int(pca_dim)
    t0 = time.perf_counter()
    pca = PCA(eff, whiten=whiten, l2_normalize=l2_normalize, progress=False).fit(features)
    return pca, time.perf_counter() - t0


def _row(protocol: str, *, n_classes: int, k: int, factor: float, pca_dim: int, whiten: bool,
         l2_normalize: bool, kmeans: dict, seed: int, n_samples: int, scores: dict, flag: str,
         seconds: float) -> dict:
    row = {"protocol": protocol, "method": "kmeans", "n_classes": n_classes, "n_clusters": k,
           "overcluster": factor, "pca_dim": pca_dim, "whiten": whiten, "l2_normalize": l2_normalize,
           **kmeans, "seed": seed, "n_samples": n_samples}
    row.update({m: float(scores.get(m, np.nan)) for m in _ROW_METRICS})
    row.update({"flag": flag, "seconds": round(seconds, 3)})
    return row


def direct_protocol(features, labels, overlap_classes, *, n_clusters=None,
                    overcluster: Sequence[float] | None = None, seeds: Iterable[int] | int = range(5),
                    pca_dim: int | None = 256, whiten: bool = False, l2_normalize: bool = False,
                    kmeans: KMeansSettings | None = None, progress: bool = True) -> pd.DataFrame:
    """``objectnet-direct``: PCA + k-means on ObjectNet features, scored by :func:`direct_scores`.

    ``features`` (n x d, any row-sliceable array such as a cache memmap) and ``labels`` (n ObjectNet class
    labels) cover every ObjectNet sample; ``overlap_classes`` are the labels with an ImageNet counterpart.
    k is ``n_clusters`` (int or list) or round(factor x #classes present) for each ``overcluster`` factor
    (default 1.0). Returns one row per k x seed with leaderboard columns (identity columns left to the caller).
    """
    _check_features(features, "features")
    labels = _int_labels(labels, "labels")
    _same_length(features, labels, "features", "labels")
    if labels.min() < 0:
        raise ValueError("labels must all be >= 0: every ObjectNet sample has a class")
    n_classes = int(np.unique(labels).size)
    ks = _cluster_counts(n_clusters, overcluster, n_classes, labels.size, "ObjectNet")
    seeds = _seed_list(seeds)
    kmeans = kmeans or KMeansSettings()
    overlap = _overlap_ids(overlap_classes, labels)
    # one bar for the PCA (fit and transform), one for the k-means runs, none of their own (see progress.py)
    with reduction_progress("reduce pca", 2 * int(features.shape[0]), progress=progress):
        pca, pca_seconds = _fit_pca(features, pca_dim, whiten, l2_normalize)
        reduced = pca.transform(features)
    rows, assignments = [], []
    runs = [(f, k, s) for f, k in ks for s in seeds]
    for factor, k, seed in stage_bar(PROTOCOL_DIRECT, len(runs), "run", progress=progress, iterable=runs):
        t0 = time.perf_counter()
        km = kmeans.make(k, seed, progress=False).fit(reduced)
        assignments.append(np.asarray(km.labels_, dtype=np.int64))
        empty = k - np.unique(km.labels_).size
        scores = direct_scores(labels, km.labels_, overlap)
        rows.append(_row(PROTOCOL_DIRECT, n_classes=n_classes, k=k, factor=factor, pca_dim=reduced.shape[1],
                         whiten=whiten, l2_normalize=l2_normalize, kmeans=kmeans.columns(km), seed=seed,
                         n_samples=int(labels.size), scores=scores,
                         flag=f"empty_clusters={empty}" if empty else "",
                         seconds=time.perf_counter() - t0 + pca_seconds / len(runs)))
    df = pd.DataFrame(rows)
    df.attrs["assignments"] = assignments  # cluster of every ObjectNet sample, one array per row
    return df


def transfer_protocol(imnet_features, imnet_labels, on_features, on_labels, on_to_in: Mapping[int, Iterable[int]],
                      n_clusters=None, *, overcluster: Sequence[float] | None = None,
                      seeds: Iterable[int] | int = range(5), pca_dim: int | None = 256, whiten: bool = False,
                      l2_normalize: bool = False, kmeans: KMeansSettings | None = None,
                      progress: bool = True) -> pd.DataFrame:
    """``objectnet-transfer``: PCA + k-means fitted on ImageNet, ObjectNet assigned to those clusters.

    ``imnet_features`` / ``imnet_labels``: the ImageNet set the clusters are learnt on (labels = ImageNet class
    indices, < 0 for unlabelled rows, which are clustered but not used for matching). ``on_features`` /
    ``on_labels``: ObjectNet; only samples whose label is a key of ``on_to_in`` (ObjectNet label -> ImageNet
    labels) are projected and scored. k is ``n_clusters`` (int or list) or round(factor x #ImageNet classes)
    per ``overcluster`` factor (default 1.0). One row per k x seed, scored by :func:`transfer_scores`.
    """
    _check_features(imnet_features, "imnet_features")
    _check_features(on_features, "on_features")
    if imnet_features.shape[1] != on_features.shape[1]:
        raise ValueError(f"imnet_features have dim {imnet_features.shape[1]} but on_features have dim "
                         f"{on_features.shape[1]}: both must come from the same backbone")
    imnet_labels = _int_labels(imnet_labels, "imnet_labels")
    on_labels = _int_labels(on_labels, "on_labels")
    _same_length(imnet_features, imnet_labels, "imnet_features", "imnet_labels")
    _same_length(on_features, on_labels, "on_features", "on_labels")
    on_to_in = _check_on_to_in(on_to_in)
    n_imnet_classes = int(np.unique(imnet_labels[imnet_labels >= 0]).size)
    if n_imnet_classes == 0:
        raise ValueError("imnet_labels has no labelled sample (all < 0): acc_tr needs ImageNet labels")
    ks = _cluster_counts(n_clusters, overcluster, n_imnet_classes, imnet_labels.size, "ImageNet")
    seeds = _seed_list(seeds)
    kmeans = kmeans or KMeansSettings()
    rows_on = np.flatnonzero(np.isin(on_labels, np.fromiter(on_to_in, dtype=np.int64)))
    if rows_on.size == 0:
        raise ValueError("no ObjectNet sample belongs to a class of on_to_in: nothing to evaluate")
    y_on = on_labels[rows_on]

    # one bar for the PCA (fit, then both transforms), one for the k-means runs, none of their own (progress.py)
    with reduction_progress("reduce pca", 2 * int(imnet_features.shape[0]) + int(rows_on.size), progress=progress):
        pca, pca_seconds = _fit_pca(imnet_features, pca_dim, whiten, l2_normalize)
        z_in = pca.transform(imnet_features)
        z_on = pca.transform(np.asarray(on_features[rows_on], dtype=np.float32))
    rows, assignments = [], []
    runs = [(f, k, s) for f, k in ks for s in seeds]
    for factor, k, seed in stage_bar(PROTOCOL_TRANSFER, len(runs), "run", progress=progress, iterable=runs):
        t0 = time.perf_counter()
        km = kmeans.make(k, seed, progress=False).fit(z_in)
        empty = k - np.unique(km.labels_).size
        on_clusters = km.predict(z_on)
        assignment = np.full(on_labels.shape[0], -1, dtype=np.int64)  # -1: a class outside the mapping
        assignment[rows_on] = on_clusters
        assignments.append(assignment)
        scores = transfer_scores(imnet_labels, km.labels_, y_on, on_clusters, on_to_in)
        rows.append(_row(PROTOCOL_TRANSFER, n_classes=scores["n_classes"], k=k, factor=factor,
                         pca_dim=z_in.shape[1], whiten=whiten, l2_normalize=l2_normalize,
                         kmeans=kmeans.columns(km), seed=seed, n_samples=scores["n_samples"], scores=scores,
                         flag=f"empty_clusters={empty}" if empty else "",
                         seconds=time.perf_counter() - t0 + pca_seconds / len(runs)))
    df = pd.DataFrame(rows)
    df.attrs["assignments"] = assignments  # ImageNet cluster of every ObjectNet sample (-1: not evaluated)
    return df


# ---------------------------------------------------------------------------------------------------------
# Entry point: extract, run both protocols, append to the leaderboard
# ---------------------------------------------------------------------------------------------------------
def _imagenet_classes(imagenet_root, split: str) -> list[str]:
    # Same rule as ImageNetDataset without a subset (sorted wnid folders), without indexing 1.28M files.
    from .data.images import list_class_folders

    split_dir = Path(imagenet_root).expanduser() / split
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"ImageNet split folder {str(split_dir)!r} does not exist; expected <imagenet_root>/{split}/<wnid>/*.JPEG"
        )
    classes = list_class_folders(split_dir)
    if not classes:
        raise FileNotFoundError(f"no wnid class folders in {str(split_dir)!r}")
    return classes


def _check_entry_labels(entry, n_classes: int, what: str) -> None:
    labels = entry.labels
    if labels.size and labels.max() >= n_classes:
        raise RuntimeError(
            f"cache entry {entry.path.name} has labels up to {labels.max()} but {what} has {n_classes} classes: "
            "the entry is stale; remove it from the cache and extract again"
        )


def _identity(df: pd.DataFrame, entry, cache_key: str, row_hash: str = "") -> pd.DataFrame:
    key = entry.key
    df.insert(0, "backbone", key.backbone)
    df.insert(1, "weights", key.weights)
    df.insert(2, "dataset", key.dataset)
    df.insert(3, "split", key.split)
    df["cache_key"] = cache_key
    df["protocol_hash"] = row_hash
    df["versions"] = software_versions()
    df["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return df


def run_objectnet(backbone: str | BackboneSpec | None, imagenet_root: str | os.PathLike,
                  objectnet_root: str | os.PathLike, *, imagenet_split: str = "train",
                  results: str | os.PathLike | None = None, cache: str | os.PathLike | FeatureCache | None = None,
                  protocol=None, progress: bool = True, settings: ExtractSettings | None = None,
                  **options) -> pd.DataFrame:
    """Run both ObjectNet protocols for one backbone and append their rows to the leaderboard CSV.

    ``backbone`` is a :class:`~ssl_cluster_bench.specs.BackboneSpec`, a model-card id / card path (or None with
    ``arch`` + ``checkpoint``); keyword ``options`` are backbone options (checkpoint, arch, weights_only,
    momentum_encoder, checkpoint_key, key_match) and extraction options (batch_size, num_workers, device, ...;
    or ``settings``, an :class:`~ssl_cluster_bench.specs.ExtractSettings`), as for
    :func:`ssl_cluster_bench.api.extract`: both datasets are extracted with the same weights. Features of ObjectNet
    (``objectnet_root``, with ``objectnet-1.0/{images,mappings}``) and of ImageNet ``imagenet_split``
    (``imagenet_root/<split>/<wnid>/``) come from :func:`ssl_cluster_bench.api.extract` (feature cache).
    ``protocol`` (:class:`~ssl_cluster_bench.protocol.Protocol`, dict or YAML path; default: k-means at
    k = #classes, 5 seeds, PCA 256) gives k, seeds, the PCA dim and the k-means settings; both protocols are
    k-means protocols, so other methods, whitening and L2 normalisation are refused. The direct rows are
    appended as soon as they exist, then the transfer rows; the markdown next to ``results`` is rewritten.
    Returns all new rows (see :func:`summary_table` to display them).
    """
    spec_options, settings_options = split_options(options)
    spec = backbone_spec(backbone, **spec_options)
    settings = extract_settings(settings, **settings_options)
    protocol = resolve_protocol(protocol if protocol is not None else Protocol(overcluster=(1.0,)))
    if protocol.methods != ("kmeans",):
        raise ValueError(f"the ObjectNet protocols cluster with k-means only, not {list(protocol.methods)}")
    if protocol.whiten or protocol.l2_normalize:
        raise ValueError("whitening / L2 normalisation (--whiten / --l2-normalize) are not supported by the "
                         "ObjectNet protocols")
    if protocol.reduce != "pca" or protocol.n_clusters == "auto":
        raise ValueError(f"the ObjectNet protocols reduce by PCA at given k only, not reduce {protocol.reduce!r}"
                         f"{' with n_clusters auto' if protocol.n_clusters == 'auto' else ''} (--reduce / --k auto "
                         f"are for sscb run)")
    results = Path(results) if results else default_results_path()
    check_writable(results)
    cache = resolve_cache(cache)

    # Cheap checks of both roots and of the mapping, before any feature is extracted.
    from .data.objectnet import ObjectNetDataset

    on_dataset = ObjectNetDataset(objectnet_root)
    imagenet_classes = _imagenet_classes(imagenet_root, imagenet_split)
    mapping = load_objectnet_mapping(objectnet_mappings_dir(objectnet_root), imagenet_classes)
    on_index = on_dataset.class_to_idx
    on_to_in = {on_index[name]: targets for name, targets in mapping.items() if name in on_index}
    if not on_to_in:
        raise ValueError(
            f"none of the {len(on_dataset.classes)} ObjectNet classes on disk maps to one of the "
            f"{len(imagenet_classes)} ImageNet classes in {str(Path(imagenet_root) / imagenet_split)!r}"
        )
    log.info("ObjectNet: %d of %d classes overlap the %d ImageNet classes", len(on_to_in),
             len(on_dataset.classes), len(imagenet_classes))

    options = {"settings": settings, "progress": progress}
    row_hash = protocol.row_hash("kmeans")
    ks = ({"n_clusters": list(protocol.n_clusters)} if protocol.n_clusters
          else {"overcluster": protocol.overcluster})
    protocol_args = {"seeds": protocol.seeds, **ks, "pca_dim": protocol.pca_dim, "kmeans": protocol.kmeans,
                     "progress": progress}
    frames, n_new = [], 0

    # direct: the clustering engine of `sscb run` itself (PCA, the registry's k-means, run id, resume by the
    # done_runs rule), with the ObjectNet columns added to each row before it is stored
    on_entry = api.extract(spec, "objectnet", objectnet_root, "test", cache, **options)
    _check_entry_labels(on_entry, len(on_dataset.classes), "ObjectNet")
    overlap = sorted(on_to_in)

    def keep_direct(row: dict, assignment: np.ndarray, sample_scores: dict) -> None:
        nonlocal n_new
        scores = direct_scores(on_entry.labels, assignment, overlap)
        row.update({m: scores[m] for m in ("acc_overlap", "acc_nonoverlap", "chance")})
        # first, so that no row names a missing file (the per-sample numbers before the assignment that marks it done)
        save_sample_scores(results, row["run_id"], **sample_scores)
        save_predictions(results, row["run_id"], assignment)
        n_new += append_rows(results, [row])

    key = on_entry.key
    columns = {"backbone": key.backbone, "weights": key.weights, "dataset": key.dataset, "split": key.split,
               "protocol": PROTOCOL_DIRECT, "cache_key": on_entry.path.name, "versions": software_versions(),
               "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    done = {r["run_id"]: r for r in done_runs(results).to_dict("records")}
    direct = api.cluster_features(on_entry.features, on_entry.labels, protocol, progress=progress,
                                  identity=f"{PROTOCOL_DIRECT}:{on_entry.path.name}", columns=columns, done=done,
                                  on_row=keep_direct)
    direct.attrs.pop("predictions", None)  # saved already; arrays in attrs would not concatenate
    frames.append(direct)

    # transfer: k-means fitted on ImageNet and ObjectNet assigned to it, which the run engine has no place for;
    # the same run ids, stored assignments and resume rule
    in_entry = api.extract(spec, "imagenet", imagenet_root, imagenet_split, cache, **options)
    _check_entry_labels(in_entry, len(imagenet_classes), "ImageNet")
    if in_entry.feature_dim != on_entry.feature_dim:
        raise RuntimeError(f"ImageNet features ({in_entry.path.name}) have dim {in_entry.feature_dim} but ObjectNet "
                           f"features ({on_entry.path.name}) have dim {on_entry.feature_dim}")
    in_labels = in_entry.labels
    cache_key = f"{in_entry.path.name}+{on_entry.path.name}"
    ks = _cluster_counts(protocol_args.get("n_clusters"), protocol_args.get("overcluster"),
                         int(np.unique(in_labels[in_labels >= 0]).size), in_labels.size, "ImageNet")
    run_ids = {(k, seed): make_run_id(f"{PROTOCOL_TRANSFER}:{cache_key}", "kmeans", k, seed, row_hash)
               for _, k in ks for seed in protocol.seeds}
    done = done_runs(results)
    done = done[done["run_id"].isin(list(run_ids.values()))]
    if done["run_id"].nunique() == len(run_ids):
        frames.append(done.drop_duplicates("run_id"))
    else:
        transfer = transfer_protocol(in_entry.features, in_labels, on_entry.features, on_entry.labels, on_to_in,
                                     **protocol_args)
        assignments = transfer.attrs.pop("assignments")  # kept out of the concatenated frame
        transfer = _identity(transfer, on_entry, cache_key, row_hash)
        transfer["run_id"] = [run_ids[(int(k), int(seed))] for k, seed in zip(transfer.n_clusters, transfer.seed)]
        new = ~transfer["run_id"].isin(set(done["run_id"]))
        for run_id, assignment, is_new in zip(transfer["run_id"], assignments, new):
            if is_new:
                save_predictions(results, run_id, assignment)
        n_new += append_rows(results, transfer[new].to_dict("records"))
        frames.append(transfer)

    if n_new:
        api.write_markdown(results)
    out = pd.concat(frames, ignore_index=True)
    out.attrs["new_rows"] = n_new
    return out


def summary_table(rows: pd.DataFrame) -> str:
    """Markdown table of ObjectNet rows: mean ± std (%) over seeds per protocol and k, chance next to ACC."""
    needed = {"protocol", "n_clusters", "seed", "acc"}
    if not needed <= set(rows.columns):
        raise ValueError(f"rows lack the columns {sorted(needed - set(rows.columns))}; pass run_objectnet's output")
    rows = rows.copy()
    for column in ("backbone", "dataset"):
        if column not in rows.columns:
            rows[column] = ""
    agg = aggregate(rows).sort_values(["protocol", "n_clusters"], kind="stable").reset_index(drop=True)
    shown = [("ACC-tr", "acc_tr"), ("ACC-val", "acc_val"), ("chance", "chance"), ("ACC", "acc"),
             ("ACC-overlap", "acc_overlap"), ("ACC-nonoverlap", "acc_nonoverlap"), ("NMI", "nmi"),
             ("AMI", "ami"), ("ARI", "ari")]
    out = pd.DataFrame({"backbone": agg["backbone"], "protocol": agg["protocol"], "k": agg["n_clusters"]})
    for title, metric in shown:
        if f"{metric}_mean" not in agg.columns:
            continue
        mean, std = agg[f"{metric}_mean"] * 100, agg[f"{metric}_std"].fillna(0.0) * 100
        out[title] = [f"{a:.1f} ± {b:.1f}" if np.isfinite(a) else "" for a, b in zip(mean, std)]
    out["seeds"] = agg["n_seeds"]
    return out.to_markdown(index=False)
