"""lillith's own asyncio MQTT 3.1.1 / 5 client: the default link (``mqtt.client = "native"``).

docs/mqtt.md says why it exists (measured), what it speaks and what it does not.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import threading
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from lillith.sensors.mqtt import wire
from lillith.sensors.mqtt.messages import Incoming, LastWill, LinkError
from lillith.sensors.mqtt.settings import MqttSettings, tls_context

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class NativeLink(asyncio.Protocol):
    """lillith's own asyncio MQTT 3.1.1 / 5 client (the default link).

    The socket is read by the event loop itself: each received chunk is cut
    into packets in one pass (:mod:`lillith.sensors.mqtt.wire` holds the packet
    formats), PUBLISH packets become :class:`Incoming` messages in an inbox
    that :meth:`messages` drains, and the acknowledgements the daemon gives
    (:meth:`ack`, after the agent processed the frame) are gathered and sent
    in one write per burst. Behaviour matches :class:`PahoLink`: stable
    client id and persistent session, QoS 0 and 1, TLS, user name and
    password, the last will, keepalive pings, MQTT 5 content types and
    receive maximum; a lost connection ends :meth:`messages` with
    :class:`LinkError` and the daemon reconnects with a new link.

    Flow control: at QoS 1 the broker should send at most ``receive_maximum``
    unacknowledged messages (MQTT 5), so unprocessed frames stay at the
    broker (backpressure; mosquitto 2.0.11 was seen to ignore the window once
    a client acknowledges). Whatever the QoS, the socket is not read while
    more than :attr:`INBOX_HIGH` messages wait unread (the daemon's intake
    stops taking them when the agent's queue is full), and reading resumes
    below :attr:`INBOX_LOW`; except while a reply is awaited (a SUBACK, the
    PUBACK of a waited publish), which may sit behind the messages. Outgoing
    QoS-1 publishes keep at most :attr:`MAX_INFLIGHT` (or the broker's
    receive maximum, if smaller) unacknowledged; the rest queue in order,
    and :meth:`publish` waits while :attr:`MAX_QUEUED` are queued. An
    acknowledgement given while publishes are queued waits behind them, so a
    frame is never acknowledged before its output has gone out.
    """

    INBOX_HIGH = 8192
    INBOX_LOW = 1024
    MAX_INFLIGHT = 64
    MAX_QUEUED = 10_000
    TIMEOUT_S = 30.0

    def __init__(self, settings: MqttSettings, will: LastWill | None = None) -> None:
        self.settings = settings
        self._v5 = settings.protocol == 5
        self._will = None if will is None else wire.Will(will.topic, will.payload)
        self._inbox: collections.deque[Incoming | None] = collections.deque()
        self._buf = bytearray()  # the start of a packet not yet complete
        self._need = 0  # bytes of _buf needed before parsing is worth trying again
        self._acks = bytearray()
        self._acks_due = False
        self._aliases: dict[int, str] = {}
        self._next_mid = 0
        self._publishes: dict[int, asyncio.Future[None] | None] = {}  # unacknowledged QoS 1
        self._subscribes: dict[int, asyncio.Future[list[int]]] = {}
        # packets behind the in-flight window, in order: QoS-1 publishes (True)
        # and the acknowledgements given after them (False), which must not
        # overtake them (the broker would forget a frame whose output is lost)
        self._queued: collections.deque[tuple[bytes, bool]] = collections.deque()
        self._waiters = 0  # publishes awaiting their PUBACK (wait=True)
        self._inflight = 0
        self._quota = self.MAX_INFLIGHT
        self._paused = False
        self._pong_due = False
        self._ping: asyncio.TimerHandle | None = None
        self._error: LinkError | None = None
        self._transport: asyncio.Transport | None = None
        self._sock: Any = None  # the TCP socket, when quick acknowledgements are available
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._connack: asyncio.Future[wire.Connack] | None = None
        self._wake = asyncio.Event()  # messages arrived
        self._writable = asyncio.Event()  # the socket takes writes
        self._writable.set()
        self._room = asyncio.Event()  # the publish queue has room
        self._room.set()
        self._closed = asyncio.Event()

    # ------------------------------------------------------------ connection
    async def __aenter__(self) -> NativeLink:
        s = self.settings
        loop = self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._connack = loop.create_future()
        ctx = tls_context(s)
        try:
            await asyncio.wait_for(loop.create_connection(
                lambda: self, s.host, s.port, ssl=ctx,
                server_hostname=s.host if ctx is not None else None), self.TIMEOUT_S)
        except (OSError, TimeoutError) as e:
            raise LinkError(f"cannot connect to {s.host}:{s.port}: {e}") from e
        assert self._transport is not None
        self._transport.write(wire.connect(
            s.client_id, v5=self._v5, clean=not s.persistent_session, keepalive=s.keepalive,
            username=s.username, password=s.password, will=self._will,
            session_expiry=(s.session_expiry_s if s.persistent_session else 0) if self._v5
            else None,
            receive_maximum=s.receive_maximum if self._v5 else None))
        try:
            ack = await asyncio.wait_for(asyncio.shield(self._connack), self.TIMEOUT_S)
        except TimeoutError:
            self._abort(LinkError("no CONNACK from the broker"))
            raise LinkError("no CONNACK from the broker") from None
        if not ack.ok:
            self._transport.close()
            raise LinkError(f"broker refused the connection: {ack.reason(self._v5)}")
        quota = ack.properties.get(wire.RECEIVE_MAXIMUM)
        if isinstance(quota, int) and quota > 0:
            self._quota = min(quota, self.MAX_INFLIGHT)
        keepalive = ack.properties.get(wire.SERVER_KEEP_ALIVE, s.keepalive)
        if isinstance(keepalive, int) and keepalive > 0:
            self._ping = loop.call_later(keepalive / 2, self._keepalive, keepalive / 2)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        t = self._transport
        if t is not None and not t.is_closing():
            self._flush_acks()
            if et is None:
                t.write(wire.DISCONNECT_PACKET)  # a clean end: the broker drops the will
            elif self._v5:
                # left by an exception (a crash, not a stop): the broker is told to
                # publish the will, so the status does not stay "online"
                t.write(wire.DISCONNECT_WITH_WILL_PACKET)
            else:
                t.close()  # 3.1.1: a connection closed without DISCONNECT, same effect
            # the broker closes once it has read everything before DISCONNECT; our
            # closing first could reset the connection and lose acks still unread
            if not t.is_closing():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), 5)
                t.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), 5)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """asyncio callback: the socket is open."""
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if _QUICKACK is not None and sock is not None:
            self._sock = sock
            self._quickack()

    def _quickack(self) -> None:
        """Acknowledge received segments at once instead of up to 40 ms later.

        The broker (mosquitto by default) runs Nagle's algorithm: it holds a
        small packet while an earlier one is unacknowledged. Our PUBACKs and
        outputs often leave before the broker's reply to them arrives, so
        nothing carries the TCP acknowledgement of that reply back, and the
        broker's next frame for us waited for the delayed ACK (measured: p50
        24 ms end to end instead of 3 ms). Linux leaves quick-ack mode on its
        own, so it is re-armed after every read.
        """
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        """asyncio callback: the socket is closed; wake and fail everything waiting."""
        error = self._error or LinkError(
            "disconnected from the broker" + (f": {exc}" if exc else ""))
        self._error = error
        if self._ping is not None:
            self._ping.cancel()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(error)
        for fut in [*self._publishes.values(), *self._subscribes.values()]:
            if fut is not None and not fut.done():
                fut.set_exception(error)
        self._publishes.clear()
        self._subscribes.clear()
        self._queued.clear()
        self._inbox.append(None)
        for ev in (self._wake, self._writable, self._room, self._closed):
            ev.set()

    def pause_writing(self) -> None:
        """asyncio callback: the socket's send buffer is full."""
        self._writable.clear()

    def resume_writing(self) -> None:
        """asyncio callback: the send buffer drained."""
        self._writable.set()

    def _abort(self, error: LinkError) -> None:
        if self._error is None:
            self._error = error
        if self._transport is not None:
            self._transport.abort()

    def _keepalive(self, every: float) -> None:
        if self._pong_due and not self._paused:  # the last ping was never answered
            # (while reading is paused by choice the answer may sit unread)
            self._abort(LinkError("the broker stopped answering keepalive pings"))
            return
        t = self._transport
        if t is None or t.is_closing():
            return
        self._pong_due = True
        t.write(wire.PINGREQ_PACKET)
        assert self._loop is not None
        self._ping = self._loop.call_later(every, self._keepalive, every)

    # ------------------------------------------------------------ reading
    def data_received(self, data: bytes) -> None:
        """asyncio callback: parse every complete packet of the stream."""
        if self._sock is not None:
            self._quickack()
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return
            data = bytes(self._buf)
            self._buf = bytearray()
        try:
            done = self._parse(data)
        except (wire.ProtocolError, IndexError, ValueError) as e:
            self._abort(LinkError(f"protocol error from the broker: {e}"))
            return
        if done < len(data):
            self._buf = bytearray(data[done:])
        if self._inbox:
            self._wake.set()
        self._flow()

    def _flow(self) -> None:
        """Stop reading the socket while too much waits (TCP then holds the broker
        back), and read again once it has drained."""
        t = self._transport
        if t is None or t.is_closing():
            return
        # a reply someone waits for (SUBACK, the PUBACK of a waited publish) may
        # sit behind the messages: never stop reading then, or nothing moves
        hold = not (self._subscribes or self._waiters)
        over = len(self._inbox) > self.INBOX_HIGH
        if hold and over and not self._paused:
            self._paused = True
            t.pause_reading()
        elif self._paused and (not hold or (not over and len(self._inbox) < self.INBOX_LOW)):
            self._paused = False
            t.resume_reading()

    def _parse(self, data: bytes) -> int:
        """Handle the complete packets in ``data``; return where the first incomplete one starts."""
        inbox = self._inbox
        link = id(self)
        v5 = self._v5
        end = len(data)
        pos = 0
        while pos < end:
            if end - pos < 2:
                self._need = 2
                return pos
            first = data[pos]
            b = data[pos + 1]
            length = b & 0x7F
            i = pos + 2
            shift = 7
            while b & 0x80:
                if i >= end:
                    self._need = end - pos + 1
                    return pos
                if shift > 21:
                    raise wire.ProtocolError("remaining length over 4 bytes")
                b = data[i]
                length |= (b & 0x7F) << shift
                shift += 7
                i += 1
            stop = i + length
            if stop > end:
                self._need = stop - pos
                return pos
            if first >> 4 == wire.PUBLISH:
                qos = (first >> 1) & 3
                j = i + 2 + ((data[i] << 8) | data[i + 1])
                topic = data[i + 2:j].decode("utf-8", "replace")
                mid = 0
                if qos:
                    mid = (data[j] << 8) | data[j + 1]
                    j += 2
                ctype = None
                if v5:
                    if data[j] == 0:
                        j += 1
                    else:
                        ctype, alias, j = wire.publish_properties(data, j)
                        if alias is not None:
                            if topic:
                                self._aliases[alias] = topic
                            elif alias in self._aliases:
                                topic = self._aliases[alias]
                            else:
                                raise wire.ProtocolError("unknown topic alias")
                if j > stop or not topic:
                    raise wire.ProtocolError("PUBLISH without a topic, or its header "
                                              "runs past the packet")
                inbox.append(Incoming(topic, data[j:stop], ctype, mid, qos, link))
            else:
                self._control(first, data[i:stop])
            pos = stop
        return pos

    def _control(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == wire.PUBACK:
            mid, code = wire.read_ack(body)
            if mid in self._publishes:
                fut = self._publishes.pop(mid)
                if fut is not None and not fut.done():
                    if code >= 0x80:
                        fut.set_exception(LinkError(f"publish refused (reason 0x{code:02x})"))
                    else:
                        fut.set_result(None)
                self._inflight -= 1
                self._send_queued()
        elif kind == wire.PINGRESP:
            self._pong_due = False
        elif kind == wire.SUBACK:
            mid, codes = wire.read_suback(body, v5=self._v5)
            sub = self._subscribes.pop(mid, None)
            if sub is not None and not sub.done():
                sub.set_result(codes)
        elif kind == wire.CONNACK:
            if self._connack is not None and not self._connack.done():
                self._connack.set_result(wire.read_connack(body, v5=self._v5))
        elif kind == wire.DISCONNECT:
            code = body[0] if body else 0
            self._abort(LinkError(f"the broker disconnected us (reason 0x{code:02x})"))
        else:
            raise wire.ProtocolError(f"unexpected packet type {kind}")

    async def messages(self) -> AsyncIterator[Incoming]:
        """Received messages, in order; raises :class:`LinkError` once the connection is lost."""
        inbox = self._inbox
        while True:
            while inbox:
                m = inbox.popleft()
                if m is None:
                    raise self._error or LinkError("disconnected from the broker")
                if self._paused:
                    self._flow()
                yield m
            self._wake.clear()
            await self._wake.wait()

    def pending(self) -> int:
        """Messages received but not yet read (none acknowledged yet)."""
        return sum(1 for m in self._inbox if m is not None)

    # ------------------------------------------------------------ writing
    def ack(self, msg: Incoming) -> None:
        """Acknowledge ``msg`` to the broker (QoS 1); safe from any thread.

        Acknowledgements are gathered and written once per pass of the event
        loop. A message received on an earlier connection is not acknowledged:
        its packet id may belong to another message now; the broker redelivers
        it to the session instead (a QoS-1 duplicate, never a loss).
        """
        if not (msg.qos and msg.mid and msg.link == id(self)) or self._loop is None:
            return
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self.ack, msg)
            return
        mid = msg.mid
        if self._queued:  # behind the outputs still waiting for the window
            self._queued.append((wire.puback(mid), False))
        else:
            self._acks += wire.puback(mid)
            if not self._acks_due:
                self._acks_due = True
                self._loop.call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        self._acks_due = False
        t = self._transport
        if self._acks and t is not None and not t.is_closing():
            t.write(bytes(self._acks))
        self._acks.clear()

    def _new_mid(self) -> int:
        for _ in range(65535):
            self._next_mid = self._next_mid % 65535 + 1
            if self._next_mid not in self._publishes and self._next_mid not in self._subscribes:
                return self._next_mid
        raise LinkError("no free packet identifier")

    def _open_transport(self) -> asyncio.Transport:
        t = self._transport
        if self._error is not None or t is None or t.is_closing():
            raise self._error or LinkError("not connected")
        return t

    def _send_queued(self) -> None:
        t = self._transport
        if t is None or t.is_closing():
            return
        queued = self._queued
        while queued and (self._inflight < self._quota or not queued[0][1]):
            packet, counts = queued.popleft()
            self._inflight += counts
            t.write(packet)
        if len(self._queued) < self.MAX_QUEUED:
            self._room.set()

    async def subscribe(self, topic_filter: str) -> None:
        """Subscribe with the configured QoS (``$share/group/...`` works on MQTT 5)."""
        t = self._open_transport()
        assert self._loop is not None
        mid = self._new_mid()
        fut: asyncio.Future[list[int]] = self._loop.create_future()
        self._subscribes[mid] = fut
        self._flow()
        t.write(wire.subscribe(mid, topic_filter, self.settings.qos, v5=self._v5))
        try:
            codes = await asyncio.wait_for(fut, self.TIMEOUT_S)
        except TimeoutError:
            raise LinkError(f"no SUBACK for {topic_filter!r}") from None
        if not codes or codes[0] >= 0x80:
            raise LinkError(f"subscription to {topic_filter!r} refused: {codes}")

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                      qos: int | None = None, wait: bool = False) -> None:
        """Send ``payload``; ``wait`` (QoS 1) returns once the broker acknowledged it."""
        q = self.settings.qos if qos is None else qos
        t = self._open_transport()
        if not self._writable.is_set():
            await self._writable.wait()
            t = self._open_transport()
        if not q:
            t.write(wire.publish(topic, payload, qos=0, retain=retain, mid=0, v5=self._v5))
            return
        while len(self._queued) >= self.MAX_QUEUED:
            self._room.clear()
            await self._room.wait()
            t = self._open_transport()
        assert self._loop is not None
        mid = self._new_mid()
        fut: asyncio.Future[None] | None = self._loop.create_future() if wait else None
        self._publishes[mid] = fut
        self._queued.append((wire.publish(topic, payload, qos=1, retain=retain, mid=mid,
                                           v5=self._v5), True))
        self._send_queued()
        if fut is not None:
            self._waiters += 1
            self._flow()
            try:
                await asyncio.wait_for(fut, self.TIMEOUT_S)
            except TimeoutError:
                raise LinkError("publish not acknowledged by the broker") from None
            finally:
                self._waiters -= 1
