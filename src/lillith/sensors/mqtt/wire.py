"""MQTT 3.1.1 and 5 wire format for the native link: the packets it sends and reads.

Only what a subscriber that publishes its results needs: CONNECT / CONNACK,
SUBSCRIBE / SUBACK, PUBLISH and PUBACK (QoS 0 and 1), PINGREQ / PINGRESP and
DISCONNECT. Encoders return whole packets as ``bytes``; decoders take the
variable header and payload of one packet (``body``, after the fixed header)
and raise :class:`ProtocolError` on anything malformed. The hot path (parsing
PUBLISH packets out of a received chunk) lives in
:class:`lillith.sensors.mqtt.native_link.NativeLink` and uses :func:`publish_properties`
only when a packet carries MQTT 5 properties.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
SUBSCRIBE = 8
SUBACK = 9
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"  # 3.1.1, and 5 with reason 0 (normal, will discarded)
DISCONNECT_WITH_WILL_PACKET = b"\xe0\x01\x04"  # 5 only: reason 0x04, the will is sent

# MQTT 5 property identifiers used here
CONTENT_TYPE = 0x03
SESSION_EXPIRY = 0x11
ASSIGNED_CLIENT_ID = 0x12
SERVER_KEEP_ALIVE = 0x13
REASON_STRING = 0x1F
RECEIVE_MAXIMUM = 0x21
TOPIC_ALIAS = 0x23

# value encoding of every MQTT 5 property, for skipping the ones we do not use
_BYTE, _TWO, _FOUR, _VARINT, _UTF8, _BINARY, _PAIR = range(7)
_PROPERTY_KIND = {
    0x01: _BYTE, 0x02: _FOUR, 0x03: _UTF8, 0x08: _UTF8, 0x09: _BINARY, 0x0B: _VARINT,
    0x11: _FOUR, 0x12: _UTF8, 0x13: _TWO, 0x15: _UTF8, 0x16: _BINARY, 0x17: _BYTE,
    0x18: _FOUR, 0x19: _BYTE, 0x1A: _UTF8, 0x1C: _UTF8, 0x1F: _UTF8, 0x21: _TWO,
    0x22: _TWO, 0x23: _TWO, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _FOUR,
    0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}

CONNACK_V3_REASONS = {
    1: "unacceptable protocol version", 2: "client identifier rejected",
    3: "server unavailable", 4: "bad user name or password", 5: "not authorized",
}


class ProtocolError(ValueError):
    """A packet that does not follow the MQTT specification."""


def varint(n: int) -> bytes:
    """MQTT variable byte integer (remaining length, property lengths)."""
    if not 0 <= n < 268_435_456:
        raise ProtocolError(f"length {n} does not fit a variable byte integer")
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        if n:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def read_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int]:
    """Decode a variable byte integer at ``pos``; return (value, position after it)."""
    value = 0
    shift = 0
    for i in range(pos, min(pos + 4, len(buf))):
        b = buf[i]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i + 1
        shift += 7
    raise ProtocolError("truncated or overlong variable byte integer")


def _utf8(s: str | bytes) -> bytes:
    raw = s.encode() if isinstance(s, str) else s
    if len(raw) > 0xFFFF:
        raise ProtocolError("string longer than 65,535 bytes")
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + varint(len(body)) + body


def _properties(items: list[tuple[int, bytes]]) -> bytes:
    raw = b"".join(bytes((pid,)) + value for pid, value in items)
    return varint(len(raw)) + raw


@dataclass(frozen=True)
class Will:
    """The message the broker publishes when the connection drops uncleanly."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def connect(client_id: str, *, v5: bool, clean: bool, keepalive: int,
            username: str | None = None, password: str | None = None,
            will: Will | None = None, session_expiry: int | None = None,
            receive_maximum: int | None = None) -> bytes:
    """CONNECT packet (protocol level 4 for 3.1.1, 5 for MQTT 5)."""
    flags = 0x02 if clean else 0
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if username is not None:
        flags |= 0x80
        if password is not None:
            flags |= 0x40
    body = _utf8("MQTT") + bytes((5 if v5 else 4, flags)) + struct.pack("!H", keepalive)
    if v5:
        props: list[tuple[int, bytes]] = []
        if session_expiry is not None:
            props.append((SESSION_EXPIRY, struct.pack("!I", session_expiry)))
        if receive_maximum is not None:
            props.append((RECEIVE_MAXIMUM, struct.pack("!H", receive_maximum)))
        body += _properties(props)
    body += _utf8(client_id)
    if will is not None:
        if v5:
            body += _properties([])
        body += _utf8(will.topic) + _utf8(will.payload)
    if username is not None:
        body += _utf8(username)
        if password is not None:
            body += _utf8(password)
    return _packet(CONNECT << 4, body)


def subscribe(mid: int, topic_filter: str, qos: int, *, v5: bool) -> bytes:
    """SUBSCRIBE packet for one topic filter."""
    body = struct.pack("!H", mid) + (_properties([]) if v5 else b"")
    body += _utf8(topic_filter) + bytes((qos,))
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def publish(topic: str, payload: bytes, *, qos: int, retain: bool, mid: int, v5: bool,
            dup: bool = False) -> bytes:
    """PUBLISH packet (``mid`` is ignored at QoS 0)."""
    first = (PUBLISH << 4) | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    body = _utf8(topic)
    if qos:
        body += struct.pack("!H", mid)
    if v5:
        body += b"\x00"
    return _packet(first, body + payload)


def puback(mid: int) -> bytes:
    """PUBACK for packet id ``mid`` (reason "success", implied in MQTT 5 by the length)."""
    return bytes((PUBACK << 4, 2, mid >> 8, mid & 0xFF))


def read_properties(body: bytes | memoryview, pos: int) -> tuple[dict[int, object], int]:
    """Decode an MQTT 5 property block at ``pos``; return ({id: value}, position after it).

    Values are ``int`` (byte, two, four-byte and variable integers), ``str``
    (UTF-8 strings) or ``bytes``; a repeated property (user properties) keeps
    its last value.
    """
    length, pos = read_varint(body, pos)
    end = pos + length
    if end > len(body):
        raise ProtocolError("property block runs past the packet")
    out: dict[int, object] = {}
    while pos < end:
        pid = body[pos]
        pos += 1
        kind = _PROPERTY_KIND.get(pid)
        value: object
        if kind == _BYTE:
            value = body[pos]
            pos += 1
        elif kind == _TWO:
            value = (body[pos] << 8) | body[pos + 1]
            pos += 2
        elif kind == _FOUR:
            value = int.from_bytes(body[pos:pos + 4], "big")
            pos += 4
        elif kind == _VARINT:
            value, pos = read_varint(body, pos)
        elif kind in (_UTF8, _BINARY):
            n = (body[pos] << 8) | body[pos + 1]
            raw = bytes(body[pos + 2:pos + 2 + n])
            pos += 2 + n
            value = raw.decode("utf-8", "replace") if kind == _UTF8 else raw
        elif kind == _PAIR:
            n = (body[pos] << 8) | body[pos + 1]
            pos += 2 + n
            n = (body[pos] << 8) | body[pos + 1]
            pos += 2 + n
            value = None
        else:
            raise ProtocolError(f"unknown property identifier 0x{pid:02x}")
        out[pid] = value
    if pos != end:
        raise ProtocolError("property runs past its block")
    return out, end


def publish_properties(body: bytes | memoryview, pos: int) -> tuple[str | None, int | None, int]:
    """Content type and topic alias of a MQTT 5 PUBLISH; return (ctype, alias, payload start)."""
    props, pos = read_properties(body, pos)
    ctype = props.get(CONTENT_TYPE)
    alias = props.get(TOPIC_ALIAS)
    return (ctype if isinstance(ctype, str) else None,
            alias if isinstance(alias, int) else None, pos)


@dataclass(frozen=True)
class Connack:
    """What the broker said to CONNECT."""

    session_present: bool
    code: int
    properties: dict[int, object]

    @property
    def ok(self) -> bool:
        """The connection was accepted."""
        return self.code == 0

    def reason(self, v5: bool) -> str:
        """Human-readable refusal reason."""
        if not v5:
            return CONNACK_V3_REASONS.get(self.code, f"refused ({self.code})")
        text = self.properties.get(REASON_STRING)
        return f"refused (reason 0x{self.code:02x}{': ' + str(text) if text else ''})"


def read_connack(body: bytes, *, v5: bool) -> Connack:
    """Decode a CONNACK body."""
    if len(body) < 2:
        raise ProtocolError("CONNACK too short")
    props: dict[int, object] = {}
    if v5 and len(body) > 2:
        props, _ = read_properties(body, 2)
    return Connack(bool(body[0] & 1), body[1], props)


def read_suback(body: bytes, *, v5: bool) -> tuple[int, list[int]]:
    """Decode a SUBACK body: (packet id, granted QoS or failure code per filter)."""
    if len(body) < 3:
        raise ProtocolError("SUBACK too short")
    mid = (body[0] << 8) | body[1]
    pos = 2
    if v5:
        _, pos = read_properties(body, pos)
    return mid, list(body[pos:])


def read_ack(body: bytes) -> tuple[int, int]:
    """Decode a PUBACK body: (packet id, reason code; 0 when omitted)."""
    if len(body) < 2:
        raise ProtocolError("PUBACK too short")
    return (body[0] << 8) | body[1], (body[2] if len(body) > 2 else 0)
