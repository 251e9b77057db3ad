"""Commands on ``lillith/<agent>/cmd``: bounded, validated at the edge, before any work.

A command is a JSON object of at most ``max_bytes`` bytes (checked before it
is parsed, so a huge payload costs the event loop nothing), with a string
``cmd`` naming one of :data:`COMMANDS`, an optional ``id`` echoed in the
reply, and the fields of that command, each typed and bounded (pydantic
models, unknown fields refused). :func:`parse_command` returns the plain
dict the daemon runs, or raises :class:`CommandError` naming what is wrong.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lillith.errors import LillithError

COMMANDS = ("status", "pause", "resume", "checkpoint", "evolve", "mode", "surgery")


class CommandError(LillithError):
    """A command refused before it ran (too large, malformed, a field out of bounds)."""


class CommandLimits(BaseModel):
    """Bounds of a command (``[commands]`` in the configuration)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(65_536, ge=64)
    """Largest command payload; larger ones are refused unread."""
    max_tag: int = Field(256, ge=0)
    """Longest surgery ``tag`` (characters): it is kept in every snapshot and logged."""
    max_signature: float = Field(1e3, gt=0)
    """Largest ``|value|`` in a surgery ``signature``."""
    max_signature_len: int = Field(65_536, ge=1)
    """Most values in a surgery ``signature`` (the agent requires its ``d_model``)."""


Id = Annotated[str, Field(max_length=256)] | int | None


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    cmd: str
    id: Id = None

    @field_validator("id")
    @classmethod
    def _bounded_id(cls, v: Any) -> Any:
        if isinstance(v, int) and not -(1 << 53) <= v <= 1 << 53:
            raise ValueError("an integer id must fit a JSON number exactly (|id| <= 2**53)")
        return v


class _Plain(_Command):
    cmd: Literal["status", "pause", "resume", "checkpoint", "evolve"]


class _Mode(_Command):
    cmd: Literal["mode"]
    mode: Literal["normal", "random", "intentional", "bidirectional"] | None = None


class _Surgery(_Command):
    cmd: Literal["surgery"]
    op: Literal["insert", "freeze", "unfreeze"]
    tile: int = Field(ge=0, le=1 << 20)
    signature: list[float] | None = None
    freeze: bool = True
    tag: str = ""


_MODELS: dict[str, type[_Command]] = {"mode": _Mode, "surgery": _Surgery,
                                      **{c: _Plain for c in ("status", "pause", "resume",
                                                             "checkpoint", "evolve")}}


def parse_command(payload: bytes, limits: CommandLimits) -> dict[str, Any]:
    """The validated command in ``payload``, as a plain dict.

    Raises
    ------
    CommandError
        Larger than ``limits.max_bytes``, not a JSON object with a string
        ``cmd``, an unknown command, an unknown field, a field of the wrong
        type, or beyond its bound (``tag`` length, ``signature`` values and
        length).
    """
    if len(payload) > limits.max_bytes:
        raise CommandError("command exceeds the size limit", bytes=len(payload),
                           limit=limits.max_bytes)
    try:
        raw = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CommandError("command is not valid JSON", error=type(e).__name__) from None
    if not isinstance(raw, dict) or not isinstance(raw.get("cmd"), str):
        raise CommandError("a command is an object with a string 'cmd'")
    model = _MODELS.get(raw["cmd"])
    if model is None:
        raise CommandError(f"unknown command {raw['cmd'][:64]!r}", known=list(COMMANDS))
    if isinstance(raw.get("signature"), list):  # ints are floats here (strict mode)
        raw["signature"] = [float(v) if isinstance(v, int) and not isinstance(v, bool)
                            and abs(v) < 1 << 1023 else v for v in raw["signature"]]
    try:
        cmd = model.model_validate(raw)
    except ValidationError as e:
        problems = [{"field": ".".join(str(p) for p in err["loc"])[:64],
                     "error": err["msg"][:200]} for err in e.errors()[:5]]
        raise CommandError("invalid command", problems=problems) from None
    if isinstance(cmd, _Surgery):
        if len(cmd.tag) > limits.max_tag:
            raise CommandError("surgery tag too long", length=len(cmd.tag),
                               limit=limits.max_tag)
        sig = cmd.signature
        if cmd.op == "insert" and sig is None:
            raise CommandError("insert needs a 'signature' list")
        if sig is not None:
            if len(sig) > limits.max_signature_len:
                raise CommandError("signature too long", length=len(sig),
                                   limit=limits.max_signature_len)
            if not all(math.isfinite(v) and abs(v) <= limits.max_signature for v in sig):
                raise CommandError("signature values must be finite and within the bound",
                                   limit=limits.max_signature)
    return cmd.model_dump(exclude_none=False)


def echo_fields(payload: bytes) -> dict[str, Any]:
    """``id`` and ``cmd`` of a command payload, for the reply, when it is a JSON
    object of at most the default command size whose ``id`` / ``cmd`` are short
    scalars; else nothing (the reply then carries the excerpt alone)."""
    if not isinstance(payload, bytes) or len(payload) > CommandLimits().max_bytes:
        return {}
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(doc, dict):
        return {}
    out: dict[str, Any] = {}
    for k in ("id", "cmd"):
        v = doc.get(k)
        if (isinstance(v, str) and len(v) <= 256) or (isinstance(v, int | float) and not \
                isinstance(v, bool) and math.isfinite(v)):
            out[k] = v
    return out
