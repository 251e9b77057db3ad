"""Typed configuration, loaded once at the edge: TOML file, then environment, then flags.

Precedence (later wins): model defaults < TOML file < ``LILLITH_*`` environment
variables < command-line overrides. Environment keys nest with a double
underscore: ``LILLITH_AGENT__FABRIC__SHAPE='[13, 13, 64]'``, ``LILLITH_LOG__LEVEL=debug``;
values are parsed as JSON when they parse, else taken as strings. The layers
are pydantic-settings sources (:meth:`Settings.settings_customise_sources`),
merged and validated by pydantic-settings. The result is an immutable
:class:`Settings` passed down explicitly; nothing deep reads globals or the
environment (``Settings()`` alone reads nothing: only :func:`load_settings`
adds the file and environment layers).

The configuration file is ``--config FILE``, else ``./lillith.toml`` when it
exists (:func:`default_config_path`).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from lillith.agents.config import AgentConfig
from lillith.errors import ConfigError
from lillith.runtime.commands import CommandLimits
from lillith.sensors.codec import MAX_ABS_T, MAX_DEPTH, MAX_WIDTH, Schema
from lillith.sensors.mqtt import MqttSettings

ENV_PREFIX = "LILLITH_"
TOOL_VARIABLES = frozenset({"LILLITH_DATA", "LILLITH_BENCH_DIR"})
"""``LILLITH_*`` variables read by the benchmarks and tests, not settings."""
DEFAULT_CONFIG = Path("lillith.toml")
"""Read from the working directory when present and no ``--config`` is given."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogConfig(_Model):
    """Logging: level and rendering."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"
    summary_every_s: float = Field(10.0, ge=0, le=86_400)
    """The daemon logs ``frames_processed`` per agent this often (0: never)."""


class HomeAssistantSettings(_Model):
    """Home Assistant MQTT discovery (docs/operations.md): per agent a
    ``binary_sensor`` (the alarm) and ``sensor`` entities (likelihood, score,
    energy) announced under ``prefix``, retained; removed when the agent goes."""

    enabled: bool = False
    prefix: str = Field("homeassistant", min_length=1, pattern=r"^[^#+\s]+$")
    """Home Assistant's discovery prefix (its MQTT integration's setting)."""
    device_name: str = Field("lillith", min_length=1, max_length=64)
    """Shown in Home Assistant before each agent's name."""


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
    agent_per_topic: bool = False
    """One agent per topic matching ``topics`` (each a separate sensor), named
    ``<name>/<topic>`` with its state under that name, instead of one agent
    fed by every matching topic."""
    max_topic_agents: int = Field(64, ge=1, le=4096)
    """With ``agent_per_topic``: at most this many agents; frames of further
    topics are dead-lettered (``too_many_topics``)."""

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
        if self.agent_per_topic and self.tick_s is not None:
            raise ValueError("agent_per_topic and tick_s (one topic per channel) exclude "
                             "each other")
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
    """Times Ray restarts a dead actor (-1: always); then the daemon creates a new one
    in its place."""
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


class Settings(BaseSettings):
    """Root of the configuration."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    log: LogConfig = Field(default_factory=LogConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    agents: list[AgentBinding] = Field(default_factory=lambda: [AgentBinding()])
    state: StateSettings = Field(default_factory=StateSettings)
    commands: CommandLimits = Field(default_factory=CommandLimits)
    torch_threads: int = Field(1, ge=1, le=256)
    metrics_port: int | None = Field(None, ge=1, le=65535)
    metrics_addr: str = Field("127.0.0.1", min_length=1, max_length=255)
    """Address the metrics endpoint binds (``0.0.0.0``: every interface, for a
    Prometheus in another container)."""
    homeassistant: HomeAssistantSettings = Field(default_factory=HomeAssistantSettings)

    cluster: ClusterSettings | None = None
    """Agents as Ray actors (``lillith run --cluster``); None: worker threads."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The layers, first wins: flags (the constructor's arguments), then the
        ``LILLITH_*`` environment, then the TOML file; pydantic-settings merges
        them (nested tables key by key). Outside :func:`load_settings` only
        the constructor's arguments."""
        layers = _LAYERS.get()
        if layers is None:
            return (init_settings,)
        path, env = layers
        sources: list[PydanticBaseSettingsSource] = [
            init_settings, InitSettingsSource(settings_cls, _env_layer(env))]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


_LAYERS: ContextVar[tuple[Path | None, Mapping[str, str]] | None] = ContextVar(
    "lillith_settings_layers", default=None)


@contextmanager
def _layered(path: Path | None, env: Mapping[str, str]) -> Iterator[None]:
    token = _LAYERS.set((path, env))
    try:
        yield
    finally:
        _LAYERS.reset(token)


def default_config_path(given: Path | None) -> Path | None:
    """The configuration file to read: ``given``, else ``./lillith.toml`` when it
    exists, else none (the defaults)."""
    if given is not None:
        return given
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    """The ``LILLITH_*`` variables of ``env`` as a nested layer (keys split on
    ``__``, values JSON when they parse, else strings), tool variables left out.

    Every such variable becomes a key, so a misspelt one (``LILLITH_MQTT__HOSTT``)
    is refused by the models' ``extra="forbid"``; pydantic-settings' own
    environment source reads only the fields it knows and would skip it
    silently, and reads the process environment rather than ``env``.
    """
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
    if path is not None:
        try:
            tomllib.loads(Path(path).read_text())
        except (FileNotFoundError, IsADirectoryError) as e:
            raise ConfigError("config file not found", path=str(path)) from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("config file is not valid TOML", path=str(path),
                              detail=str(e)) from e
    try:
        with _layered(None if path is None else Path(path), env or {}):
            return Settings(**dict(overrides or {}))
    except ValidationError as e:
        problems = [
            {"field": ".".join(str(p) for p in err["loc"]), "error": err["msg"]}
            for err in e.errors()
        ]
        raise ConfigError("invalid configuration", problems=problems) from e
