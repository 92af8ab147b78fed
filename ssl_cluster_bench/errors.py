"""Errors whose fix is spelled in the interface the user called: Python keywords or ``sscb`` flags.

Entry points:
    option(name) -> str                  a placeholder for an option inside an error message
    did_you_mean(name, known) -> str     " (did you mean 'x'?)" for the closest known spelling, else ""
    spell(message, interface) -> str     the message with every placeholder in "api" or "cli" spelling

A library error that names an option to change writes ``option("trust_checkpoint")`` into its message;
``str(error)`` reads as Python (``weights_only=False``), and the CLI prints the same error with
``spell(str(e), "cli")`` (``--trust-checkpoint``). The spellings are data (:data:`OPTIONS`); a test checks
that every CLI spelling is a flag the parser knows.
"""
from __future__ import annotations

import difflib
import re

__all__ = ["OPTIONS", "InterfaceError", "OptionRuntimeError", "OptionValueError",
           "did_you_mean", "message_for", "option", "spell"]

# name -> (Python API spelling, CLI spelling); "{v}" is the value given to option(name, v)
OPTIONS: dict[str, tuple[str, str]] = {
    "trust_checkpoint": ("weights_only=False (e.g. create_backbone(..., weights_only=False) or "
                         "sscb.run(..., weights_only=False))", "--trust-checkpoint"),
    "checkpoint": ("checkpoint=PATH", "--checkpoint PATH"),
    "arch": ("arch=ARCH", "--arch ARCH"),
    "checkpoint_key": ("checkpoint_key=KEY", "--checkpoint-key KEY"),
    "data_root": ("root=PATH", "--data-root PATH"),
    "suite_data_root": ("data_roots={{'{v}': PATH}}", "--data-root {v}=PATH"),
    "cache_remove": ("FeatureCache(cache_dir).remove('{v}')", "`sscb cache --remove {v}`"),
    "cache_verify": ("FeatureCache(cache_dir).status(full=True)", "`sscb cache --verify`"),
    "unlabelled": ("unlabelled=True", "--unlabelled"),
    "n_clusters": ("n_clusters=[K] (e.g. sscb.run(..., protocol=sscb.Protocol(n_clusters=[10])))", "--k K"),
    "k_auto": ('n_clusters="auto"', "--k auto"),
    "k_grid": ("k_grid=[K, ...] (e.g. sscb.Protocol(n_clusters=\"auto\", k_grid=list(range(2, 31))))", "--k-grid 2-30"),
}

# \x1f (unit separator) never occurs in paths or messages, so a placeholder cannot collide with real text
_MARK = "\x1f"
_PATTERN = re.compile(f"{_MARK}([a-z_]+)(?:=([^{_MARK}]*))?{_MARK}")


def option(name: str, v: str = "") -> str:
    """Placeholder for option ``name`` (a key of :data:`OPTIONS`), ``v`` filling its ``{v}`` slot."""
    if name not in OPTIONS:
        raise KeyError(f"unknown option {name!r}; known: {', '.join(OPTIONS)}")
    return f"{_MARK}{name}={v}{_MARK}"


def did_you_mean(name, known) -> str:
    """`` (did you mean 'x'?)`` naming the closest of ``known`` to a misspelt ``name``, or "" when none is close."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def spell(message: str, interface: str = "api") -> str:
    """``message`` with each :func:`option` placeholder written for ``interface`` ("api" or "cli")."""
    column = {"api": 0, "cli": 1}[interface]
    return _PATTERN.sub(lambda m: OPTIONS[m.group(1)][column].format(v=m.group(2) or ""), message)


def message_for(error: BaseException, interface: str) -> str:
    """The text of ``error`` for ``interface``: its placeholders spelled that way."""
    raw = Exception.__str__(error) if isinstance(error, InterfaceError) else str(error)
    return spell(raw, interface)


class InterfaceError(Exception):
    """Mixin: ``str()`` gives the Python spelling of the options the message names."""

    def __str__(self) -> str:
        return spell(super().__str__(), "api")


class OptionValueError(InterfaceError, ValueError):
    pass


class OptionRuntimeError(InterfaceError, RuntimeError):
    pass
