"""Payload decoding and validation: bytes in, a validated :class:`Frame` or a reason out.

Accepted payloads (docs/mqtt.md, "Input payloads"):

- JSON ``{"t": <number>, "values": [<number>, ...]}`` (``t`` optional),
- JSON ``{"t": ..., "values": {"name": <number>, ...}}`` (named channels),
- a bare JSON number,
- msgpack of the same shapes (content type ``application/msgpack`` or
  ``application/x-msgpack``),
- raw little-endian float32 (content type ``application/octet-stream`` or
  ``application/x-float32le``), 4 bytes per channel.

Everything else is rejected with a :class:`RejectError` naming one reason from
:data:`REASONS`; nothing invalid reaches an agent. Decoding never raises
anything but :class:`RejectError`, whatever the bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from lillith.errors import LillithError

REASONS = (
    "oversized",
    "malformed_json",
    "malformed_msgpack",
    "malformed_binary",
    "too_deep",
    "wrong_type",
    "wrong_length",
    "unknown_channel",
    "missing_channel",
    "non_finite",
    "out_of_bounds",
    "bad_time",
    "time_out_of_range",
    "too_wide",
)
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack")
_JSON = json.JSONDecoder()
_MAX_T = 1.7976931348623157e308  # the largest float64
FLOAT32_TYPES = ("application/octet-stream", "application/x-float32le")
MAX_DEPTH = 8
"""Default nesting limit of a decoded payload (``Schema.max_depth``)."""
MAX_ABS_T = 1e11
"""Default bound of ``|t|`` in seconds (about 3,170 years either side of 1970;
``Schema.max_abs_t``). Stream times are seconds since the epoch; a time far
beyond any clock is a broken sender, and the agent's calendar arithmetic
(hours, days, time bins as 64-bit integers) is only defined within it."""
MAX_WIDTH = 256
"""Default largest number of values in a frame (``Schema.max_width``)."""
_FRAME_KEYS = frozenset(("t", "values"))


class RejectError(LillithError):
    """A payload that must not reach an agent; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, message: str, **fields: Any) -> None:
        super().__init__(message, reason=reason, **fields)
        self.reason = reason


@dataclass(frozen=True)
class Frame:
    """One validated frame.

    Attributes
    ----------
    values : ndarray, shape (C,), float64
        Finite channel values, in the configured channel order.
    t : float or None
        Stream time from the payload, if it carried one.
    """

    values: npt.NDArray[np.float64]
    t: float | None


@dataclass(frozen=True)
class Schema:
    """What a valid frame looks like for one agent.

    Attributes
    ----------
    channels : sequence of str, optional
        Channel names in order; named payloads are mapped onto them and must
        name each one exactly once. ``None``: positional frames only.
    width : int, optional
        Required number of values (``len(channels)`` when channels are set;
        ``None`` until the first valid frame fixes it).
    low, high : float
        Inclusive bounds of every value.
    max_bytes : int
        Largest accepted payload.
    max_abs_t : float
        Largest accepted ``|t|`` (seconds); beyond it ``time_out_of_range``.
    max_width : int
        Most values a frame may have (``too_wide`` beyond), whether or not
        the width is fixed yet.
    max_depth : int
        Deepest nesting of the decoded payload, under any key (``too_deep``).
    """

    channels: Sequence[str] | None = None
    width: int | None = None
    low: float = -1e12
    high: float = 1e12
    max_bytes: int = 65_536
    max_abs_t: float = MAX_ABS_T
    max_width: int = MAX_WIDTH
    max_depth: int = MAX_DEPTH

    @property
    def expected_width(self) -> int | None:
        """Width a frame must have, if known."""
        return len(self.channels) if self.channels else self.width


def _depth(obj: Any, limit: int) -> int:
    """Nesting depth of a decoded JSON/msgpack value, stopping past ``limit``."""
    stack = [(obj, 1)]
    deepest = 0
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(node, Mapping):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list | tuple):
            stack.extend((v, d + 1) for v in node)
    return deepest


def _number(v: Any, where: str) -> float:
    # bool is an int subclass in Python, but true/false is not a reading
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise RejectError("wrong_type", "value is not a number", at=where, type=type(v).__name__)
    return float(v)


def _too_deep(limit: int) -> RejectError:
    return RejectError("too_deep", "payload nests too deeply", limit=limit)


def _from_object(obj: Any, schema: Schema) -> Frame:
    limit = schema.max_depth
    try:
        return _from_object_checked(obj, schema)
    except OverflowError:  # an integer literal beyond float64 (JSON and msgpack allow them)
        raise RejectError("out_of_bounds", "number too large for a 64-bit float") from None
    except RejectError as e:
        # a wrong type may be deep nesting: name the real problem (checked
        # only on this rare path, so valid frames pay nothing for it)
        if e.reason in ("wrong_type", "bad_time") and _depth(obj, limit) > limit:
            raise _too_deep(limit) from None
        raise


def _plain(vals: list[Any], t: float | None, schema: Schema) -> Frame | None:
    """A list of plain finite floats (or ints) within bounds and of the right
    width, as a frame; None for anything else (the checked path then names it)."""
    want = schema.expected_width
    if not vals or (want is not None and len(vals) != want):
        return None
    if len(vals) > schema.max_width:
        return None
    lo, hi = schema.low, schema.high
    for v in vals:
        kind = type(v)
        if (kind is not float and kind is not int) or not lo <= v <= hi:
            return None  # also NaN (no comparison holds) and +-inf beyond any bound
        if kind is float and not math.isfinite(v):
            return None
    return Frame(np.array(vals, dtype=np.float64), t)


def _from_object_checked(obj: Any, schema: Schema) -> Frame:
    t: float | None = None
    if isinstance(obj, bool):
        raise RejectError("wrong_type", "payload is a boolean")
    if isinstance(obj, int | float):
        raw: list[float] = [float(obj)]
    elif type(obj) is dict or isinstance(obj, Mapping):
        if "values" not in obj:
            raise RejectError("wrong_type", "object payload lacks 'values'",
                         keys=sorted(map(str, obj))[:8])
        if len(obj) > 2 or not obj.keys() <= _FRAME_KEYS:
            # other keys are carried along unread, but not nested without bound
            limit = schema.max_depth
            if _depth(obj, limit) > limit:
                raise _too_deep(limit)
        if "t" in obj and obj["t"] is not None:
            tv = obj["t"]
            if (isinstance(tv, bool) or not isinstance(tv, int | float)
                    or not -_MAX_T <= tv <= _MAX_T):  # also NaN, inf and huge integers
                raise RejectError("bad_time", "'t' must be a finite number")
            bound = schema.max_abs_t
            if not -bound <= tv <= bound:
                raise RejectError("time_out_of_range", "'t' is beyond the configured bound",
                                  t=float(tv), limit=bound)
            t = float(tv)
        vals = obj["values"]
        if type(vals) is list:
            frame = _plain(vals, t, schema)  # the common case in one pass
            if frame is not None:
                return frame
        if isinstance(vals, list | tuple):  # checked value by value, naming the bad one
            raw = [_number(v, f"values[{i}]") for i, v in enumerate(vals)]
        elif isinstance(vals, Mapping):
            raw = _named(vals, schema)
        else:
            raise RejectError("wrong_type", "'values' must be a list or an object",
                         type=type(vals).__name__)
    else:
        raise RejectError("wrong_type", "payload must be a number or an object",
                     type=type(obj).__name__)
    return _validated(raw, t, schema)


def _named(vals: Mapping[Any, Any], schema: Schema) -> list[float]:
    if not schema.channels:
        raise RejectError("unknown_channel", "named values but no channels are configured",
                     names=sorted(map(str, vals))[:8])
    unknown = [str(k) for k in vals if k not in schema.channels]
    if unknown:
        raise RejectError("unknown_channel", "unknown channel names", names=unknown[:8])
    missing = [c for c in schema.channels if c not in vals]
    if missing:
        raise RejectError("missing_channel", "channels missing from the frame", names=missing[:8])
    return [_number(vals[c], c) for c in schema.channels]


def _validated(raw: Sequence[float], t: float | None, schema: Schema) -> Frame:
    want = schema.expected_width
    if len(raw) > schema.max_width:
        raise RejectError("too_wide", "frame has more values than the configured maximum",
                          length=len(raw), limit=schema.max_width)
    if len(raw) == 0 or (want is not None and len(raw) != want):
        raise RejectError("wrong_length", "frame has the wrong number of values",
                          length=len(raw), expected=want)
    lo, hi = schema.low, schema.high
    for v in raw:  # plain floats: cheaper than numpy for a frame of a few values
        if not math.isfinite(v):
            raise RejectError("non_finite", "frame contains NaN or Inf")
        if v < lo or v > hi:
            raise RejectError("out_of_bounds", "value outside the configured bounds",
                              low=lo, high=hi)
    return Frame(np.array(raw, dtype=np.float64), t)


def decode(payload: bytes, schema: Schema, *, content_type: str | None = None) -> Frame:
    """Decode and validate one payload.

    Parameters
    ----------
    payload : bytes
        The message body.
    schema : Schema
        Expected width, channel names, bounds and size limit.
    content_type : str, optional
        MQTT 5 content type; selects msgpack or raw float32, else JSON.

    Returns
    -------
    Frame

    Raises
    ------
    RejectError
        With a reason from :data:`REASONS`; never any other exception.
    """
    if len(payload) > schema.max_bytes:
        raise RejectError("oversized", "payload exceeds the size limit", bytes=len(payload),
                     limit=schema.max_bytes)
    ctype = content_type.split(";")[0].strip().lower() if content_type else ""
    if ctype in FLOAT32_TYPES:
        if len(payload) == 0 or len(payload) % 4:
            raise RejectError("malformed_binary", "raw float32 length is not a multiple of 4",
                         bytes=len(payload))
        if len(payload) // 4 > schema.max_width:
            raise RejectError("too_wide", "frame has more values than the configured maximum",
                              length=len(payload) // 4, limit=schema.max_width)
        # a signalling NaN raises the invalid flag in the cast (a RuntimeWarning,
        # an exception under -W error); it stays NaN and is rejected as non_finite
        with np.errstate(invalid="ignore"):
            vals = np.frombuffer(payload, dtype="<f4").astype(np.float64)
        return _validated(vals.tolist(), None, schema)
    if ctype in MSGPACK_TYPES:
        import msgpack

        try:
            obj = msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except Exception as e:  # msgpack raises several unrelated types
            raise RejectError("malformed_msgpack", "payload is not valid msgpack",
                         error=type(e).__name__) from None
        return _from_object(obj, schema)
    try:
        obj = _JSON.decode(payload.decode("utf-8"))  # json.loads minus its type checks
    except RecursionError:
        raise _too_deep(schema.max_depth) from None
    except (UnicodeDecodeError, ValueError) as e:
        raise RejectError("malformed_json", "payload is not valid JSON",
                     error=type(e).__name__) from None
    return _from_object(obj, schema)


def excerpt(payload: bytes, limit: int = 200) -> str:
    """A bounded, printable excerpt of a payload for dead-letter messages."""
    head = payload[:limit]
    text = head.decode("utf-8", errors="backslashreplace")
    return text + ("…" if len(payload) > limit else "")
