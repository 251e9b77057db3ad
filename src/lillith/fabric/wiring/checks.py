"""Validation of wiring parameters: each raises :class:`WiringError` naming the parameter."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from lillith.errors import WiringError
from lillith.fabric.topology import Shape3, n_neurons

INT32_MAX = int(np.iinfo(np.int32).max)


def as_int(value: object) -> int | None:
    """``value`` as a Python int when it is an integer (not a bool), else None."""
    if isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    return None


def is_int(value: object) -> bool:
    return as_int(value) is not None


def check_int(name: str, value: object, minimum: int = 0) -> int:
    v = as_int(value)
    if v is None or v < minimum:
        raise WiringError(
            f"{name} must be an integer >= {minimum}", parameter=name, value=value
        )
    return v


def check_real(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    v = math.nan
    ok = False
    if isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    ):
        v = float(value)
        ok = True
    below = low is not None and (v < low or (low_open and v == low))
    above = high is not None and v > high
    if not math.isfinite(v) or below or above:
        ok = False
    if not ok:
        raise WiringError(
            f"{name} must be a finite number"
            + (f" {'>' if low_open else '>='} {low}" if low is not None else "")
            + (f" and <= {high}" if high is not None else ""),
            parameter=name,
            value=value,
        )
    return v


def check_triple(name: str, value: object, *, positive: bool) -> tuple[float, float, float]:
    items = list(value) if isinstance(value, Iterable) else []
    if len(items) != 3:
        raise WiringError(f"{name} must hold three numbers", parameter=name, value=value)
    vals = tuple(
        check_real(f"{name}[{i}]", v, low=0.0, low_open=positive) for i, v in enumerate(items)
    )
    if sum(vals) <= 0:
        raise WiringError(f"{name} must not sum to zero", parameter=name, value=value)
    return vals[0], vals[1], vals[2]


def normalize_shape(shape: object) -> Shape3:
    if is_int(shape):
        dims: list[object] = [1, 1, shape]
    else:
        dims = list(shape) if isinstance(shape, Iterable) else []
    ints = [as_int(d) for d in dims]
    if len(ints) != 3 or not all(d is not None and d >= 1 for d in ints):
        raise WiringError(
            "shape must be three positive integers (X, Y, Z) or a neuron count", shape=shape
        )
    out = (int(ints[0] or 0), int(ints[1] or 0), int(ints[2] or 0))
    if n_neurons(out) > INT32_MAX:
        raise WiringError("fabric too large for int32 neuron indices", shape=out)
    return out


def jsonable(value: Any, name: str) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if is_int(value):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, list | tuple | np.ndarray):
        return [jsonable(v, name) for v in value]
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, name) for k, v in value.items()}
    raise WiringError(
        "wiring parameter is not JSON-serialisable", parameter=name, kind=type(value).__name__
    )
