"""What the links hand the daemon and what they fail with: :class:`Incoming`
messages, the :class:`LastWill`, :class:`MqttError`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class MqttError(Exception):
    """An MQTT link's failure: the broker cannot be reached, refused us, or was lost."""


class LinkError(MqttError):
    """Connection to the broker failed or was lost."""


class Incoming(NamedTuple):
    """One received message: topic, payload bytes, MQTT 5 content type if any.

    ``mid``/``qos`` identify it for the link's ``ack`` (``mid`` 0: nothing to
    acknowledge); a packet id is only meaningful on the connection (``link``)
    that received the message. (A named tuple: built once per message on the
    intake's hot path, where a frozen dataclass costs three times as much.)
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
