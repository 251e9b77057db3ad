"""Agents to and from snapshots: resume with a configuration check."""

from __future__ import annotations

from typing import Any

from lillith.agents.agent import Agent, config_differences
from lillith.agents.config import AgentConfig
from lillith.errors import StateError
from lillith.state.snapshot import Loaded, SnapshotStore


def agent_store(root: str, name: str = "default", **kw: Any) -> SnapshotStore:
    """The snapshot store of agent ``name`` under the state root.

    The agent named ``default`` uses ``root`` itself (``root/snapshots``);
    any other agent ``root/agents/<name>``.
    """
    if name == "default":
        return SnapshotStore(root, **kw)
    return SnapshotStore(f"{root.rstrip('/')}/agents/{name}", **kw)


def check_compatible(state: dict[str, Any], config: AgentConfig,
                     n_channels: int | None) -> None:
    """Raise :class:`StateError` naming every difference between the snapshot's
    agent and the configured one (fabric shape, channels, ...). The scoring
    settings may differ (:meth:`Agent.set_state`; the resumed agent's
    ``score_changes`` names them)."""
    diffs = config_differences(state, config, n_channels, scoring=False)
    if diffs:
        raise StateError("snapshot belongs to another agent configuration "
                         "(start with --fresh to begin a new agent)", differences=diffs)


def resume_agent(store: SnapshotStore, config: AgentConfig, *, n_channels: int | None = None,
                 name: str = "default") -> tuple[Agent, Loaded] | None:
    """Agent restored from the newest intact snapshot, or None when there is none.

    Raises
    ------
    StateError
        The snapshot's configuration differs from ``config`` (the message
        lists the differences), or no snapshot is intact.
    """
    if not store.names():
        return None
    loaded = store.load()
    check_compatible(loaded.state, config, n_channels)
    width = int(Agent.meta_of(loaded.state)["n_channels"])
    agent = Agent(width, config, name=name)
    agent.set_state(loaded.state)
    return agent, loaded
