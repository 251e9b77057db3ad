"""The one module that talks to aiomqtt (2.5): connection settings and a thin link.

Everything MQTT-specific (protocol versions, persistent sessions, TLS, the
last will, content types) is decided here; the runtime sees
:class:`MqttLink` and plain :class:`Incoming` messages.

Note on flow control: aiomqtt 2.x acknowledges QoS-1 messages as paho reads
them, before application code sees them; a daemon that stops reading only
stops *its* consumption, while paho keeps reading into aiomqtt's queue.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field

MqttError = aiomqtt.MqttError


class MqttSettings(BaseModel):
    """Broker connection (one client per daemon)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "localhost"
    port: int = Field(1883, ge=1, le=65535)
    client_id: str = "lillith"
    protocol: Literal[5, 311] = 5
    qos: Literal[0, 1] = 1
    persistent_session: bool = True
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0)
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    keepalive: int = Field(30, ge=5)
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)


@dataclass(frozen=True)
class Incoming:
    """One received message: topic, payload bytes, MQTT 5 content type if any."""

    topic: str
    payload: bytes
    content_type: str | None


@dataclass(frozen=True)
class LastWill:
    """Retained message the broker publishes if the daemon vanishes."""

    topic: str
    payload: bytes


def topic_matches(topic: str, topic_filter: str) -> bool:
    """MQTT wildcard match (``+``, ``#``; a ``$share/group/`` prefix is ignored)."""
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2]
    return aiomqtt.Topic(topic).matches(topic_filter)


class MqttLink:
    """An open connection; use as ``async with MqttLink(settings, will) as link``."""

    def __init__(self, settings: MqttSettings, will: LastWill | None = None) -> None:
        self.settings = settings
        s = settings
        protocol = (aiomqtt.ProtocolVersion.V5 if s.protocol == 5
                    else aiomqtt.ProtocolVersion.V311)
        kwargs: dict[str, object] = {}
        if s.protocol == 5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = s.session_expiry_s if s.persistent_session else 0
            kwargs["properties"] = props
            kwargs["clean_start"] = not s.persistent_session
        else:
            kwargs["clean_session"] = not s.persistent_session
        tls: ssl.SSLContext | None = None
        if s.tls_ca is not None:
            tls = ssl.create_default_context(cafile=str(s.tls_ca))
            if s.tls_cert is not None:
                tls.load_cert_chain(str(s.tls_cert), None if s.tls_key is None else str(s.tls_key))
        self._client = aiomqtt.Client(
            s.host, s.port, identifier=s.client_id, protocol=protocol,
            username=s.username, password=s.password, keepalive=s.keepalive,
            will=None if will is None else aiomqtt.Will(will.topic, will.payload, qos=1,
                                                        retain=True),
            tls_context=tls, **kwargs,  # type: ignore[arg-type]
        )

    async def __aenter__(self) -> MqttLink:
        await self._client.__aenter__()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._client.__aexit__(et, e, tb)

    async def subscribe(self, topic_filter: str) -> None:
        """Subscribe with the configured QoS (``$share/group/...`` works on MQTT 5)."""
        await self._client.subscribe(topic_filter, qos=self.settings.qos)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                      qos: int | None = None) -> None:
        """Publish ``payload`` (QoS defaults to the configured one)."""
        await self._client.publish(topic, payload, qos=self.settings.qos if qos is None else qos,
                                   retain=retain)

    def pending(self) -> int:
        """Messages received (and, by aiomqtt, already acknowledged) but not yet read."""
        return len(self._client.messages)

    async def messages(self) -> AsyncIterator[Incoming]:
        """Received messages, in order."""
        async for m in self._client.messages:
            payload = m.payload if isinstance(m.payload, bytes | bytearray) else (
                str(m.payload).encode() if m.payload is not None else b"")
            ctype = getattr(m.properties, "ContentType", None) if m.properties else None
            yield Incoming(str(m.topic), bytes(payload), ctype)
