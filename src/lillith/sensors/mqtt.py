"""The one module that talks to aiomqtt (2.5): connection settings and a thin link.

Everything MQTT-specific (protocol versions, persistent sessions, TLS, the
last will, content types) is decided here; the runtime sees
:class:`MqttLink` and plain :class:`Incoming` messages.

Note on flow control: aiomqtt 2.x acknowledges QoS-1 messages as paho reads
them, before application code sees them; a daemon that stops reading only
stops *its* consumption, while paho keeps reading into aiomqtt's queue.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

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
    client: Literal["paho", "aiomqtt"] = "paho"
    receive_maximum: int = Field(64, ge=1, le=65535)


@dataclass(frozen=True)
class Incoming:
    """One received message: topic, payload bytes, MQTT 5 content type if any.

    ``mid``/``qos`` identify it for :meth:`PahoLink.ack` (``mid`` 0: nothing to
    acknowledge); a packet id is only meaningful on the connection (``link``)
    that received the message.
    """

    topic: str
    payload: bytes
    content_type: str | None
    mid: int = 0
    qos: int = 0
    link: int = 0  # id of the connection that received it


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
    """aiomqtt connection; use as ``async with MqttLink(settings, will) as link``.

    aiomqtt acknowledges QoS-1 messages on receipt, so :meth:`ack` does
    nothing here: what it has received and lillith has not processed is lost
    if the process dies. :class:`PahoLink` (the default) acknowledges after
    processing instead.
    """

    acks_on_receipt = True

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
                      qos: int | None = None, wait: bool = False) -> None:
        """Publish ``payload`` (QoS defaults to the configured one; aiomqtt always waits)."""
        await self._client.publish(topic, payload, qos=self.settings.qos if qos is None else qos,
                                   retain=retain)

    def pending(self) -> int:
        """Messages received (and, by aiomqtt, already acknowledged) but not yet read."""
        return len(self._client.messages)

    def ack(self, msg: Incoming) -> None:
        """aiomqtt acknowledged ``msg`` when it arrived: nothing to do."""

    async def messages(self) -> AsyncIterator[Incoming]:
        """Received messages, in order."""
        async for m in self._client.messages:
            payload = m.payload if isinstance(m.payload, bytes | bytearray) else (
                str(m.payload).encode() if m.payload is not None else b"")
            ctype = getattr(m.properties, "ContentType", None) if m.properties else None
            yield Incoming(str(m.topic), bytes(payload), ctype, int(m.mid), int(m.qos))


class LinkError(MqttError):
    """Connection to the broker failed or was lost (paho link)."""


class PahoLink:
    """paho-mqtt connection with manual acknowledgement (the default link).

    paho's network loop runs in its own thread and hands messages to the event
    loop with ``call_soon_threadsafe``. QoS-1 messages are acknowledged only
    when the daemon says so (:meth:`ack`, after the agent processed the
    frame), so a message the daemon never processed is redelivered by the
    broker to the persistent session: at-least-once, end to end. The broker's
    in-flight window (unacknowledged messages per client) then bounds how far
    the broker runs ahead of the agents: backpressure, with the broker holding
    the rest.
    """

    acks_on_receipt = False

    def __init__(self, settings: MqttSettings, will: LastWill | None = None) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.settings = s = settings
        self._paho = paho
        v5 = s.protocol == 5
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=s.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else not s.persistent_session, manual_ack=True)
        if s.username is not None:
            self._client.username_pw_set(s.username, s.password)
        if s.tls_ca is not None:
            ctx = ssl.create_default_context(cafile=str(s.tls_ca))
            if s.tls_cert is not None:
                ctx.load_cert_chain(str(s.tls_cert), None if s.tls_key is None else str(s.tls_key))
            self._client.tls_set_context(ctx)
        if will is not None:
            self._client.will_set(will.topic, will.payload, qos=1, retain=True)
        # paho's thread appends here and wakes the loop only when the consumer
        # is idle: one call_soon_threadsafe per burst, not per message
        self._inbox: collections.deque[Incoming | None] = collections.deque()
        self._armed = False
        self._wake = asyncio.Event()
        self._connected: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> PahoLink:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._connected = loop.create_future()
        connected = self._connected
        c = self._client
        s = self.settings

        def on_connect(client: Any, ud: Any, flags: Any, rc: Any, props: Any = None) -> None:
            ok = not rc.is_failure if hasattr(rc, "is_failure") else rc == 0
            loop.call_soon_threadsafe(_resolve, connected, None if ok else LinkError(str(rc)))

        def deliver(item: Incoming | None) -> None:  # on paho's thread
            self._inbox.append(item)
            if not self._armed:
                self._armed = True
                loop.call_soon_threadsafe(self._wake.set)

        def on_disconnect(client: Any, ud: Any, flags: Any, rc: Any, props: Any = None) -> None:
            deliver(None)

        def on_message(client: Any, ud: Any, m: Any) -> None:
            ctype = getattr(m.properties, "ContentType", None) if m.properties else None
            deliver(Incoming(m.topic, bytes(m.payload), ctype, int(m.mid), int(m.qos),
                             id(self)))

        c.on_connect = on_connect
        c.on_disconnect = on_disconnect
        c.on_message = on_message
        kwargs: dict[str, Any] = {}
        if s.protocol == 5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = s.session_expiry_s if s.persistent_session else 0
            # unacknowledged QoS-1 messages the broker may send us: beyond it the
            # broker holds them (flow control; 3.1.1 relies on the broker's limit)
            props.ReceiveMaximum = s.receive_maximum
            kwargs = {"clean_start": not s.persistent_session, "properties": props}
        try:
            await loop.run_in_executor(
                None, lambda: c.connect(s.host, s.port, s.keepalive, **kwargs))
        except OSError as e:
            raise LinkError(f"cannot connect to {s.host}:{s.port}: {e}") from e
        c.loop_start()
        try:
            await asyncio.wait_for(connected, 30)
        except BaseException:
            c.loop_stop()
            raise
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._client.disconnect()
        await asyncio.get_running_loop().run_in_executor(None, self._client.loop_stop)

    async def subscribe(self, topic_filter: str) -> None:
        """Subscribe with the configured QoS."""
        rc, _ = self._client.subscribe(topic_filter, qos=self.settings.qos)
        if rc != self._paho.MQTT_ERR_SUCCESS:
            raise LinkError(f"subscribe failed: {rc}")

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                      qos: int | None = None, wait: bool = False) -> None:
        """Queue ``payload`` for sending; ``wait`` blocks until the broker has it."""
        info = self._client.publish(topic, payload,
                                    qos=self.settings.qos if qos is None else qos, retain=retain)
        if info.rc != self._paho.MQTT_ERR_SUCCESS:
            raise LinkError(f"publish failed: {info.rc}")
        if wait:
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: info.wait_for_publish(10))

    def ack(self, msg: Incoming) -> None:
        """Acknowledge ``msg`` to the broker (QoS 1); safe from any thread.

        A message received on an earlier connection is not acknowledged here:
        its packet id may belong to another message now; the broker redelivers
        it to the session instead (a QoS-1 duplicate, never a loss).
        """
        if msg.qos > 0 and msg.mid and msg.link == id(self):
            self._client.ack(msg.mid, msg.qos)

    def pending(self) -> int:
        """Messages received but not yet read (none acknowledged yet)."""
        return len(self._inbox)

    async def messages(self) -> AsyncIterator[Incoming]:
        """Received messages, in order; raises :class:`LinkError` on disconnect."""
        inbox = self._inbox
        while True:
            while inbox:
                m = inbox.popleft()
                if m is None:
                    raise LinkError("disconnected from the broker")
                yield m
            self._wake.clear()
            self._armed = False
            if inbox:  # appended between the last pop and disarming
                continue
            await self._wake.wait()


def _resolve(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


def open_link(settings: MqttSettings, will: LastWill | None = None) -> MqttLink | PahoLink:
    """The configured link implementation (``settings.client``)."""
    return PahoLink(settings, will) if settings.client == "paho" else MqttLink(settings, will)
