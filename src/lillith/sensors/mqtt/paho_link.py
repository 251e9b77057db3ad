"""The paho-mqtt link: the full-protocol fallback (``mqtt.client = "paho"``)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lillith.sensors.mqtt.messages import Incoming, LastWill, LinkError
from lillith.sensors.mqtt.settings import MqttSettings, tls_context


class PahoLink:
    """paho-mqtt connection with manual acknowledgement (the fallback link).

    paho's network loop runs in its own thread and hands messages to the event
    loop with ``call_soon_threadsafe``. QoS-1 messages are acknowledged only
    when the daemon says so (:meth:`ack`, after the agent processed the
    frame), so a message the daemon never processed is redelivered by the
    broker to the persistent session: at-least-once, end to end. The broker's
    in-flight window (unacknowledged messages per client) then bounds how far
    the broker runs ahead of the agents: backpressure, with the broker holding
    the rest.
    """


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
        # no in-flight cap on our publishes: paho would hold an output back in
        # its own queue while the PUBACK of its frame went out at once, and a
        # lost connection would then lose a frame the broker had forgotten
        self._client.max_inflight_messages_set(0)
        if s.username is not None:
            self._client.username_pw_set(s.username, s.password)
        ctx = tls_context(s)
        if ctx is not None:
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
        loop = asyncio.get_running_loop()
        if et is None:
            self._client.disconnect()  # clean: the broker discards the will
            await loop.run_in_executor(None, self._client.loop_stop)
            return
        # left by an exception: stop paho's thread (which would reconnect), then
        # close the socket without DISCONNECT, so the broker publishes the will
        await loop.run_in_executor(None, self._client.loop_stop)
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()

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
