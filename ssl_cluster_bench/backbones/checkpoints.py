"""Load self-supervised training checkpoints into a plain backbone, refusing silent random weights.

Entry point:
    load_checkpoint(model, path, checkpoint_key=None, prefix=None, momentum_encoder=False,
                    weights_only=True) -> LoadReport

SSL checkpoints wrap the backbone in many ways: MoCo ``{"state_dict": {"module.encoder_q.conv1.weight": ...}}``,
MoCo v3 ``module.base_encoder.`` / ``module.momentum_encoder.``, DINO ``{"teacher": {"backbone.*", "head.*"}}``,
MSN ``{"target_encoder": {"module.*"}}``, SimSiam ``module.encoder.*``, PyContrast (InfoMin)
``{"model": {"module.encoder.*"}}``, the SimCLRv2 PyTorch conversion ``{"resnet": ..., "head": ...}``, or a bare
state dict. The loader
finds the state dict, picks the key prefix that matches the most model parameters, drops projection /
prediction / classifier heads, then loads with ``strict=False`` and checks the result: any shape mismatch,
or more than half of the model's tensors missing, raises instead of running with random weights.

Checkpoints written by a port of the architecture with other module names (e.g. ``_blocks.3._depthwise_conv``
for timm's ``blocks.1.1.conv_dw``) load with :func:`load_by_order`: the i-th tensor of the file goes to the i-th
tensor of the model, every shape is checked and both sides must have the same number of tensors.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import OptionRuntimeError, OptionValueError, option

__all__ = ["LoadReport", "load_checkpoint", "load_by_order", "map_by_order", "read_checkpoint", "find_state_dict",
           "match_prefix",
           "apply_state_dict", "file_digest", "STATE_DICT_KEYS", "PREFIX_PARTS", "HEAD_NAMES"]

log = logging.getLogger(__name__)

# where training scripts keep the weights, in the order they are tried (DINO: teacher before student)
STATE_DICT_KEYS = ("state_dict", "model", "teacher", "student", "target_encoder", "resnet")
# wrapper module names that may precede the backbone's own keys, possibly nested ("module.encoder_q.")
PREFIX_PARTS = ("module", "backbone", "encoder", "encoder_q", "base_encoder", "momentum_encoder", "encoder_k",
                "model", "target_encoder")
MOMENTUM_PARTS = ("momentum_encoder", "encoder_k")
# top-level modules that are training heads, not backbone (dropped quietly when the model lacks them)
HEAD_NAMES = ("fc", "head", "heads", "classifier", "projector", "projection", "projection_head", "prototypes",
              "predictor", "mlp", "last_layer", "decoder")
MAX_MISSING_FRACTION = 0.5


@dataclass
class LoadReport:
    """What a checkpoint load did: where the weights came from and which tensors did not match."""

    source: str
    checkpoint_key: str | None
    prefix: str
    loaded: int
    total: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped_heads: list[str] = field(default_factory=list)
    filtered_by: str | None = None


def file_digest(path: str | os.PathLike) -> str:
    """First 16 hex digits of the file's SHA-256 (the checkpoint identity in the feature-cache key)."""
    st = os.stat(path)
    return _digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=128)
def _digest(path: str, size: int, mtime_ns: int) -> str:  # size/mtime make the cache entry stale on change
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


# what torch.save writes first in its legacy (pre-1.6) format: a pickled magic number (LONG1 opcode + 10 bytes,
# after the protocol header and, from protocol 4 on, a frame header)
_LEGACY_MAGIC = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)[2:-1]
_EXPECTED = ("expected a PyTorch checkpoint written by torch.save (.pth / .pt / .pth.tar) or a .safetensors "
             "file")


def _not_a_checkpoint(path: Path) -> str | None:
    """Why ``path`` cannot be a torch.save file, judged from its first bytes (None when it may be one).

    Checked before torch.load so that a text or HTML file gets its own message instead of a pickle error (or
    the advice to unpickle it with weights_only=False).
    """
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes; an interrupted download or copy?)"
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04"):
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return f"is a damaged or truncated zip archive ({size} bytes; an interrupted download?)"
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return f"is a zip archive but not one written by torch.save (no data.pkl; members: {names[:3]})"
        return None
    if head.startswith(b"\x80") and _LEGACY_MAGIC in head[:32]:
        return None
    if head.startswith(b"\x80"):
        return "is a Python pickle but not one written by torch.save (no torch magic number)"
    text = head.lstrip().lower()
    if text.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer, not the file itself (run `git lfs pull` where it came from)"
    if text.startswith((b"<!doctype", b"<html", b"<?xml")):
        return "is an HTML/XML page (the server sent a web page, e.g. a login or error page, not the file)"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return f"is a text file (it starts with {head[:24].decode(errors='replace')!r})"
    return "does not start like a torch.save file (neither a zip archive nor a torch pickle)"


def read_checkpoint(path: str | os.PathLike, weights_only: bool = True) -> Any:
    """``torch.load`` on CPU; with ``weights_only=True`` (default) no arbitrary code can run while loading.

    A file that is not a checkpoint (empty, text, HTML, a truncated archive, a plain pickle) raises a one-line
    ValueError naming the file and what was expected.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError (and OSError / ValueError)
            raise ValueError(f"checkpoint {path} is not a readable .safetensors file ({e}); download or "
                             f"convert it again") from None
    problem = _not_a_checkpoint(path)
    if problem is not None:
        raise ValueError(f"checkpoint {path} {problem}: {_EXPECTED}")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as e:
        if not (weights_only and "Weights only load failed" in str(e)):
            raise ValueError(f"checkpoint {path} is damaged or truncated ({_first_line(e)}): {_EXPECTED}; "
                             f"download it again") from None
        raise OptionRuntimeError(
            f"checkpoint {path} stores Python objects besides tensors, so it cannot be loaded safely "
            f"(torch.load with weights_only=True: {_first_line(e)}). If you trust where the file comes from, "
            f"load it with {option('trust_checkpoint')}; unpickling an untrusted file can run arbitrary code."
        ) from None
    except (EOFError, RuntimeError, ValueError, KeyError, IndexError, OSError) as e:
        # what torch.load raises on a truncated zip or pickle (EOFError, "failed finding central directory")
        raise ValueError(f"checkpoint {path} is damaged or truncated ({type(e).__name__ + (': ' + _first_line(e) if str(e).strip() else '')}): "
                         f"{_EXPECTED}; download it again") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _in_file(source: str, find: Callable):
    """``find()``, its ValueError prefixed with ``source`` (the file), so the message says which file it was."""
    try:
        return find()
    except ValueError as e:
        raise type(e)(f"{source}: {Exception.__str__(e)}") from None


def _tensor_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, Mapping) and obj:
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        # a state dict is (almost) only tensors; a training checkpoint is mostly other things
        if tensors and len(tensors) >= 0.5 * len(obj):
            return tensors
    return None


def find_state_dict(checkpoint: Any, checkpoint_key: str | None = None) -> tuple[dict[str, torch.Tensor], str | None]:
    """(state dict, key it was found under). ``checkpoint_key`` may be dotted ("model.ema")."""
    if checkpoint_key:
        node = checkpoint
        for part in checkpoint_key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                keys = sorted(map(str, node)) if isinstance(node, Mapping) else []
                raise ValueError(f"checkpoint_key {checkpoint_key!r}: no entry {part!r} in the checkpoint "
                               f"(top-level keys: {keys[:20]})")
            node = node[part]
        found = _tensor_dict(node)
        if found is None:
            raise ValueError(f"checkpoint_key {checkpoint_key!r} does not hold a state dict of tensors")
        return found, checkpoint_key
    if isinstance(checkpoint, Mapping):
        for key in STATE_DICT_KEYS:
            if key in checkpoint:
                found = _tensor_dict(checkpoint[key])
                if found is not None:
                    return found, key
    found = _tensor_dict(checkpoint)
    if found is not None:
        return found, None
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"the file holds a {type(checkpoint).__name__}, not weights: expected a state dict (a "
                         f"mapping of parameter names to tensors, as torch.save(model.state_dict(), path) writes) "
                         f"or a training checkpoint holding one")
    keys = sorted(map(str, checkpoint))[:20]
    raise OptionValueError(f"no state dict found in the checkpoint (looked under {', '.join(STATE_DICT_KEYS)} and "
                           f"the top level; top-level keys: {keys}); pass {option('checkpoint_key')}")


def _candidate_prefixes(keys) -> set[str]:
    prefixes = {""}
    for key in keys:
        parts = key.split(".")
        for depth in range(1, min(3, len(parts) - 1) + 1):
            if parts[depth - 1] not in PREFIX_PARTS:
                break
            prefixes.add(".".join(parts[:depth]) + ".")
    return prefixes


def match_prefix(keys, model_keys, momentum_encoder: bool = False) -> tuple[str, int]:
    """The key prefix under which the most checkpoint keys name model tensors, and that count.

    Ties (MoCo stores the query and the momentum encoder with identical keys) go to the query encoder, or to
    the momentum encoder when ``momentum_encoder`` is set.
    """
    keys, model_keys = list(keys), set(model_keys)

    def score(prefix: str):
        hits = sum(1 for k in keys if k.startswith(prefix) and k[len(prefix):] in model_keys)
        is_momentum = any(part in MOMENTUM_PARTS for part in prefix.split("."))
        return hits, is_momentum == momentum_encoder, -len(prefix)

    candidates = _candidate_prefixes(keys)
    best = max(sorted(candidates), key=score)
    hits, preferred, _ = score(best)
    if momentum_encoder and not preferred:
        raise ValueError("momentum_encoder=True but the checkpoint has no momentum encoder "
                         f"(no key prefix with {' or '.join(MOMENTUM_PARTS)}; prefixes seen: {sorted(candidates)})")
    return best, hits


def _problems(state_dict: Mapping[str, torch.Tensor], model_sd: Mapping[str, torch.Tensor]):
    mismatched = [(k, tuple(v.shape), tuple(model_sd[k].shape)) for k, v in state_dict.items()
                  if k in model_sd and tuple(v.shape) != tuple(model_sd[k].shape)]
    missing = [k for k in model_sd if k not in state_dict and not k.endswith("num_batches_tracked")]
    return mismatched, missing


def _timm_filter(model: nn.Module):
    """timm's own checkpoint converter for this model's family (e.g. position-embedding resampling), if any."""
    module = inspect.getmodule(type(model))
    if module is None or not module.__name__.startswith("timm."):
        return None
    return getattr(module, "checkpoint_filter_fn", None)


def apply_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str,
                     checkpoint_key: str | None = None, prefix: str = "", dropped_heads=()) -> LoadReport:
    """Load ``state_dict`` (already un-prefixed) into ``model`` with strict=False after checking it.

    Raises RuntimeError on any shape mismatch or when more than half of the model's tensors are missing.
    """
    model_sd = model.state_dict()
    state_dict = dict(state_dict)
    mismatched, missing = _problems(state_dict, model_sd)
    filtered_by = None
    convert = _timm_filter(model) if (mismatched or missing) else None
    if convert is not None:
        try:
            converted = dict(convert(dict(state_dict), model))
        except Exception as e:  # a converter for another checkpoint layout may not apply; keep the original
            log.debug("timm checkpoint_filter_fn did not apply: %s", e)
        else:
            c_mismatched, c_missing = _problems(converted, model_sd)
            if len(c_mismatched) + len(c_missing) < len(mismatched) + len(missing):
                state_dict, mismatched, missing = converted, c_mismatched, c_missing
                filtered_by = f"{convert.__module__}.{convert.__name__}"
    relevant = [k for k in model_sd if not k.endswith("num_batches_tracked")]
    if mismatched:
        shown = "; ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in mismatched[:5])
        raise RuntimeError(f"{source}: {len(mismatched)} tensor(s) have the wrong shape for this architecture "
                           f"({shown}{' ...' if len(mismatched) > 5 else ''}). Check the architecture (--arch) "
                           f"and its model_kwargs.")
    if len(missing) > MAX_MISSING_FRACTION * len(relevant):
        ckpt_examples = list(state_dict)[:5]
        raise RuntimeError(
            f"{source}: {len(missing)} of the model's {len(relevant)} tensors are missing from the checkpoint "
            f"(key {checkpoint_key or 'top level'!s}, prefix {prefix or 'none'!r}); refusing to run with random "
            f"weights. Model keys look like {relevant[:3]}, checkpoint keys like {ckpt_examples}. Check --arch, "
            f"or pass checkpoint_key / prefix.")
    result = model.load_state_dict(state_dict, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing:
        log.warning("%s: %d of %d model tensors not in the checkpoint (left at init), e.g. %s", source,
                    len(missing), len(relevant), missing[:5])
    if unexpected:
        log.warning("%s: %d checkpoint tensors unused by the model, e.g. %s", source, len(unexpected),
                    unexpected[:5])
    return LoadReport(source=source, checkpoint_key=checkpoint_key, prefix=prefix,
                      loaded=len(relevant) - len(missing), total=len(relevant), missing=missing,
                      unexpected=unexpected, dropped_heads=list(dropped_heads), filtered_by=filtered_by)


def load_checkpoint(model: nn.Module, path: str | os.PathLike, checkpoint_key: str | None = None,
                    prefix: str | None = None, momentum_encoder: bool = False,
                    weights_only: bool = True) -> LoadReport:
    """Load the backbone weights of an SSL checkpoint file into ``model`` (see the module docstring)."""
    source = f"checkpoint {os.fspath(path)}"
    raw = read_checkpoint(path, weights_only=weights_only)
    state_dict, key = _in_file(source, lambda: find_state_dict(raw, checkpoint_key))
    model_keys = set(model.state_dict())
    if prefix is None:
        prefix, _ = match_prefix(state_dict, model_keys, momentum_encoder)
    elif prefix and not any(k.startswith(prefix) for k in state_dict):
        raise ValueError(f"{source}: no key starts with prefix {prefix!r} (keys look like {list(state_dict)[:5]})")
    stripped = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    dropped = sorted(k for k in stripped if k not in model_keys and k.split(".", 1)[0] in HEAD_NAMES)
    for k in dropped:
        del stripped[k]
    if dropped:
        log.info("%s: ignoring %d head tensor(s) (%s)", source, len(dropped),
                 ", ".join(sorted({k.split('.', 1)[0] for k in dropped})))
    ignored = len(state_dict) - len(stripped) - len(dropped)
    if ignored:
        log.info("%s: ignoring %d tensor(s) outside prefix %r (e.g. another encoder)", source, ignored, prefix)
    report = apply_state_dict(model, stripped, source, key, prefix, dropped)
    log.info("%s: loaded %d/%d tensors (key=%s, prefix=%r)", source, report.loaded, report.total, key, prefix)
    return report


def map_by_order(state_dict: Mapping[str, torch.Tensor], model_sd: Mapping[str, torch.Tensor],
                 source: str, fix: str = "the card's arch") -> dict[str, torch.Tensor]:
    """``state_dict``'s tensors renamed to ``model_sd``'s keys position by position.

    Raises RuntimeError unless both hold the same number of tensors and every pair has the same shape, so no
    tensor of either side is left out and no layer stays at its random init. The message names the first pair
    that differs (the place where the two orders part) and ``fix``, what to check.
    """
    ours, theirs = list(model_sd.items()), list(state_dict.items())
    first = next((i for i, ((_, mv), (_, cv)) in enumerate(zip(ours, theirs)) if tuple(mv.shape) != tuple(cv.shape)),
                 None)
    if first is None and len(ours) != len(theirs):
        first = min(len(ours), len(theirs))  # one side ends first: its "pair" has no partner
    if first is not None:
        def side(items, i):
            return f"{items[i][0]} {tuple(items[i][1].shape)}" if i < len(items) else "(no tensor left)"

        raise OptionRuntimeError(
            f"{source}: cannot map the checkpoint onto the model tensor by tensor: the model has {len(ours)} "
            f"tensors, the checkpoint {len(theirs)}; the first pair that differs is #{first}: model "
            f"{side(ours, first)} vs checkpoint {side(theirs, first)}. The file does not hold this architecture in "
            f"the same order; check {fix}.")
    return {mk: cv for (mk, _), (_, cv) in zip(ours, theirs)}


def load_by_order(model: nn.Module, path: str | os.PathLike, checkpoint_key: str | None = None,
                  weights_only: bool = True, fix: str = "the card's arch") -> LoadReport:
    """Load a checkpoint whose keys are named differently from ``model``'s but come in the same order.

    ``model`` must be the full architecture the file was saved from (classifier included); every tensor of
    the file and of the model is used (strict load), see :func:`map_by_order`.
    """
    source = f"checkpoint {os.fspath(path)}"
    raw = read_checkpoint(path, weights_only=weights_only)
    state_dict, key = _in_file(source, lambda: find_state_dict(raw, checkpoint_key))
    renamed = map_by_order(state_dict, model.state_dict(), source, fix)
    model.load_state_dict(renamed, strict=True)
    n = sum(1 for k in renamed if not k.endswith("num_batches_tracked"))
    log.info("%s: loaded all %d tensors by position (key=%s)", source, n, key)
    return LoadReport(source=source, checkpoint_key=key, prefix="", loaded=n, total=n, filtered_by="by_order")
