"""MQTT topic filters: which topics a subscription's filter matches."""

from __future__ import annotations

MAX_TOPIC_LENGTH = 65_535
"""Longest topic or filter MQTT allows (characters)."""


def _check(topic: str, topic_filter: str) -> None:
    if (not topic_filter or len(topic_filter) > MAX_TOPIC_LENGTH or "#/" in topic_filter
            or any(("+" in lv or "#" in lv) for lv in topic_filter.split("/") if len(lv) > 1)):
        raise ValueError(f"invalid topic filter: {topic_filter}")
    if not topic or len(topic) > MAX_TOPIC_LENGTH or "+" in topic or "#" in topic:
        raise ValueError(f"invalid topic: {topic}")


def topic_matches(topic: str, topic_filter: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` (MQTT 3.1.1 / 5, section 4.7).

    Levels are compared one by one: ``+`` matches any one level, ``#`` (the
    last level) any number of levels, zero included (``a/#`` matches ``a``).
    A shared subscription's ``$share/<group>/`` prefix is ignored.

    Raises
    ------
    ValueError
        An empty or over-long filter or topic, a wildcard that is not a whole
        level or a ``#`` that is not the last level, a wildcard in the topic.
    """
    _check(topic, topic_filter)
    want = topic_filter.split("/")
    if want[0] == "$share":
        want = want[2:]
    levels = topic.split("/")
    for i, w in enumerate(want):
        if w == "#":
            return True
        if i == len(levels):
            return False
        if w != "+" and w != levels[i]:
            return False
    return len(levels) == len(want)
