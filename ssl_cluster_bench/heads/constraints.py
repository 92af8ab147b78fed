"""Declarative hyper-parameter constraints of the heads, checked once at ``fit`` (and where a protocol is read).

Entry points:
    Interval(kind, low, high, closed): "int" or "real" values between bounds (None: unbounded)
    Options(*values): one of a fixed set of values (strings, or e.g. the layer counts 0, 1, 2)
    BOOLEAN: True or False
    NO_VALIDATION: the parameter is checked elsewhere (``device``: by ``resolve_device``)
    check_param(name, value, constraints, where="") -> None or ValueError "<where><name> must be <...>, got <value>"
    describe(constraints) -> "an integer >= 1 or 'auto'"

A parameter's constraints are a list; a value is valid when any one of them accepts it, and ``None`` in the list
accepts None. Ours rather than scikit-learn's: its validation lives in a private module
(``sklearn.utils._param_validation``, absent from scikit-learn 1.1, which we still allow), and the protocol's
check needs the constraints as data to name ``method_options.<method>.<option>`` in its message.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

__all__ = ["BOOLEAN", "NO_VALIDATION", "Interval", "Options", "check_param", "describe"]

NO_VALIDATION = "no_validation"


@dataclass(frozen=True)
class Interval:
    """Finite numbers of ``kind`` ("int": integers; "real": any number) between ``low`` and ``high``.

    ``closed``: which bounds are included ("left", "right", "both", "neither"); a bound of None is open-ended.
    Booleans are refused even though Python counts them as integers (``epochs: true`` is a typo, not 1).
    """

    kind: str
    low: float | None = None
    high: float | None = None
    closed: str = "left"

    def __post_init__(self):
        if self.kind not in ("int", "real"):
            raise ValueError(f"Interval kind must be 'int' or 'real', got {self.kind!r}")
        if self.closed not in ("left", "right", "both", "neither"):
            raise ValueError(f"Interval closed must be 'left', 'right', 'both' or 'neither', got {self.closed!r}")

    def accepts(self, value) -> bool:
        if isinstance(value, bool):
            return False
        if self.kind == "int" and not isinstance(value, numbers.Integral):
            return False
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            return False
        left, right = self.closed in ("left", "both"), self.closed in ("right", "both")
        if self.low is not None and not (value >= self.low if left else value > self.low):
            return False
        return self.high is None or (value <= self.high if right else value < self.high)

    def __str__(self) -> str:
        left, right = self.closed in ("left", "both"), self.closed in ("right", "both")
        noun = "an integer" if self.kind == "int" else "a number"
        if self.low is not None and self.high is not None:
            interval = f"{'[' if left else '('}{self.low:g}, {self.high:g}{']' if right else ')'}"
            return f"in {interval}" if self.kind == "real" else f"{noun} in {interval}"
        if self.low is not None:
            return f"{noun} {'>=' if left else '>'} {self.low:g}"
        if self.high is not None:
            return f"{noun} {'<=' if right else '<'} {self.high:g}"
        return noun


@dataclass(frozen=True)
class Options:
    """One of ``values`` (compared by equality; a bool never matches 0 or 1)."""

    values: tuple

    def __init__(self, *values):
        object.__setattr__(self, "values", tuple(values))

    def accepts(self, value) -> bool:
        # strings and integers only: a float 1.0 for n_layers or True for an option list is a mistake
        return (isinstance(value, (str, numbers.Integral)) and not isinstance(value, bool)
                and value in self.values)

    def __str__(self) -> str:
        words = [repr(v) for v in self.values]
        return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


@dataclass(frozen=True)
class _Boolean:
    def accepts(self, value) -> bool:
        return isinstance(value, (bool, np.bool_))

    def __str__(self) -> str:
        return "true or false"


BOOLEAN = _Boolean()


def _accepts(constraint, value) -> bool:
    if constraint is None:
        return value is None
    return constraint.accepts(value)


def describe(constraints) -> str:
    """The accepted values of a constraint list in words, e.g. "an integer >= 1 or 'auto'"."""
    words = ["None" if c is None else str(c) for c in constraints]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def check_param(name: str, value, constraints, where: str = "") -> None:
    """Raise ValueError "<where><name> must be <constraints in words>, got <value!r>" unless one accepts ``value``."""
    if constraints == NO_VALIDATION or any(_accepts(c, value) for c in constraints):
        return
    from ..errors import did_you_mean

    choices = [v for c in constraints if isinstance(c, Options) for v in c.values if isinstance(v, str)]
    hint = did_you_mean(value, choices) if isinstance(value, str) and choices else ""
    raise ValueError(f"{where}{name} must be {describe(constraints)}, got {value!r}{hint}")
