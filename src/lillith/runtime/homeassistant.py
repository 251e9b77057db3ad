"""Home Assistant MQTT discovery: each agent as a device with four entities.

Opt-in (``[homeassistant] enabled = true``). Per agent, retained on
``<prefix>/<component>/<node_id>/<object_id>/config`` (Home Assistant's
discovery topic; ``node_id`` is the daemon's MQTT client id, so daemons on
one broker never touch each other's entities):

- ``binary_sensor`` ``alarm`` (device class ``problem``): on while the
  agent's alarm is on;
- ``sensor`` ``likelihood`` (the anomaly likelihood, 0..1), ``score`` (the
  raw anomaly score) and ``energy`` (the BioSystem's energy), state class
  ``measurement``.

Every entity reads the agent's ``lillith/<agent>/out`` messages (a
``value_template`` picks its field) and is available while the agent's
retained ``lillith/<agent>/status`` says ``online``; the device carries the
agent's name and lillith's version. An entity is removed by an empty
retained message on its config topic (:func:`removal`): the daemon sends one
at start for every entity it finds retained under its ``node_id`` for an
agent it no longer hosts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import structlog

from lillith.runtime.config import HomeAssistantSettings
from lillith.sensors.mqtt import Link

log = structlog.get_logger(component="homeassistant")

ENTITIES: dict[str, tuple[str, dict[str, Any]]] = {
    "alarm": ("binary_sensor", {
        "name": "alarm", "device_class": "problem", "value_template": "{{ value_json.alarm }}",
        "payload_on": "1", "payload_off": "0"}),
    "likelihood": ("sensor", {
        "name": "anomaly likelihood", "state_class": "measurement",
        "value_template": "{{ value_json.anomaly_likelihood }}",
        "suggested_display_precision": 4}),
    "score": ("sensor", {
        "name": "anomaly score", "state_class": "measurement",
        "value_template": "{{ value_json.anomaly_score }}", "suggested_display_precision": 3}),
    "energy": ("sensor", {
        "name": "energy", "state_class": "measurement",
        "value_template": "{{ value_json.energy }}", "suggested_display_precision": 3,
        "entity_category": "diagnostic"}),
}
"""object suffix -> (component, the entity's own fields)."""


def slug(text: str) -> str:
    """``text`` as Home Assistant's ids want it: ``[a-zA-Z0-9_-]`` only."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", text)


def config_topic(prefix: str, node_id: str, agent: str, entity: str) -> str:
    """The discovery topic of one entity of one agent."""
    component = ENTITIES[entity][0]
    return f"{prefix}/{component}/{slug(node_id)}/{slug(agent)}_{entity}/config"


def discovery(prefix: str, node_id: str, agent: str, *, device_name: str, version: str,
              qos: int) -> list[tuple[str, bytes]]:
    """The retained discovery messages (topic, JSON payload) of one agent."""
    base = f"lillith/{agent}"
    uid = f"lillith_{slug(node_id)}_{slug(agent)}"
    device = {"identifiers": [uid], "name": f"{device_name} {agent}",
              "manufacturer": "lillith", "model": "anomaly detection agent",
              "sw_version": version}
    availability = [{"topic": f"{base}/status", "value_template": "{{ value_json.state }}",
                     "payload_available": "online", "payload_not_available": "offline"}]
    out = []
    for entity, (_, fields) in ENTITIES.items():
        body = {**fields, "unique_id": f"{uid}_{entity}",
                "state_topic": f"{base}/out", "availability": availability,
                "device": device, "qos": qos}
        out.append((config_topic(prefix, node_id, agent, entity),
                    json.dumps(body).encode()))
    return out


def removal(prefix: str, node_id: str, agent: str) -> list[str]:
    """The config topics to clear (empty retained payload) to remove an agent."""
    return [config_topic(prefix, node_id, agent, e) for e in ENTITIES]


def subscription(prefix: str, node_id: str) -> str:
    """The filter under which this daemon's retained discovery configs live."""
    return f"{prefix}/+/{slug(node_id)}/+/config"


def agent_of(topic: str, prefix: str, node_id: str) -> str | None:
    """The agent slug of one of this daemon's discovery config topics, else None."""
    parts = topic.split("/")
    head = prefix.split("/")
    n = len(head)
    if (len(parts) != n + 4 or parts[:n] != head or parts[n + 1] != slug(node_id)
            or parts[-1] != "config"):
        return None
    object_id = parts[n + 2]
    for entity in ENTITIES:
        if object_id.endswith(f"_{entity}"):
            return object_id[:-len(entity) - 1]
    return None


class Discovery:
    """The daemon's side of discovery: announce agents, clear the gone ones'."""

    def __init__(self, settings: HomeAssistantSettings, node_id: str, qos: int) -> None:
        self.settings = settings
        self.node_id = node_id
        self.qos = qos
        self.subscription = subscription(settings.prefix, node_id)
        """Subscribed at connection: the broker sends our retained configs back."""

    async def announce(self, link: Link, agent: str) -> None:
        """Publish the agent's retained discovery configs."""
        from lillith.version import __version__

        for topic, body in discovery(self.settings.prefix, self.node_id, agent,
                                     device_name=self.settings.device_name,
                                     version=__version__, qos=self.qos):
            await link.publish(topic, body, retain=True, qos=1)

    async def seen(self, link: Link, topic: str, hosted: Callable[[str], bool]) -> None:
        """A retained config of ours received: cleared (an empty retained
        message removes the entity) when its agent (by :func:`slug`) is not
        ``hosted``."""
        agent = agent_of(topic, self.settings.prefix, self.node_id)
        if agent is None or hosted(agent):
            return
        log.info("homeassistant_entity_removed", topic=topic[:512], agent=agent)
        await link.publish(topic, b"", retain=True, qos=1)

