"""The configured link (``mqtt.client``): the native one by default, paho's as the fallback."""

from __future__ import annotations

from lillith.sensors.mqtt.messages import LastWill
from lillith.sensors.mqtt.native_link import NativeLink
from lillith.sensors.mqtt.paho_link import PahoLink
from lillith.sensors.mqtt.settings import MqttSettings

Link = NativeLink | PahoLink
"""Either link: the same interface (``async with``, ``subscribe``, ``publish``,
``messages``, ``ack``, ``pending``)."""


def open_link(settings: MqttSettings, will: LastWill | None = None) -> Link:
    """The configured link implementation (``settings.client``)."""
    if settings.client == "native":
        return NativeLink(settings, will)
    return PahoLink(settings, will)
