"""Typed configuration, loaded once at the edge: TOML file, then environment, then flags.

Precedence (later wins): model defaults < TOML file < ``LILLITH_*`` environment
variables < command-line overrides. Environment keys nest with a double
underscore: ``LILLITH_FABRIC__SHAPE='[13, 13, 64]'``, ``LILLITH_LOG__LEVEL=debug``;
values are parsed as JSON when they parse, else taken as strings. The result
is an immutable :class:`Settings` passed down explicitly; nothing deep reads
globals or the environment.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from lillith.errors import ConfigError

ENV_PREFIX = "LILLITH_"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogConfig(_Model):
    """Logging: level and rendering."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"


class FabricConfig(_Model):
    """Neural fabric of an agent (see :class:`lillith.fabric.NeuralFabric3D`)."""

    shape: tuple[int, int, int] = (5, 5, 16)
    n_branches: int = Field(5, ge=1, le=64)
    n_segments: int = Field(10, ge=1, le=1024)
    n_features: int = Field(64, ge=1)
    wiring: dict[str, Any] = Field(default_factory=lambda: {"type": "Local3D"})
    params: dict[str, float] = Field(default_factory=dict)
    noise_scale: float = Field(2.0, ge=0)
    intent_gain: float = Field(0.5, ge=0)
    bidirectional_weight: float = Field(0.5, ge=0, le=1)
    seed: int = 0

    @field_validator("shape")
    @classmethod
    def _positive(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(v) < 1:
            raise ValueError("every fabric dimension must be >= 1")
        return v


class SomConfig(_Model):
    """Self-organizing map on the pooled fabric state."""

    map_shape: tuple[int, ...] = (17, 17)
    sigma_min: float = Field(0.5, gt=0)
    lr0: float = Field(0.5, gt=0, le=1)
    lr_min: float = Field(0.01, gt=0, le=1)
    decay_steps: int = Field(10_000, ge=1)

    @field_validator("map_shape")
    @classmethod
    def _dims(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if len(v) not in (2, 3) or min(v) < 1:
            raise ValueError("map_shape must have 2 or 3 positive dimensions")
        return v


class Settings(_Model):
    """Root of the configuration."""

    log: LogConfig = Field(default_factory=LogConfig)
    fabric: FabricConfig = Field(default_factory=FabricConfig)
    som: SomConfig = Field(default_factory=SomConfig)
    state_dir: Path = Path("./lillith-state")


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = key[len(ENV_PREFIX):].lower().split("__")
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = layer
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return layer


def load_settings(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build :class:`Settings` from a TOML file, the environment and overrides.

    Parameters
    ----------
    path : Path, optional
        TOML file; missing file raises :class:`ConfigError`.
    env : mapping, optional
        Environment (pass ``os.environ`` at the edge; default: none).
    overrides : mapping, optional
        Nested values from command-line flags.

    Raises
    ------
    ConfigError
        Unreadable TOML, unknown keys or invalid values, with the field paths.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as e:
            raise ConfigError("config file not found", path=str(path)) from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("config file is not valid TOML", path=str(path),
                              detail=str(e)) from e
    data = _deep_merge(data, _env_layer(env or {}))
    data = _deep_merge(data, overrides or {})
    try:
        return Settings.model_validate(data)
    except ValidationError as e:
        problems = [
            {"field": ".".join(str(p) for p in err["loc"]), "error": err["msg"]}
            for err in e.errors()
        ]
        raise ConfigError("invalid configuration", problems=problems) from e
