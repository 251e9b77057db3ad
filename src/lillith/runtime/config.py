"""Typed configuration, loaded once at the edge: TOML file, then environment, then flags.

Precedence (later wins): model defaults < TOML file < ``LILLITH_*`` environment
variables < command-line overrides. Environment keys nest with a double
underscore: ``LILLITH_AGENT__FABRIC__SHAPE='[13, 13, 64]'``, ``LILLITH_LOG__LEVEL=debug``;
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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lillith.agents.config import AgentConfig
from lillith.errors import ConfigError
from lillith.runtime.commands import CommandLimits
from lillith.sensors.codec import MAX_ABS_T, MAX_DEPTH, MAX_WIDTH, Schema
from lillith.sensors.mqtt import MqttSettings

ENV_PREFIX = "LILLITH_"
TOOL_VARIABLES = frozenset({"LILLITH_DATA", "LILLITH_BENCH_DIR"})
"""``LILLITH_*`` variables read by the benchmarks and tests, not settings."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogConfig(_Model):
    """Logging: level and rendering."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"


class AgentBinding(_Model):
    """One agent: its topics, its frame schema, its queue.

    With ``tick_s`` the agent reads one topic per channel (the last topic
    level names the channel, one value per message) and assembles a frame
    of the latest values every ``tick_s`` seconds (:mod:`lillith.sensors.assemble`);
    a channel silent for ``stale_s`` (default three ticks) is marked stale.
    """

    name: str = "default"
    topics: list[str] = Field(default_factory=lambda: ["sensors/#"])
    channels: list[str] | None = None
    width: int | None = None
    low: float = -1e12
    high: float = 1e12
    max_bytes: int = Field(65_536, ge=16)
    max_abs_t: float = Field(MAX_ABS_T, gt=0)
    max_width: int = Field(MAX_WIDTH, ge=1)
    max_depth: int = Field(MAX_DEPTH, ge=2)
    queue_size: int = Field(1024, ge=1)
    policy: Literal["backpressure", "drop_oldest"] = "backpressure"
    output_every: int = Field(1, ge=1)
    tick_s: float | None = Field(None, gt=0)
    stale_s: float | None = Field(None, gt=0)

    def frame_schema(self) -> Schema:
        """The codec's schema of this agent's frames: its bounds, and its width
        (``len(channels)``, else ``width``, else fixed by the first valid frame:
        :attr:`Schema.expected_width`)."""
        return Schema(channels=self.channels, width=self.width, low=self.low, high=self.high,
                      max_bytes=self.max_bytes, max_abs_t=self.max_abs_t,
                      max_width=self.max_width, max_depth=self.max_depth)

    @model_validator(mode="after")
    def _per_channel_needs_channels(self) -> AgentBinding:
        if self.tick_s is not None and not self.channels:
            raise ValueError("tick_s (one topic per channel) needs the channel names")
        if self.stale_s is not None and self.tick_s is None:
            raise ValueError("stale_s applies to per-channel topics (set tick_s)")
        width = self.frame_schema().expected_width
        if width is not None and width > self.max_width:
            raise ValueError(f"the width ({width}) exceeds max_width ({self.max_width})")
        return self


class StateSettings(_Model):
    """Snapshots: where, how often, how many kept (see docs/snapshots.md)."""

    dir: str = "./lillith-state"
    """Local directory, or an fsspec URL (``memory://x``, ``s3://bucket/prefix``)."""
    checkpoint_every_frames: int | None = Field(5000, ge=1)
    checkpoint_every_seconds: float | None = Field(300.0, gt=0)
    keep_last: int = Field(5, ge=1)
    keep_every: int = Field(0, ge=0)
    """Also keep every K-th snapshot (by sequence number); 0: none."""
    storage_options: dict[str, Any] = Field(default_factory=dict)
    """Passed to fsspec for URLs (credentials, endpoint, ...)."""
    retry_min_s: float = Field(1.0, gt=0)
    """After a failed snapshot the next attempt waits this long, doubling with
    each failure in a row ..."""
    retry_max_s: float = Field(60.0, gt=0)
    """... up to this."""


class ClusterSettings(_Model):
    """Agents as Ray actors (``lillith run --cluster``; docs/operations.md, "Beyond
    one machine: Ray"). Absent: every agent on a worker thread of the daemon."""

    address: str = "ray"
    """``ray``: a local Ray started by the daemon; ``ray://ADDRESS``: join the
    cluster at ``ADDRESS`` (``auto``, or the head's ``HOST:PORT``, 6379 by
    default; the daemon runs on one of its nodes)."""
    actors: int | None = Field(None, ge=1)
    """Actors the agents are sharded over (round robin); None: one per agent."""
    num_cpus: float = Field(1.0, ge=0)
    """CPUs Ray reserves for each actor (placement: an actor goes where they are free)."""
    local_cpus: int | None = Field(None, ge=1)
    """CPUs of the local Ray (``address = "ray"``); None: all of the machine's."""
    placement: Literal["spread", "pack"] = "spread"
    """``spread``: actors over as many nodes as possible; ``pack``: Ray's default."""
    max_restarts: int = Field(10, ge=-1)
    """Times Ray restarts a dead actor (-1: always)."""
    replay_frames: int = Field(50_000, ge=0)
    """Frames per agent the daemon keeps since the agent's last snapshot, to bring a
    restarted actor back to the exact state it had (beyond: it resumes with a gap)."""
    namespace: str = "lillith"
    """Ray namespace of the actors (named ``<mqtt client_id>/<index>``)."""

    @model_validator(mode="after")
    def _known_scheme(self) -> ClusterSettings:
        if self.address != "ray" and not (self.address.startswith("ray://")
                                          and len(self.address) > len("ray://")):
            raise ValueError("cluster address must be 'ray' or 'ray://ADDRESS'")
        return self


class Settings(_Model):
    """Root of the configuration."""

    log: LogConfig = Field(default_factory=LogConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    agents: list[AgentBinding] = Field(default_factory=lambda: [AgentBinding()])
    state: StateSettings = Field(default_factory=StateSettings)
    commands: CommandLimits = Field(default_factory=CommandLimits)
    torch_threads: int = Field(1, ge=1, le=256)
    metrics_port: int | None = Field(None, ge=1, le=65535)
    cluster: ClusterSettings | None = None


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
        if not key.startswith(ENV_PREFIX) or key in TOOL_VARIABLES:
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
