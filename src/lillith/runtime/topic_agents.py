"""``agent_per_topic``: one agent per topic a binding's filters receive.

For sites where each topic is a separate sensor (``sensors/boiler``,
``sensors/pump``), a binding with ``agent_per_topic = true`` starts no agent
of its own: the daemon creates one for each topic at its first frame, named
``<binding>.<topic>`` (:func:`topic_agent_name`), with its snapshots under
that name, so a restarted daemon resumes each topic's agent.
"""

from __future__ import annotations

import hashlib
import re

from lillith.runtime.config import AgentBinding
from lillith.sensors.mqtt import topic_matches

_PLAIN = re.compile(r"^[A-Za-z0-9_./-]+$")


def topic_agent_name(binding: str, topic: str) -> str:
    """The agent of ``topic`` under binding ``binding``: ``<binding>.<topic>``
    with ``/`` as ``.``; a topic with other characters than ``[A-Za-z0-9_.-/]``
    has them as ``_`` and a short hash of the topic appended (two topics
    never share an agent). Stable across restarts (the state's name)."""
    body = topic.replace("/", ".")
    if _PLAIN.match(topic):
        return f"{binding}.{body}"
    digest = hashlib.sha1(topic.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{binding}.{re.sub(r'[^A-Za-z0-9_.-]', '_', body)[:96]}-{digest}"


def topic_agent_binding(template: AgentBinding, topic: str) -> AgentBinding:
    """The binding of the agent of ``topic``: the template's, named for the
    topic, with the topic as its only filter."""
    return template.model_copy(update={"name": topic_agent_name(template.name, topic),
                                       "topics": [topic]})


class TopicAgents:
    """The ``agent_per_topic`` bindings and how many agents each has created."""

    def __init__(self, bindings: list[AgentBinding]) -> None:
        self.bindings = bindings
        self._counts = {b.name: 0 for b in bindings}
        self._parents: dict[str, str] = {}
        self._refused: set[str] = set()

    def binding_of(self, topic: str) -> AgentBinding | None:
        """The first ``agent_per_topic`` binding whose filters match ``topic``."""
        for b in self.bindings:
            if any(topic_matches(topic, f) for f in b.topics):
                return b
        return None

    def count(self, b: AgentBinding) -> int:
        """Agents created for binding ``b`` so far."""
        return self._counts[b.name]

    def added(self, b: AgentBinding, name: str) -> None:
        """Count the agent ``name`` created for binding ``b``."""
        self._counts[b.name] += 1
        self._parents[name] = b.name

    def first_refusal(self, b: AgentBinding) -> bool:
        """True the first time binding ``b`` refuses a topic (its limit reached)."""
        first = b.name not in self._refused
        self._refused.add(b.name)
        return first

    def parent_of(self, name: str) -> str | None:
        """The binding an agent was created for, or None (not a topic agent)."""
        return self._parents.get(name)

    def template(self, name: str) -> AgentBinding | None:
        """The ``agent_per_topic`` binding called ``name``."""
        return next((b for b in self.bindings if b.name == name), None)
