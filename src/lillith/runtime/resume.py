"""An agent's snapshot store at start: clean up, resume with a configuration check, log.

Every runner (the daemon, ``lillith run`` on a local source, ``lillith
replay --state``) starts an agent through :func:`resume`, so what a resumed
agent must match and what is logged about it is decided here once.
"""

from __future__ import annotations

from typing import Any

import structlog

from lillith.agents.agent import Agent
from lillith.agents.agent_state import config_differences
from lillith.agents.config import AgentConfig
from lillith.errors import StateError
from lillith.state.snapshot import Loaded, SnapshotStore


def agent_store(root: str, name: str = "default", **kw: Any) -> SnapshotStore:
    """The snapshot store of agent ``name`` under the state root.

    The agent named ``default`` uses ``root`` itself (``root/snapshots``);
    any other agent ``root/agents/<name>``. ``kw`` go to :class:`SnapshotStore`
    (``keep_last``, ``keep_every``, ``storage_options``).
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


def resume(store: SnapshotStore, config: AgentConfig, *, name: str = "default",
           n_channels: int | None = None, fresh: bool = False,
           log: structlog.stdlib.BoundLogger | None = None) -> Agent | None:
    """Start agent ``name`` on ``store``: remove the snapshots a crash left
    half-written, then restore the agent from the newest intact snapshot.

    Parameters
    ----------
    store : SnapshotStore
        The agent's store (:func:`agent_store`).
    config : AgentConfig
        The configured agent; a snapshot of another configuration is refused.
    name : str
        The agent's name (given to a restored agent, and in the logs).
    n_channels : int, optional
        The configured frame width, when known (checked against the snapshot).
    fresh : bool
        Do not resume (a new agent; the old snapshots are kept).
    log : structlog logger, optional
        Where to say what happened: ``partial_snapshots_removed``,
        ``snapshot_skipped`` (each broken snapshot passed over),
        ``state_resumed`` (snapshot, step, schema version),
        ``state_resumed_with_other_score_settings`` (the differences), or
        ``state_fresh``. None: silent.

    Returns
    -------
    Agent or None
        The restored agent; None when ``fresh`` or there is no snapshot (the
        caller makes a new agent: the width may not be known yet).

    Raises
    ------
    StateError
        The snapshot belongs to another configuration, or none is intact.
    """
    removed = store.clean_temporaries()
    if removed and log is not None:
        log.warning("partial_snapshots_removed", agent=name, names=removed)
    got = None if fresh else resume_agent(store, config, n_channels=n_channels, name=name)
    if got is None:
        if log is not None:
            log.info("state_fresh", agent=name, state_dir=store.root, fresh_flag=fresh)
        return None
    agent, loaded = got
    if log is not None:
        for s in loaded.skipped:
            log.warning("snapshot_skipped", agent=name, name=s.name, problems=s.problems)
        log.info("state_resumed", agent=name, snapshot=loaded.info.name, step=agent.step,
                 schema_version=loaded.info.schema_version)
        if agent.score_changes:
            log.warning("state_resumed_with_other_score_settings", agent=name,
                        differences=agent.score_changes)
    return agent
