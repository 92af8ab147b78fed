"""Backbone factory: a model card (or an architecture + checkpoint) -> frozen feature extractor.

Entry point:
    create_backbone(card, checkpoint=None, arch=None, pretrained=True, device="cpu") -> Backbone

``Backbone.model`` maps an N x C x H x W float batch to N x D pooled features (timm models built with
``num_classes=0``; torchvision models with the final classifier replaced by Identity; hub models with their
top-level ``fc`` / ``head`` / ``classifier`` layer removed). ``Backbone.transform`` is the card's
deterministic eval preprocessing. ``weights_id`` and ``transform_id`` identify weights and preprocessing for
the feature cache: equal ids <=> equal features.

Weights are never downloaded blindly: cached files are used first (timm's Hugging Face cache or the torch
hub checkpoints dir); without them, an offline machine raises within seconds a RuntimeError saying how to
supply the file (``--checkpoint``, or where to put it in the cache).
"""
from __future__ import annotations

import functools
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping
from urllib.parse import urlparse
from urllib.request import url2pathname

import torch
from torch import nn

from ..errors import OptionValueError, option
from ..specs import BackboneSpec, backbone_spec
from . import archs, downloads
from .cards import ModelCard, Preprocessing, load_card
from .checkpoints import file_digest, load_by_order, load_checkpoint

__all__ = ["Backbone", "create_backbone", "build_arch", "parse_arch", "arch_preprocessing",
           "resolve_preprocessing", "probe_feature_dim"]

log = logging.getLogger(__name__)

_HEAD_ATTRS = ("fc", "head", "classifier")


@dataclass
class Backbone:
    """A frozen feature extractor and everything needed to feed it and to key its features.

    ``feature_dim`` is -1 only for builtin backbones whose output size follows the input (raw pixels
    without a resize); the extraction output shape is authoritative there.
    """

    model: nn.Module = field(repr=False)
    transform: Callable = field(repr=False)
    feature_dim: int
    card: ModelCard = field(repr=False)
    weights_id: str
    transform_id: str

    @property
    def id(self) -> str:
        return self.card.id


# ----------------------------------------------------------------------------------------------------------
# Architectures
# ----------------------------------------------------------------------------------------------------------


def parse_arch(spec: str) -> tuple[str, str]:
    """("timm" | "torchvision" | "sscb", name) for "timm:<name>", "torchvision:<name>", "sscb:<name>" (our own
    :mod:`.archs`), or a bare name (timm first, then torchvision)."""
    import timm
    import torchvision.models as tvm

    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"arch must be a non-empty string like 'resnet50' or 'timm:vit_small_patch16_224', "
                         f"got {spec!r}")
    lib, sep, name = spec.partition(":")
    if sep and lib == "sscb":
        try:
            archs.get_arch(name)
        except ValueError as e:
            raise ValueError(f"arch {spec!r}: {e}") from None
        return "sscb", name
    if sep:
        if lib == "timm":
            if not timm.is_model(name):
                raise ValueError(f"arch {spec!r}: timm has no model {name!r}{_close(name, timm.list_models())}")
            return "timm", name
        if lib == "torchvision":
            if name not in tvm.list_models():
                raise ValueError(f"arch {spec!r}: torchvision has no builder {name!r}"
                                 f"{_close(name, tvm.list_models())}")
            return "torchvision", name
        raise ValueError(f"arch {spec!r}: the prefix must be 'timm:', 'torchvision:' or 'sscb:'")
    if timm.is_model(spec):
        return "timm", spec
    if spec in tvm.list_models():
        return "torchvision", spec
    raise ValueError(f"arch {spec!r} is neither a timm model nor a torchvision builder"
                     f"{_close(spec, timm.list_models() + tvm.list_models())}")


def _close(name: str, choices) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=5, cutoff=0.6)
    return f" (close matches: {', '.join(close)})" if close else ""


def _replace_classifier(model: nn.Module, num_classes: int) -> int:
    """Swap the last Linear producing ``num_classes`` logits for Identity; returns its input width."""
    target = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            target = (name, module)
    if target is None:
        raise RuntimeError(f"{type(model).__name__}: no Linear classifier with {num_classes} outputs to remove")
    name, linear = target
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, nn.Identity())
    return linear.in_features


def _strip_top_level_head(model: nn.Module) -> None:
    """Hub entrypoints often return the ImageNet classifier (random or trained): drop it for features."""
    for attr in _HEAD_ATTRS:
        if isinstance(getattr(model, attr, None), nn.Linear):
            log.info("%s: replacing top-level %r Linear with Identity", type(model).__name__, attr)
            setattr(model, attr, nn.Identity())


def _build(spec: str, model_kwargs: Mapping[str, Any] | None = None, *, weights=None,
           timm_pretrained_file: str | None = None) -> tuple[nn.Module, int]:
    """(features-only model, its output width)."""
    lib, name = parse_arch(spec)
    kwargs = dict(model_kwargs or {})
    if lib == "sscb":
        model = archs.get_arch(name)(**kwargs)
        return model, int(model.num_features)
    if lib == "timm":
        import timm

        if timm_pretrained_file is not None:
            # a local file in place of timm's download; source=None so no hf-hub source can override it
            overlay = {"file": timm_pretrained_file, "source": None}
            model = timm.create_model(name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay,
                                      **kwargs)
        else:
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        # with num_classes=0 timm models return their pre-logits features: head_hidden_size wide
        return model, int(getattr(model, "head_hidden_size", None) or model.num_features)
    import torchvision.models as tvm

    model = tvm.get_model(name, weights=weights, **kwargs)
    num_classes = len(weights.meta["categories"]) if weights is not None else kwargs.get("num_classes", 1000)
    return model, _replace_classifier(model, num_classes)


def build_arch(spec: str, model_kwargs: Mapping[str, Any] | None = None, *, weights=None,
               timm_pretrained_file: str | None = None) -> nn.Module:
    """A features-only model for ``spec`` (random init unless ``weights`` / ``timm_pretrained_file`` given)."""
    return _build(spec, model_kwargs, weights=weights, timm_pretrained_file=timm_pretrained_file)[0]


def probe_feature_dim(spec: str, model_kwargs: Mapping[str, Any] | None = None) -> int:
    """Output width of ``spec``'s features, from the architecture built on the meta device (no weights)."""
    kwargs = tuple(sorted((model_kwargs or {}).items()))
    try:
        return _probe(spec, kwargs)
    except TypeError:  # unhashable kwarg values: probe without the cache
        return _probe.__wrapped__(spec, kwargs)


@functools.lru_cache(maxsize=256)
def _probe(spec: str, kwargs: tuple) -> int:
    with torch.device("meta"):
        return _build(spec, dict(kwargs))[1]


def _input_hw(pp: Preprocessing) -> tuple[int, int]:
    size = pp.input_size if pp.input_size is not None else pp.resize
    if size is None:
        raise ValueError("preprocessing has neither input_size nor resize: the input size is unknown")
    return (size, size) if isinstance(size, int) else size


def _forward_dim(model: nn.Module, pp: Preprocessing) -> int:
    height, width = _input_hw(pp)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with torch.inference_mode():
        out = model(torch.zeros(1, pp.channels, height, width, device=device))
    return int(out.shape[-1])


# ----------------------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------------------


def arch_preprocessing(spec: str) -> Preprocessing:
    """The eval preprocessing of an architecture's pretrained config (timm cfg; torchvision default weights)."""
    lib, name = parse_arch(spec)
    if lib == "sscb":
        raise ValueError(f"arch {spec!r} has no pretrained config to take the preprocessing from; write a model "
                         f"card with a preprocessing block")
    if lib == "timm":
        import timm

        cfg = timm.get_pretrained_cfg(name)
        if cfg is None:
            raise ValueError(f"arch {spec!r}: timm has no pretrained config to take the preprocessing from; "
                             f"write a model card with a preprocessing block")
        return Preprocessing.from_timm_config(cfg.to_dict())
    import torchvision.models as tvm

    try:
        weights = tvm.get_model_weights(name).DEFAULT
    except ValueError:
        weights = None
    if weights is None:
        raise ValueError(f"arch {spec!r}: torchvision has no pretrained weights to take the preprocessing "
                         f"from; write a model card with a preprocessing block")
    return _torchvision_preprocessing(weights)


def _torchvision_preprocessing(weights) -> Preprocessing:
    t = weights.transforms()
    crop = t.crop_size[0] if len(t.crop_size) == 1 else tuple(t.crop_size)
    resize = t.resize_size[0] if len(t.resize_size) == 1 else tuple(t.resize_size)
    return Preprocessing(mean=tuple(t.mean), std=tuple(t.std), input_size=crop, resize=resize, crop=True,
                         interpolation=t.interpolation.value)


def resolve_preprocessing(card: ModelCard) -> Preprocessing:
    """The card's preprocessing, or its architecture's pretrained config when the card has none."""
    if card.preprocessing is not None:
        return card.preprocessing
    if card.source == "torchvision" and card.weights:
        import torchvision.models as tvm

        return _torchvision_preprocessing(tvm.get_weight(card.weights))
    spec = card.build_arch
    if spec is None:
        raise ValueError(f"model card {card.id!r} has no preprocessing block and no arch to take it from")
    return arch_preprocessing(spec)


# ----------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------


def _where(card: ModelCard) -> str:
    return f"model card {card.id!r}" + (f" ({card.path})" if card.path else "")


def _checkpoint_hint(card: ModelCard, original: str | None = None) -> str:
    arch = card.build_arch
    line = (f"  * pass --checkpoint /path/to/file.pth (Python: create_backbone({card.id!r}, checkpoint=...)); "
            f"it is loaded into architecture {arch or '<pass --arch>'}")
    return line + (f" (original file: {original})" if original else "")


def _seeded_build(spec: str, model_kwargs: Mapping[str, Any], seed: int) -> nn.Module:
    # fork_rng: a reproducible init that leaves the caller's global RNG stream untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_arch(spec, model_kwargs)


def _load_timm(card: ModelCard) -> tuple[nn.Module, str]:
    import timm

    try:
        cfg = timm.get_pretrained_cfg(card.model, allow_unregistered=False)
    except RuntimeError as e:
        raise ValueError(f"{_where(card)}: timm model {card.model!r} has no such pretrained weights ({e})") from None
    arch = cfg.architecture or card.model.split(".")[0]
    full_name = f"{arch}.{cfg.tag}" if cfg.tag else arch
    weights_id = f"timm:{full_name}"
    filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    cached = downloads.hf_cached_file(cfg.hf_hub_id, filenames) if cfg.hf_hub_id else None
    if cached is None and cfg.url:
        path = downloads.hub_checkpoint_path(cfg.url)
        cached = path if path.is_file() else None
    if cached is not None:
        log.info("%s: using cached weights %s", card.id, cached)
        return build_arch(f"timm:{card.model}", card.model_kwargs, timm_pretrained_file=str(cached)), weights_id
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co") if cfg.hf_hub_id else cfg.url
    remedy = ["Supply them without a network:", _checkpoint_hint(card, cfg.url or None)]
    if cfg.hf_hub_id:
        remedy.append(f"  * or run `huggingface-cli download {cfg.hf_hub_id}` on a connected machine and copy its "
                      f"Hugging Face cache into {downloads.hf_cache_dir()}")
    if cfg.url:
        remedy.append(f"  * or put the file {os.path.basename(urlparse(cfg.url).path)} into "
                      f"{downloads.hub_dir() / 'checkpoints'}")
    downloads.require_network(endpoint, f"Weights for {_where(card)} (timm {full_name})", "\n".join(remedy))
    return timm.create_model(card.model, pretrained=True, num_classes=0, **card.model_kwargs), weights_id


def _load_torchvision(card: ModelCard) -> tuple[nn.Module, str]:
    import torchvision.models as tvm

    try:
        weights = tvm.get_weight(card.weights)
    except (ValueError, KeyError, AttributeError):
        raise ValueError(f"{_where(card)}: field 'weights': torchvision has no weights {card.weights!r}") from None
    if type(weights) is not type(tvm.get_model_weights(card.model).DEFAULT):
        raise ValueError(f"{_where(card)}: weights {card.weights!r} do not belong to builder {card.model!r}")
    cached = downloads.hub_checkpoint_path(weights.url)
    if not cached.is_file():
        remedy = "\n".join(["Supply them without a network:", _checkpoint_hint(card, weights.url),
                            f"  * or put the file {cached.name} into {cached.parent}"])
        downloads.require_network(weights.url, f"Weights for {_where(card)} (torchvision {card.weights})", remedy)
    return build_arch(f"torchvision:{card.model}", card.model_kwargs, weights=weights), f"torchvision:{card.weights}"


def _without_classifier(model: nn.Module, spec: str) -> nn.Module:
    """The full architecture turned into the same features-only model that ``build_arch`` gives."""
    if parse_arch(spec)[0] == "timm":
        model.reset_classifier(0)
        return model
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise RuntimeError(f"{spec}: no Linear classifier to remove")
    _replace_classifier(model, last[-1].out_features)
    return model


def _load_by_order(arch: str, model_kwargs: Mapping[str, Any], seed: int, path: Path, checkpoint_key: str | None,
                   weights_only: bool, fix: str) -> nn.Module:
    """``arch`` (timm or torchvision) with the tensors of ``path`` taken by position; ``fix`` says what to
    check when the file does not hold that architecture in the same order."""
    # the full architecture, classifier included, so that every tensor of the file has its place
    lib, name = parse_arch(arch)
    if lib not in ("timm", "torchvision"):
        raise ValueError(f"key_match 'order' needs a timm or torchvision arch, got {arch!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if lib == "timm":
            import timm

            full = timm.create_model(name, pretrained=False, **model_kwargs)
        else:
            import torchvision.models as tvm

            full = tvm.get_model(name, weights=None, **model_kwargs)
    load_by_order(full, path, checkpoint_key, weights_only, fix=fix)
    return _without_classifier(full, arch)


def _load_file_into_arch(card: ModelCard, path: Path, weights_only: bool, momentum_encoder: bool) -> nn.Module:
    """The card's architecture with the weights of ``path``, matched by name or (key_match: order) by position."""
    if card.key_match == "order":
        try:
            return _load_by_order(card.arch, card.model_kwargs, card.seed, path, card.checkpoint_key, weights_only,
                                  "the card's arch")
        except ValueError as e:
            if "needs a timm or torchvision arch" not in str(e):
                raise
            raise ValueError(f"{_where(card)}: {e}") from None
    model = _seeded_build(card.arch, card.model_kwargs, card.seed)
    # the card's prefix names the query encoder; the momentum encoder's prefix is found by matching
    prefix = None if momentum_encoder else card.prefix
    load_checkpoint(model, path, card.checkpoint_key, prefix, momentum_encoder, weights_only)
    return model


def _load_url(card: ModelCard, weights_only: bool, momentum_encoder: bool) -> tuple[nn.Module, str]:
    target = downloads.hub_checkpoint_path(card.url)
    remedy = "\n".join(["Supply them without a network:", _checkpoint_hint(card, card.url),
                        f"  * or put the file {target.name} into {target.parent}"])
    path = downloads.fetch_url(card.url, f"Weights for {_where(card)}", remedy, sha256=card.sha256,
                               allow_http=card.allow_http)
    model = _load_file_into_arch(card, path, weights_only, momentum_encoder)
    return model, f"url:{card.url}" + ("#momentum_encoder" if momentum_encoder else "")


def _load_package(card: ModelCard, weights_only: bool, momentum_encoder: bool) -> tuple[nn.Module, str]:
    path, label = downloads.package_file(card.package, card.file, f"Weights for {_where(card)}")
    model = _load_file_into_arch(card, path, weights_only, momentum_encoder)
    # the package version and the file's hash: a re-release with other weights never reuses cached features
    weights_id = f"package:{label}/{path.name}#{file_digest(path)}"
    return model, weights_id + ("#momentum_encoder" if momentum_encoder else "")


def _load_manual(card: ModelCard, weights_only: bool, momentum_encoder: bool) -> tuple[nn.Module, str]:
    """Weights published only in a form a script has to convert (or behind a share page): the file is looked
    up under its card ``filename`` in the torch hub checkpoints dir; without it, say how to obtain it."""
    path = downloads.hub_dir() / "checkpoints" / card.filename
    if not path.is_file():
        raise RuntimeError(
            f"Weights for {_where(card)} cannot be downloaded automatically: they are not published as a PyTorch "
            f"file at a stable URL.\nTo obtain them: {card.obtain.strip()}\nThen either:\n"
            f"  * put the file {card.filename} into {path.parent}\n{_checkpoint_hint(card)}")
    model = _seeded_build(card.arch, card.model_kwargs, card.seed)
    prefix = None if momentum_encoder else card.prefix
    load_checkpoint(model, path, card.checkpoint_key, prefix, momentum_encoder, weights_only)
    return model, f"file:{file_digest(path)}#{card.filename}" + ("#momentum_encoder" if momentum_encoder else "")


def _load_hub(card: ModelCard, weights_only: bool) -> tuple[nn.Module, str, bool]:
    """(model, weights_id, built_from_arch)."""
    weights_id = f"hub:{card.repo}/{card.entrypoint}"
    repo_dir = downloads.hub_repo_dir(card.repo)
    weights_file = downloads.hub_checkpoint_path(card.weights_url) if card.weights_url else None
    have_weights = weights_file is not None and weights_file.is_file()
    remedy_lines = ["Supply them without a network:", _checkpoint_hint(card, card.weights_url)]
    if weights_file is not None:
        remedy_lines.append(f"  * or put the file {weights_file.name} into {weights_file.parent}")
    remedy_lines.append(f"  * or copy a checkout of https://github.com/{card.repo.partition(':')[0]} to "
                        f"{downloads.hub_dir()}/{card.repo.replace('/', '_').replace(':', '_')}"
                        + (" (the entrypoint then downloads its weights)" if weights_file is None else ""))
    remedy = "\n".join(remedy_lines)
    what = f"Weights for {_where(card)} (torch hub {card.repo} {card.entrypoint})"
    if repo_dir is None and have_weights and card.arch:
        # same file the entrypoint would load, loaded into the equivalent architecture: no hub code needed
        log.info("%s: hub repo not cached; loading %s into %s", card.id, weights_file, card.arch)
        model = _seeded_build(card.arch, card.model_kwargs, card.seed)
        load_checkpoint(model, weights_file, card.checkpoint_key, card.prefix, False, weights_only)
        return model, weights_id, True
    if repo_dir is not None:
        if weights_file is not None and not have_weights:
            downloads.require_network(card.weights_url, what, remedy)
        model = torch.hub.load(str(repo_dir), card.entrypoint, source="local")
    else:
        downloads.require_network("https://github.com", what, remedy)
        if card.weights_url:
            downloads.require_network(card.weights_url, what, remedy)
        # trust_repo: the repo is named by a curated card, which is the user's explicit choice
        model = torch.hub.load(card.repo, card.entrypoint, source="github", trust_repo=True)
    if not isinstance(model, nn.Module):
        raise RuntimeError(f"{_where(card)}: hub entrypoint {card.entrypoint!r} returned "
                           f"{type(model).__name__}, not a torch.nn.Module")
    _strip_top_level_head(model)
    return model, weights_id, False


class _Pixels(nn.Module):
    """Raw pixels as features: N x C x H x W -> N x (C*H*W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, start_dim=1)


# ----------------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------------


def _arch_tag(spec: str, model_kwargs: Mapping[str, Any]) -> str:
    if not model_kwargs:
        return spec
    return spec + "{" + ",".join(f"{k}={model_kwargs[k]!r}" for k in sorted(model_kwargs)) + "}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._") or "checkpoint"


def _adhoc_card(spec: str, checkpoint: str | None) -> ModelCard:
    """A card for an architecture (+ checkpoint) that has none: id from the file name, timm-cfg preprocessing."""
    lib, name = parse_arch(spec)
    pp = arch_preprocessing(spec)
    feature = {"description": f"pooled features of {lib} {name} "
                              + ("(num_classes=0)" if lib == "timm" else "(classifier replaced by Identity)"),
               "dim": None}
    if checkpoint is None:
        return ModelCard(id=f"random-{_slug(name)}", name=f"{name} (random init)", architecture=name, source=lib,
                         model=name, pretrained=False, preprocessing=pp, feature=feature,
                         pretraining={"method": "none (random init)", "data": "none", "supervised": False})
    filename = os.path.basename(urlparse(checkpoint).path) if "://" in checkpoint else Path(checkpoint).name
    stem = re.sub(r"(\.(pth|pt|tar|ckpt|bin|safetensors|pkl))+$", "", filename, flags=re.IGNORECASE)
    url = checkpoint if "://" in checkpoint else Path(checkpoint).expanduser().resolve().as_uri()
    return ModelCard(id=_slug(stem), name=f"{filename} ({name})", architecture=name, source="url", url=url,
                     arch=spec, preprocessing=pp, feature=feature,
                     pretraining={"method": "unknown (user checkpoint)", "data": "unknown", "supervised": False})


def _resolve_device(device) -> torch.device:
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}") from None


def create_backbone(card: "ModelCard | str | os.PathLike | BackboneSpec | None",
                    checkpoint: str | os.PathLike | None = None, arch: str | None = None,
                    pretrained: bool | None = None, device: str | torch.device = "cpu", *,
                    weights_only: bool | None = None, momentum_encoder: bool | None = None,
                    checkpoint_key: str | None = None, key_match: str | None = None) -> Backbone:
    """Build the frozen feature extractor for ``card``.

    card: a :class:`~ssl_cluster_bench.specs.BackboneSpec` (every option below in one record), a ModelCard, a
        card id or YAML path, or None (then ``arch`` + ``checkpoint`` define an ad-hoc card
        whose id is the checkpoint's file name and whose preprocessing is the arch's pretrained config: give
        the timm tag, e.g. "vit_small_patch16_224.dino", to get that tag's mean/std; ``arch`` alone with
        ``pretrained=False`` gives a seeded random init).
    arch: "timm:<name>", "torchvision:<name>" or a bare name (timm first) to build for ``checkpoint``.
    checkpoint: local file or URL with weights to load instead of the card's own (into ``arch`` if given, else
        the card's architecture), e.g. an SSL training checkpoint; see :mod:`.checkpoints`.
    pretrained: False builds the card's architecture with a seeded random init (card ``seed``, default 0).
    weights_only: torch.load safety; set False only for trusted legacy pickles.
    momentum_encoder: load the MoCo-style momentum encoder instead of the query encoder (default: the card's).
    checkpoint_key: where the state dict sits inside ``checkpoint`` (default: searched).
    key_match: "order" loads ``checkpoint``'s tensors by position (names differ, shapes checked pair by pair).
    The keyword options, when given (not None), replace the fields of a ``card`` given as a BackboneSpec.
    """
    spec = backbone_spec(card, checkpoint=checkpoint, arch=arch, pretrained=pretrained, weights_only=weights_only,
                         momentum_encoder=momentum_encoder, checkpoint_key=checkpoint_key, key_match=key_match)
    dev = _resolve_device(device)
    card, checkpoint, arch = spec.card, spec.checkpoint, spec.arch
    pretrained, weights_only, checkpoint_key = spec.pretrained, spec.weights_only, spec.checkpoint_key
    if card is None:
        card = _adhoc_card(arch, checkpoint)
    else:
        if not isinstance(card, ModelCard):
            card = load_card(card)
        if arch is not None and checkpoint is None and pretrained and card.pretrained:
            raise OptionValueError(f"architecture {arch!r} only applies with {option('checkpoint')}; the weights "
                                   f"of {_where(card)} belong to its own architecture {card.build_arch}")
    pp = resolve_preprocessing(card)
    momentum = card.momentum_encoder if spec.momentum_encoder is None else spec.momentum_encoder

    arch_spec = arch or card.build_arch
    model_kwargs = dict(card.model_kwargs) if (arch is None or arch == card.build_arch) else {}
    built_from_arch = True
    if card.source == "builtin":
        model, weights_id, built_from_arch = _Pixels(), f"builtin:{card.model}", False
    elif checkpoint is not None:
        if arch_spec is None:
            raise OptionValueError(f"{_where(card)} has no architecture to load checkpoint {checkpoint!r} into; "
                                   f"pass {option('arch')}")
        if checkpoint.lower().startswith("file://"):
            # a local file however it is spelled: known by its content digest below, like a plain path
            checkpoint = url2pathname(urlparse(checkpoint).path)
        if "://" in checkpoint:
            path = downloads.fetch_url(checkpoint, f"Checkpoint {checkpoint}",
                                       "Download it on a connected machine and pass its local path instead.")
            weights_id = f"url:{checkpoint}"
        else:
            path = Path(checkpoint).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"checkpoint {checkpoint!r} does not exist")
            weights_id = f"file:{file_digest(path)}"
        # the same file loaded into another architecture (or other kwargs, e.g. num_heads) gives other features
        weights_id += f"#arch={_arch_tag(arch_spec, model_kwargs)}"
        if momentum:
            weights_id += "#momentum_encoder"
        if checkpoint_key:
            weights_id += f"#key={checkpoint_key}"
        if spec.key_match == "order":
            # the same tensors as a by-name load would give; marked so that a by-name entry is never reused
            weights_id += "#key_match=order"
            model = _load_by_order(arch_spec, model_kwargs, card.seed, path, checkpoint_key, weights_only,
                                   f"the architecture ({option('arch')})")
        else:
            model = _seeded_build(arch_spec, model_kwargs, card.seed)
            # the card's key/prefix hints describe its own file; a user file is searched (or checkpoint_key given)
            load_checkpoint(model, path, checkpoint_key, None, momentum, weights_only)
    elif not (pretrained and card.pretrained):
        if arch_spec is None:
            raise ValueError(f"{_where(card)} has no arch to build a random init from")
        model = _seeded_build(arch_spec, model_kwargs, card.seed)
        weights_id = f"random:{_arch_tag(arch_spec, model_kwargs)}:seed={card.seed}"
    elif card.source == "timm":
        model, weights_id = _load_timm(card)
    elif card.source == "torchvision":
        model, weights_id = _load_torchvision(card)
    elif card.source == "url":
        model, weights_id = _load_url(card, weights_only, momentum)
    elif card.source == "package":
        model, weights_id = _load_package(card, weights_only, momentum)
    elif card.source == "manual":
        model, weights_id = _load_manual(card, weights_only, momentum)
    else:
        model, weights_id, built_from_arch = _load_hub(card, weights_only)

    if card.source == "builtin":
        feature_dim = card.feature_dim if card.feature_dim is not None else -1
    elif built_from_arch:
        feature_dim = probe_feature_dim(arch_spec, model_kwargs)
    else:
        feature_dim = _forward_dim(model.eval(), pp)
    declared = card.feature_dim
    own_arch = arch is None or arch == card.build_arch
    if declared is not None and feature_dim != declared and own_arch:
        raise RuntimeError(f"{_where(card)} declares feature.dim={declared} but the model outputs "
                           f"{feature_dim} features; fix the card")
    if feature_dim > 0 and declared != feature_dim:  # ad-hoc card, or the card's weights in another arch
        card = replace(card, feature={**card.feature, "dim": feature_dim})

    model.eval().requires_grad_(False)
    model = model.to(dev)
    log.info("backbone %s: %s, %d-d features, %s", card.id, weights_id, feature_dim, pp.transform_id)
    return Backbone(model=model, transform=pp.build_transform(), feature_dim=feature_dim, card=card,
                    weights_id=weights_id, transform_id=pp.transform_id)
