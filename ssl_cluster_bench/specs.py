"""Backbone and extraction settings as two records: which weights to load, and how to run them over a dataset.

Entry points:
    BackboneSpec(card="dino-vits16") / BackboneSpec(checkpoint="moco.pth.tar", arch="resnet50", ...)   frozen
    ExtractSettings(batch_size=128, num_workers=None, device="auto", chunk_size=8192, views=0, ...)     frozen
    backbone_spec(backbone=None, **options) -> BackboneSpec          a spec from a card id, a spec, or options
    extract_settings(settings=None, **options) -> ExtractSettings    the same for the extraction settings
    split_options(options) -> (backbone options, extraction options) the keyword lists of the Python API, sorted

The CLI builds both once from one shared group of flags each, and the Python API converts its keyword arguments
to them at its entry; below that (suite, objectnet, backbones.factory, extraction) the records are passed whole,
so a new loading option is one field here. Like :class:`~ssl_cluster_bench.protocol.Protocol`, each record is
checked when it is made (a bad value names the field and the fix) and round-trips through ``to_dict`` /
``from_dict``. The feature cache does not key on these records: it keys on the weights id the factory derives
from the loaded file (``Backbone.weights_id``), which the options change only where they change the weights.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import OptionValueError, did_you_mean, option

__all__ = ["BACKBONE_OPTIONS", "EXTRACT_OPTIONS", "KEY_MATCHES", "BackboneSpec", "ExtractSettings", "backbone_spec",
           "extract_settings", "split_options"]

# how the tensors of a user checkpoint are matched to the architecture's: by name (after prefix stripping, the
# default) or by position (a checkpoint saved by an older version of the library, whose names differ)
KEY_MATCHES = ("name", "order")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _text(value, name: str, example: str) -> str | None:
    """``value`` as a non-empty string (a path-like is turned into its string), or None."""
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string such as {example}, got {value!r}")
    return value


def _unknown(cls, d: Mapping, what: str) -> None:
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} field(s) {unknown}{did_you_mean(unknown[0], known)}; known fields: "
                         f"{', '.join(known)}")


@dataclass(frozen=True)
class BackboneSpec:
    """Which weights a backbone runs with.

    card : model-card id or card YAML path (a loaded ``ModelCard`` is accepted too), or None for ``arch`` +
        ``checkpoint`` alone.
    checkpoint : local file or URL of weights to load instead of the card's own (e.g. an SSL training checkpoint).
    arch : "timm:<name>", "torchvision:<name>", "sscb:<name>" or a bare name: the architecture of ``checkpoint``.
    pretrained : False builds the architecture with a seeded random init.
    weights_only : torch.load safety; False (``--trust-checkpoint``) only for trusted legacy pickles.
    momentum_encoder : load the MoCo-style momentum encoder instead of the query encoder (None: the card's).
    checkpoint_key : where the state dict sits inside the checkpoint, dotted ("model.ema"; None: searched).
    key_match : "name" (default) or "order": the checkpoint's i-th tensor goes to the architecture's i-th, each
        shape checked, for files whose key names differ (e.g. saved by an older torchvision).
    """

    card: Any = None
    checkpoint: str | None = None
    arch: str | None = None
    pretrained: bool = True
    weights_only: bool = True
    momentum_encoder: bool | None = None
    checkpoint_key: str | None = None
    key_match: str = "name"

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        if self.card is not None and not hasattr(self.card, "id"):  # a ModelCard is kept as it is
            set_("card", _text(self.card, "card", "'dino-vits16' or a card YAML path"))
        set_("checkpoint", _text(self.checkpoint, "checkpoint", "a file path or URL"))
        set_("arch", _text(self.arch, "arch", "'resnet50' or 'timm:vit_small_patch16_224'"))
        set_("checkpoint_key", _text(self.checkpoint_key, "checkpoint_key", "'state_dict' or 'model.ema'"))
        # YAML reads `weights_only: "no"` as a string, which is truthy: only real booleans are accepted
        for name in ("pretrained", "weights_only"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.momentum_encoder is not None and not isinstance(self.momentum_encoder, bool):
            raise ValueError(f"momentum_encoder must be true, false or None (the card's), got "
                             f"{self.momentum_encoder!r}")
        if self.key_match not in KEY_MATCHES:
            raise ValueError(f"key_match must be one of {', '.join(map(repr, KEY_MATCHES))}, got {self.key_match!r}")
        if self.card is None and self.arch is None:
            raise OptionValueError(f"a checkpoint needs its architecture: pass {option('arch')} with "
                                   f"{option('checkpoint')} (or a model card instead)")
        if self.card is None and self.checkpoint is None and self.pretrained:
            raise OptionValueError(f"architecture {self.arch!r} without a card needs {option('checkpoint')} "
                                   f"(or pretrained=False for a seeded random init)")
        if self.key_match != "name" and self.checkpoint is None:
            raise OptionValueError(f"key_match {self.key_match!r} applies to the tensors of a checkpoint: pass "
                                   f"{option('checkpoint')} too (a model card says key_match in its own file)")

    @property
    def card_name(self) -> str | None:
        """The card as a string (its id or path), None without a card."""
        if self.card is None or isinstance(self.card, str):
            return self.card
        path = getattr(self.card, "path", None)
        return str(path) if path else self.card.id

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self) if isinstance(self.card, (str, type(None))) else \
            {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["card"] = self.card_name
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "BackboneSpec":
        if not isinstance(d, Mapping):
            raise ValueError(f"a backbone spec must be a mapping of its fields, got {type(d).__name__}")
        _unknown(cls, d, "backbone")
        return cls(**d)

    def replace(self, **changes) -> "BackboneSpec":
        _unknown(type(self), changes, "backbone")
        return dataclasses.replace(self, **changes)

    @property
    def label(self) -> str:
        """How rows and messages name this backbone before it is loaded: the card, else "<file> (<arch>)"."""
        if self.checkpoint is not None and self.card is None:
            name = self.checkpoint.rstrip("/").rsplit("/", 1)[-1]
            return f"{name} ({self.arch})"
        return self.card_name or f"{self.arch} (random init)"


@dataclass(frozen=True)
class ExtractSettings:
    """How features are extracted (see :func:`ssl_cluster_bench.extraction.extract_features`).

    batch_size : images per forward pass.
    num_workers : DataLoader workers (None: 0 for small datasets, else up to 8).
    device : "auto" (cuda when available), "cpu", "cuda", "cuda:N".
    chunk_size : images per resumable cache chunk.
    views : also store this many seeded strongly-augmented views per image (0: the plain features).
    augment_seed : seed of those views.
    amp, channels_last : "auto" (on CUDA only), True or False.
    verify_content : key the cache entry on the bytes of every data file instead of their sizes and times.
    """

    batch_size: int = 128
    num_workers: int | None = None
    device: str = "auto"
    chunk_size: int = 8192
    views: int = 0
    augment_seed: int = 0
    amp: str | bool = "auto"
    channels_last: str | bool = "auto"
    verify_content: bool = False

    def __post_init__(self):
        for name in ("batch_size", "chunk_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_workers is not None and (not _is_int(self.num_workers) or self.num_workers < 0):
            raise ValueError(f"num_workers must be an integer >= 0 or None (by dataset size), got {self.num_workers!r}")
        for name in ("views", "augment_seed"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if not isinstance(self.device, str) or not self.device.strip():
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        for name in ("amp", "channels_last"):
            if getattr(self, name) != "auto" and not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be 'auto', true or false, got {getattr(self, name)!r}")
        if not isinstance(self.verify_content, bool):
            raise ValueError(f"verify_content must be true or false, got {self.verify_content!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "ExtractSettings":
        if not isinstance(d, Mapping):
            raise ValueError(f"extraction settings must be a mapping of their fields, got {type(d).__name__}")
        _unknown(cls, d, "extraction")
        return cls(**d)

    def replace(self, **changes) -> "ExtractSettings":
        _unknown(type(self), changes, "extraction")
        return dataclasses.replace(self, **changes)


BACKBONE_OPTIONS = tuple(f.name for f in dataclasses.fields(BackboneSpec) if f.name != "card")
EXTRACT_OPTIONS = tuple(f.name for f in dataclasses.fields(ExtractSettings))


def backbone_spec(backbone=None, **options) -> BackboneSpec:
    """A :class:`BackboneSpec` from a card (id, path or ModelCard), None, or a spec, with ``options`` applied.

    Options left at None are not given (the Python API's keywords default to None), so a spec passed whole is
    not overridden by them."""
    given = {k: v for k, v in options.items() if v is not None}
    if isinstance(backbone, BackboneSpec):
        return backbone.replace(**given) if given else backbone
    _unknown(BackboneSpec, given, "backbone")
    return BackboneSpec(card=backbone, **given)


def extract_settings(settings=None, **options) -> ExtractSettings:
    """An :class:`ExtractSettings` from None (the defaults), a record or a dict, with ``options`` (not None)
    applied."""
    given = {k: v for k, v in options.items() if v is not None}
    if settings is None:
        base = ExtractSettings()
    elif isinstance(settings, ExtractSettings):
        base = settings
    elif isinstance(settings, Mapping):
        base = ExtractSettings.from_dict(settings)
    else:
        raise ValueError(f"settings must be ExtractSettings or a dict, got {type(settings).__name__}")
    return base.replace(**given) if given else base


def split_options(options: Mapping) -> tuple[dict, dict]:
    """(backbone options, extraction options) of a keyword list; an unknown keyword is refused by name."""
    unknown = sorted(set(options) - set(BACKBONE_OPTIONS) - set(EXTRACT_OPTIONS))
    if unknown:
        known = BACKBONE_OPTIONS + EXTRACT_OPTIONS
        raise TypeError(f"unexpected keyword argument(s) {unknown}{did_you_mean(unknown[0], known)}; backbone "
                        f"options: {', '.join(BACKBONE_OPTIONS)}; extraction options: {', '.join(EXTRACT_OPTIONS)}")
    return ({k: v for k, v in options.items() if k in BACKBONE_OPTIONS},
            {k: v for k, v in options.items() if k in EXTRACT_OPTIONS})
