"""The native MQTT link: its wire format, and its behaviour against a real mosquitto.

The daemon's end-to-end tests (test_daemon_mqtt.py) run on this link too (it
is the default); these tests pin down what they cannot see: packets split at
any byte, MQTT 5 properties and topic aliases, acknowledgement after
processing (nothing acknowledged is redelivered, everything else is), the
last will on an unclean end only, keepalive detecting a dead broker, flow
control both ways, TLS with a password, and a refused login.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from lillith.sensors.mqtt import Incoming, LastWill, LinkError, MqttSettings, NativeLink, wire

from .conftest import MOSQUITTO, free_port, start_mosquitto

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")


# ---------------------------------------------------------------- wire format
@given(st.integers(0, 268_435_455))
def test_varint_round_trip(n: int) -> None:
    raw = wire.varint(n)
    assert len(raw) == 1 + (n >= 128) + (n >= 16_384) + (n >= 2_097_152)
    assert wire.read_varint(raw + b"\x00", 0) == (n, len(raw))


def test_varint_rejects_what_does_not_fit() -> None:
    with pytest.raises(wire.ProtocolError):
        wire.varint(268_435_456)
    with pytest.raises(wire.ProtocolError):
        wire.read_varint(b"\xff\xff\xff\xff\x01", 0)
    with pytest.raises(wire.ProtocolError):
        wire.read_varint(b"\x80", 0)


def test_packets_golden() -> None:
    """Byte-exact packets, written out by hand from the MQTT 3.1.1 and 5 specifications."""
    assert wire.connect("ab", v5=False, clean=False, keepalive=30) == (
        b"\x10\x0e\x00\x04MQTT\x04\x00\x00\x1e\x00\x02ab")
    assert wire.connect("ab", v5=False, clean=True, keepalive=60, username="u",
                         password="p", will=wire.Will("w", b"x")) == (
        b"\x10\x1a\x00\x04MQTT\x04\xee\x00\x3c\x00\x02ab\x00\x01w\x00\x01x\x00\x01u\x00\x01p")
    assert wire.connect("ab", v5=True, clean=False, keepalive=30, session_expiry=7,
                         receive_maximum=64) == (
        b"\x10\x17\x00\x04MQTT\x05\x00\x00\x1e\x08\x11\x00\x00\x00\x07\x21\x00\x40\x00\x02ab")
    assert wire.subscribe(5, "a/#", 1, v5=False) == b"\x82\x08\x00\x05\x00\x03a/#\x01"
    assert wire.subscribe(5, "a/#", 1, v5=True) == b"\x82\x09\x00\x05\x00\x00\x03a/#\x01"
    assert wire.publish("t", b"hi", qos=1, retain=True, mid=258, v5=False) == (
        b"\x33\x07\x00\x01t\x01\x02hi")
    assert wire.publish("t", b"hi", qos=0, retain=False, mid=0, v5=True) == (
        b"\x30\x06\x00\x01t\x00hi")
    assert wire.puback(0x1234) == b"\x40\x02\x12\x34"


def _publish_v5(topic: str, payload: bytes, mid: int, props: bytes) -> bytes:
    head = struct.pack("!H", len(topic.encode())) + topic.encode()
    if mid:
        head += struct.pack("!H", mid)
    body = head + wire.varint(len(props)) + props + payload
    return bytes((0x30 | (0x02 if mid else 0),)) + wire.varint(len(body)) + body


def _utf8(s: str) -> bytes:
    return struct.pack("!H", len(s.encode())) + s.encode()


def _stream() -> tuple[bytes, list[tuple[str, bytes, str | None, int, int]]]:
    """MQTT 5 packets of every kind the link reads, and the messages they carry."""
    expect = []
    raw = b""
    for k in range(40):
        payload = bytes(range(k % 7)) * (k * 13)  # 0 to ~3 kB, some empty
        mid = 0 if k % 3 == 0 else k + 1
        topic = f"s/{k % 4}/é"
        props = b""
        ctype = None
        if k % 5 == 1:
            ctype = "application/x-float32le"
            props += b"\x03" + _utf8(ctype)
        if k % 4 == 2:  # properties the link must skip
            props += b"\x01\x01" + b"\x02\x00\x00\x00\x10" + b"\x26" + _utf8("k") + _utf8("v")
            props += b"\x0b\x81\x01" + b"\x09" + _utf8("corr")
        if k % 10 == 3:  # a topic alias, set, then used with an empty topic
            raw += _publish_v5(topic, payload, mid, props + b"\x23\x00\x02")
            expect.append((topic, payload, ctype, mid, 1 if mid else 0))
            raw += b"\xd0\x00"  # PINGRESP between messages
            raw += _publish_v5("", payload, mid, props + b"\x23\x00\x02")
        else:
            raw += _publish_v5(topic, payload, mid, props)
        expect.append((topic, payload, ctype, mid, 1 if mid else 0))
    return raw, expect


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 200_000), max_size=25))
def test_stream_parses_the_same_however_it_is_cut(cuts: list[int]) -> None:
    raw, expect = _stream()
    link = NativeLink(MqttSettings(protocol=5))
    points = sorted({c % len(raw) for c in cuts} | {0, len(raw)})
    for lo, hi in itertools.pairwise(points):
        link.data_received(raw[lo:hi])
    got = list(link._inbox)
    assert all(isinstance(m, Incoming) for m in got)
    assert [(m.topic, m.payload, m.content_type, m.mid, m.qos) for m in got  # type: ignore[union-attr]
            ] == expect
    assert link._error is None and not link._buf


def test_malformed_stream_is_a_link_error_not_a_crash() -> None:
    link = NativeLink(MqttSettings(protocol=5))
    link.data_received(b"\x30\x05\x00\x09abc")  # topic length runs past the packet
    assert isinstance(link._error, LinkError)
    link = NativeLink(MqttSettings(protocol=5))
    link.data_received(b"\x30\x04\x00\x00\x00\x00")  # empty topic, no alias
    assert isinstance(link._error, LinkError)
    link = NativeLink(MqttSettings(protocol=311))
    link.data_received(b"\x70\x02\x00\x01")  # PUBCOMP: never sent to a QoS-1 client
    assert isinstance(link._error, LinkError)


# ---------------------------------------------------------------- against mosquitto
def _settings(port: int, cid: str, **kw: object) -> MqttSettings:
    return MqttSettings(host="127.0.0.1", port=port, client_id=cid, keepalive=5, **kw)  # type: ignore[arg-type]


def _publish_all(port: int, topic: str, payloads: list[bytes], *, v5: bool = False,
                 ctype: str | None = None) -> None:
    """Publish with paho at QoS 1 and wait until the broker has every message."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}",
                    protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    c.max_inflight_messages_set(100)
    c.connect("127.0.0.1", port)
    c.loop_start()
    props = None
    if ctype is not None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = ctype
    infos = [c.publish(topic, p, qos=1, properties=props) for p in payloads]
    for info in infos:
        info.wait_for_publish(30)
    c.loop_stop()
    c.disconnect()


async def _backlog(s: MqttSettings, topic: str, payloads: list[bytes]) -> None:
    """A persistent session subscribed to ``topic`` with ``payloads`` queued for it."""
    async with NativeLink(s) as link:
        await link.subscribe(topic)
    await asyncio.to_thread(_publish_all, s.port, topic, payloads)


async def _take(link: NativeLink, n: int, timeout: float = 20, *, ack: bool = False
                ) -> list[Incoming]:
    """The next ``n`` messages (acknowledged as they come with ``ack``: the
    broker's in-flight window holds the rest back until then)."""
    got: list[Incoming] = []

    async def read() -> None:
        async for m in link.messages():
            got.append(m)
            if ack:
                link.ack(m)
            if len(got) == n:
                return

    if n:
        await asyncio.wait_for(read(), timeout)
    return got


async def _quiet(link: NativeLink, seconds: float = 0.5) -> list[Incoming]:
    """Whatever arrives within ``seconds``."""
    got: list[Incoming] = []
    with pytest.raises(TimeoutError):
        await _take_into(link, got, seconds)
    return got


async def _take_into(link: NativeLink, got: list[Incoming], timeout: float) -> None:
    async def read() -> None:
        async for m in link.messages():
            got.append(m)

    await asyncio.wait_for(read(), timeout)


@pytest.mark.parametrize("protocol", [5, 311])
def test_backlog_delivered_in_order_acked_then_never_again(mosquitto: int,
                                                           protocol: int) -> None:
    """A persistent session's QoS-1 backlog, with a 1 MB message among small ones,
    arrives complete and in order; what was acknowledged is not redelivered."""
    uid = uuid.uuid4().hex[:8]
    topic = f"link/{uid}/a"
    s = _settings(mosquitto, f"native-{uid}", protocol=protocol, receive_maximum=100)
    payloads = [f'{{"i": {i}}}'.encode() for i in range(3000)]
    payloads[1234] = os.urandom(1 << 20)

    async def main() -> None:
        await _backlog(s, topic, payloads)
        async with NativeLink(s) as link:
            got = await _take(link, len(payloads), ack=True)
            assert [m.payload for m in got] == payloads
            assert all(m.topic == topic and m.qos == 1 and m.mid for m in got)
        async with NativeLink(s) as link:
            assert await _quiet(link) == []

    asyncio.run(main())


def test_unacknowledged_messages_are_redelivered(mosquitto: int) -> None:
    """At-least-once: what the daemon never acknowledged comes back on reconnect,
    and an acknowledgement for a message of an earlier connection is ignored."""
    uid = uuid.uuid4().hex[:8]
    topic = f"link/{uid}/a"
    s = _settings(mosquitto, f"native-{uid}", receive_maximum=1000)
    payloads = [str(i).encode() for i in range(200)]

    async def main() -> None:
        await _backlog(s, topic, payloads)
        async with NativeLink(s) as link:
            first = await _take(link, 200)
            for m in first[:120]:
                link.ack(m)
        async with NativeLink(s) as link:
            link.ack(first[150])  # packet id of another connection: must not count
            again = await _take(link, 80)
            assert sorted(int(m.payload) for m in again) == list(range(120, 200))
            for m in again:
                link.ack(m)
            assert await _quiet(link) == []
        async with NativeLink(s) as link:
            assert await _quiet(link) == []

    asyncio.run(main())


def test_mqtt5_content_type_publish_and_retained_status(mosquitto: int) -> None:
    uid = uuid.uuid4().hex[:8]
    topic = f"link/{uid}/bin"
    s = _settings(mosquitto, f"native-{uid}", protocol=5)
    frame = struct.pack("<3f", 1.0, 2.0, 3.0)

    async def main() -> None:
        async with NativeLink(s) as link:
            await link.subscribe(topic)
            await link.subscribe(f"link/{uid}/status")
            _publish_all(mosquitto, topic, [frame], v5=True, ctype="application/x-float32le")
            (m,) = await _take(link, 1)
            assert (m.payload, m.content_type) == (frame, "application/x-float32le")
            link.ack(m)
            await link.publish(f"link/{uid}/status", b"online", retain=True, qos=1, wait=True)
            (echo,) = await _take(link, 1)
            assert echo.payload == b"online"
            link.ack(echo)
        # a new client sees the retained status
        async with NativeLink(_settings(mosquitto, f"other-{uid}",
                                        persistent_session=False)) as other:
            await other.subscribe(f"link/{uid}/status")
            (kept,) = await _take(other, 1)
            assert kept.payload == b"online"

    asyncio.run(main())


def test_many_publishes_respect_the_window_and_all_arrive(mosquitto: int) -> None:
    """5,000 QoS-1 publishes without waiting: at most the broker's window in flight,
    the rest queued; every one delivered, in order."""
    uid = uuid.uuid4().hex[:8]
    topic = f"link/{uid}/out"
    got: list[bytes] = []
    done = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uid}")

    def on_message(c: object, u: object, m: mqtt.MQTTMessage) -> None:
        got.append(bytes(m.payload))
        if len(got) == 5000:
            done.set()

    sub.on_message = on_message
    sub.connect("127.0.0.1", mosquitto)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    time.sleep(0.3)
    peak = 0

    async def main() -> None:
        nonlocal peak
        async with NativeLink(_settings(mosquitto, f"native-{uid}", protocol=5)) as link:
            for i in range(5000):
                await link.publish(topic, str(i).encode())
                peak = max(peak, link._inflight)
            await link.publish(topic, b"last", wait=True)  # after all earlier ones
            assert link._inflight == 0 and not link._queued

    asyncio.run(main())
    assert done.wait(20)
    sub.loop_stop()
    sub.disconnect()
    assert got[:5000] == [str(i).encode() for i in range(5000)]
    assert 1 < peak <= NativeLink.MAX_INFLIGHT


def test_ack_from_another_thread(mosquitto: int) -> None:
    uid = uuid.uuid4().hex[:8]
    topic = f"link/{uid}/a"
    s = _settings(mosquitto, f"native-{uid}")

    async def main() -> None:
        await _backlog(s, topic, [b"1", b"2", b"3"])
        async with NativeLink(s) as link:
            got = await _take(link, 3)
            await asyncio.to_thread(lambda: [link.ack(m) for m in got])
            await asyncio.sleep(0.2)
        async with NativeLink(s) as link:
            assert await _quiet(link) == []

    asyncio.run(main())


def test_reading_pauses_when_the_inbox_is_full_and_resumes(mosquitto: int,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """QoS 0 has no broker window: a reader that falls behind stops reading the
    socket (TCP pushes back on the broker) instead of growing the inbox."""
    monkeypatch.setattr(NativeLink, "INBOX_HIGH", 50)
    monkeypatch.setattr(NativeLink, "INBOX_LOW", 10)
    uid = uuid.uuid4().hex[:8]
    topic = f"link/{uid}/q0"
    s = _settings(mosquitto, f"native-{uid}", qos=0, persistent_session=False)
    n = 3000

    async def main() -> None:
        async with NativeLink(s) as link:
            await link.subscribe(topic)
            await asyncio.to_thread(_publish_all, mosquitto, topic,
                                    [str(i).encode() for i in range(n)])
            deepest = len(link._inbox)
            was_paused = link._paused
            got = await _take(link, n)
            assert [int(m.payload) for m in got] == list(range(n))
            assert was_paused and deepest <= 50 + 4000  # one received chunk past the mark
            assert not link._paused

    asyncio.run(main())


def _private_broker(tmp: Path, extra: str = "") -> tuple[int, subprocess.Popen[bytes]]:
    port = free_port()
    return port, start_mosquitto(port, tmp, extra=extra)


def test_will_only_on_an_unclean_end(mosquitto: int) -> None:
    uid = uuid.uuid4().hex[:8]
    will = LastWill(f"link/{uid}/status", b"offline")
    watch = _settings(mosquitto, f"watch-{uid}", persistent_session=False)

    async def main() -> None:
        async with NativeLink(watch) as w:
            await w.subscribe(f"link/{uid}/status")
            async with NativeLink(_settings(mosquitto, f"a-{uid}"), will):
                pass  # clean DISCONNECT: no will
            assert await _quiet(w) == []
            link = NativeLink(_settings(mosquitto, f"b-{uid}"), will)
            await link.__aenter__()
            assert link._transport is not None
            link._transport.abort()  # the process died: the broker sends the will
            (m,) = await _take(w, 1, timeout=10)
            assert m.payload == b"offline"

    asyncio.run(main())


def test_keepalive_detects_a_broker_that_stopped_answering(tmp_path: Path) -> None:
    port, broker = _private_broker(tmp_path)
    try:
        async def main() -> float:
            async with NativeLink(_settings(port, "ka")) as link:
                await link.subscribe("ka/#")
                broker.send_signal(signal.SIGSTOP)
                t0 = time.monotonic()
                with pytest.raises(LinkError, match="keepalive"):
                    await _take(link, 1, timeout=15)
                return time.monotonic() - t0

        waited = asyncio.run(main())
        # detected by the next unanswered ping: within a keepalive (5 s) of the
        # silence, give or take a loaded machine's scheduling
        assert waited <= 2 * 5
    finally:
        broker.send_signal(signal.SIGCONT)
        broker.terminate()
        broker.wait(10)


def test_broker_gone_ends_messages_with_link_error(tmp_path: Path) -> None:
    port, broker = _private_broker(tmp_path)
    try:
        async def main() -> None:
            async with NativeLink(_settings(port, "gone")) as link:
                await link.subscribe("gone/#")
                broker.terminate()
                with pytest.raises(LinkError):
                    await _take(link, 1, timeout=10)
                with pytest.raises(LinkError):
                    await link.publish("gone/x", b"1")
            with pytest.raises(LinkError, match="cannot connect"):
                async with NativeLink(_settings(port, "gone")):
                    pass

        asyncio.run(main())
    finally:
        broker.wait(10)


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A mosquitto with a TLS listener (self-signed CA) and a password file."""
    if shutil.which("openssl") is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("openssl or mosquitto_passwd missing")

    def run(*args: str) -> None:
        subprocess.run(args, check=True, cwd=tmp_path, capture_output=True)

    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=lillith-test-ca")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
        "-out", "server.csr", "-subj", "/CN=localhost")
    (tmp_path / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext")
    run("mosquitto_passwd", "-b", "-c", "passwd", "sensor", "s3cret")
    port = free_port()
    broker = start_mosquitto(port, tmp_path, anonymous=False, extra=(
        f"password_file {tmp_path / 'passwd'}\ncafile {tmp_path / 'ca.pem'}\n"
        f"certfile {tmp_path / 'server.pem'}\nkeyfile {tmp_path / 'server.key'}\n"))
    yield port, tmp_path / "ca.pem"
    broker.terminate()
    broker.wait(10)


def test_tls_with_password_and_a_refused_login(tls_broker: tuple[int, Path]) -> None:
    port, ca = tls_broker
    ok = MqttSettings(host="127.0.0.1", port=port, client_id="tls-ok", tls_ca=ca,
                      username="sensor", password="s3cret")

    async def main() -> None:
        async with NativeLink(ok) as link:
            await link.subscribe("tls/#")
            await link.publish("tls/x", b"over tls", qos=1, wait=True)
            (m,) = await _take(link, 1)
            assert m.payload == b"over tls"
            link.ack(m)
        for protocol in (5, 311):
            bad = ok.model_copy(update={"password": "wrong", "protocol": protocol})
            with pytest.raises(LinkError, match="refused"):
                async with NativeLink(bad):
                    pass
        plain = ok.model_copy(update={"tls_ca": None})
        with pytest.raises(LinkError):  # a plaintext client on the TLS port
            async with NativeLink(plain):
                pass

    asyncio.run(main())


class _Transport(asyncio.Transport):
    """A transport that records what the link writes (for ordering tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.out += data

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


def _attached(**kw: object) -> tuple[NativeLink, _Transport]:
    link = NativeLink(MqttSettings(protocol=311, **kw))  # type: ignore[arg-type]
    sent = _Transport()
    link._loop = asyncio.get_running_loop()
    link._thread = threading.get_ident()
    link.connection_made(sent)
    return link, sent


def test_an_ack_never_overtakes_the_output_before_it() -> None:
    """The broker's window holds our outputs back: the acknowledgement of a frame
    given after its output waits behind it, so a connection lost in between
    loses neither (the broker redelivers the frame instead)."""
    async def main() -> None:
        link, sent = _attached()
        link._quota = 1
        await link.publish("o", b"out-1")
        await link.publish("o", b"out-2")  # beyond the window: queued
        link.data_received(wire.publish("in", b"x", qos=1, retain=False, mid=7, v5=False))
        (msg,) = link._inbox
        assert msg is not None
        link.ack(msg)
        await asyncio.sleep(0)
        assert b"out-2" not in sent.out and wire.puback(7) not in sent.out
        link.data_received(wire.puback(1))  # the broker acknowledged out-1
        await asyncio.sleep(0)
        assert sent.out.index(b"out-2") < sent.out.index(wire.puback(7))
        assert link._inflight == 1 and not link._queued

    asyncio.run(main())


def test_reading_stops_when_the_inbox_is_full_but_not_while_a_reply_is_awaited(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(NativeLink, "INBOX_HIGH", 10)
    monkeypatch.setattr(NativeLink, "INBOX_LOW", 5)

    async def main() -> None:
        link, sent = _attached()
        stream = b"".join(wire.publish("in", b"x", qos=1, retain=False, mid=k, v5=False)
                          for k in range(1, 13))
        link.data_received(stream)
        assert sent.paused and len(link._inbox) == 12  # one read may pass the mark
        sub = asyncio.ensure_future(link.subscribe("more/#"))
        await asyncio.sleep(0)
        assert not sent.paused  # the SUBACK may be behind the messages: keep reading
        link.data_received(b"\x90\x03\x00\x01\x01")  # SUBACK, packet id 1
        await sub
        assert sent.paused
        got = []
        async for m in link.messages():
            got.append(m)
            if len(got) == 8:  # 4 left: below the low mark
                break
        assert not sent.paused

    asyncio.run(main())


def test_resubscribing_behind_a_large_backlog(mosquitto: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon back after a long outage subscribes again while the broker floods
    it with the queued backlog: the SUBACK behind it is still read."""
    monkeypatch.setattr(NativeLink, "INBOX_HIGH", 50)
    monkeypatch.setattr(NativeLink, "INBOX_LOW", 10)
    uid = uuid.uuid4().hex[:8]
    topic = f"link/{uid}/a"
    s = _settings(mosquitto, f"native-{uid}")
    payloads = [str(i).encode() for i in range(2000)]

    async def main() -> None:
        await _backlog(s, topic, payloads)
        async with NativeLink(s) as link:
            await asyncio.wait_for(link.subscribe(topic), 20)
            got = await _take(link, len(payloads), ack=True)
            assert sorted(int(m.payload) for m in got) == list(range(2000))

    asyncio.run(main())


def test_shared_subscription_splits_the_messages(mosquitto: int) -> None:
    """MQTT 5 ``$share/group/filter``: two daemons' links share the stream, each
    message reaching exactly one of them."""
    uid = uuid.uuid4().hex[:8]
    topic = f"link/{uid}/s"

    async def main() -> None:
        a = NativeLink(_settings(mosquitto, f"a-{uid}", persistent_session=False))
        b = NativeLink(_settings(mosquitto, f"b-{uid}", persistent_session=False))
        async with a, b:
            for link in (a, b):
                await link.subscribe(f"$share/g{uid}/link/{uid}/#")
            await asyncio.to_thread(_publish_all, mosquitto, topic,
                                    [str(i).encode() for i in range(200)], v5=True)
            got_a: list[Incoming] = []
            got_b: list[Incoming] = []

            async def drain(link: NativeLink, into: list[Incoming]) -> None:
                async for m in link.messages():
                    into.append(m)
                    link.ack(m)  # the receive window of each holds the rest back
                    if len(got_a) + len(got_b) == 200:
                        return

            tasks = [asyncio.create_task(drain(a, got_a)), asyncio.create_task(drain(b, got_b))]
            await asyncio.wait(tasks, timeout=20, return_when=asyncio.FIRST_COMPLETED)
            for t in tasks:
                t.cancel()
        assert got_a and got_b
        assert sorted(int(m.payload) for m in got_a + got_b) == list(range(200))

    asyncio.run(main())


# ---------------------------------------------------------------- topic filters
@pytest.mark.parametrize(("topic", "topic_filter", "match"), [
    ("sensors/a", "sensors/#", True), ("sensors", "sensors/#", True),
    ("sensors/a/b", "sensors/+", False), ("sensors/a/b", "sensors/+/b", True),
    ("sensors/a/b", "#", True), ("other/a", "sensors/#", False),
    ("sensors/a", "sensors/a", True), ("sensors/a", "sensors/b", False),
    ("sensors/a", "$share/g/sensors/+", True), ("sensors/", "sensors/+", True),
    ("a/b", "a/b/c", False), ("a/b/c", "a/b", False), ("/a", "+/a", True),
])
def test_topic_filters_match_as_mqtt_says(topic: str, topic_filter: str, match: bool) -> None:
    from lillith.sensors.mqtt import topic_matches

    assert topic_matches(topic, topic_filter) is match


@pytest.mark.parametrize(("topic", "topic_filter"), [
    ("a", ""), ("a", "a/#/b"), ("a", "a+"), ("a", "a/b#"), ("", "a"), ("a/+", "#"),
    ("a/#", "#"),
])
def test_invalid_topics_and_filters_raise(topic: str, topic_filter: str) -> None:
    from lillith.sensors.mqtt import topic_matches

    with pytest.raises(ValueError):
        topic_matches(topic, topic_filter)
