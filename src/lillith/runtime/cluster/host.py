"""The actor's side: a shard of agents hosted in one Ray actor process.

:class:`AgentHost` is a plain class; :class:`~lillith.runtime.cluster.dispatch.RayCluster`
turns it into a Ray actor (``ray.remote(AgentHost)``), so importing this module
imports no Ray. Each agent of the shard is processed exactly as a worker thread
processes it on one machine (:class:`~lillith.runtime.worker.AgentWorker`'s
chunking by width and its one-by-one retry after a failed run), so the results
are bit for bit those of a single-process daemon fed the same frames in the same
order.

The actor is threaded (one thread per agent and one spare): agents of one shard
compute in parallel (numba and torch release the GIL), and a slow agent holds up
only itself. The daemon sends one call per agent at a time, so each agent's
calls run in the order sent; a per-agent lock keeps that true whatever Ray does.

Snapshots: each agent is checkpointed on the configured cadence into the store
under ``[state] dir``, which every node must reach (shared storage or an fsspec
URL). The state is copied between calls, on the agent's thread, and written off
it (a private event loop thread, :class:`~lillith.runtime.checkpoint.Checkpointer`),
so frames go on while a snapshot is written. A call that runs a command (pause,
mode, evolve, surgery) is followed by a snapshot before it returns: the daemon's
replay of frames after a restart (:mod:`lillith.runtime.cluster.dispatch`) then
never needs to replay a command.

At start (and after Ray restarts the actor) each agent resumes from its newest
intact snapshot; with ``fresh`` the first start ignores them, and a restart
after it only takes snapshots written since (sequence number above ``floors``).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import structlog

from lillith.agents.agent import Agent
from lillith.agents.config import AgentConfig
from lillith.errors import ConfigError, StateError
from lillith.runtime.checkpoint import Checkpointer
from lillith.runtime.config import StateSettings
from lillith.runtime.resume import agent_store, check_compatible, resume
from lillith.runtime.worker import AgentWorker, Result
from lillith.sensors.codec import Frame
from lillith.state.snapshot import SnapshotStore

log = structlog.get_logger(component="actor")


@dataclass(frozen=True)
class Reply:
    """What an actor answers to a run of frames of one agent.

    Attributes
    ----------
    results : list of Result
        One per frame, in order (``metrics`` None for a frame that failed).
    evolutions : list of dict
        Reports of the evolution rounds the agent ran during the call.
    step : int
        The agent's step after the call (frames it has learned, in its life).
    snapshot_step : int or None
        Step of the agent's newest snapshot on storage (written, or resumed
        from); None without snapshots.
    rewound : bool
        The agent was not at the step the caller expected (the actor was
        restarted from a snapshot): nothing was processed.
    """

    results: list[Result]
    evolutions: list[dict[str, Any]]
    step: int
    snapshot_step: int | None
    rewound: bool = False


class _Hosted(AgentWorker):
    """One agent in the actor: the worker's processing without its thread or queue."""

    def __init__(self, name: str, config: AgentConfig, width: int | None) -> None:
        self.out: list[Result] = []
        self.reports: list[dict[str, Any]] = []
        super().__init__(name, config, queue_size=1, policy="backpressure", width=width,
                         on_results=self.out.extend, on_evolution=self.reports.append)

    def run(self, frames: list[tuple[int, Frame]]) -> tuple[list[Result], list[dict[str, Any]]]:
        """Process ``frames`` in order; their results and the evolution reports."""
        self._process(frames)
        out, reports = list(self.out), list(self.reports)
        self.out.clear()
        self.reports.clear()
        return out, reports


@dataclass
class _Slot:
    worker: _Hosted
    checkpointer: Checkpointer | None
    snapshot: str | None = None  # the snapshot resumed from
    writing: Future[Any] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def step(self) -> int:
        agent = self.worker.agent
        return 0 if agent is None else agent.step


def resume_after(store: SnapshotStore, config: AgentConfig, *, name: str,
                 n_channels: int | None, floor: int) -> tuple[Agent, str] | None:
    """The agent of the newest intact snapshot whose sequence number is above
    ``floor`` (written since a ``--fresh`` start), with its name; None if none.

    Raises
    ------
    StateError
        The snapshot belongs to another configuration.
    """
    store.clean_temporaries()
    for n in reversed(store.names()):
        info = store.info(n)
        if info.seq <= floor:
            break
        try:
            loaded = store.load(n, fallback=False)
        except StateError as e:
            log.warning("snapshot_skipped", agent=name, name=n, problems=[str(e)])
            continue
        check_compatible(loaded.state, config, n_channels)
        agent = Agent(int(Agent.meta_of(loaded.state)["n_channels"]), config, name=name)
        agent.set_state(loaded.state)
        return agent, n
    return None


class AgentHost:
    """A shard of agents; the body of one Ray actor.

    Parameters
    ----------
    widths : dict of str to int or None
        The shard's agents by name, with their configured frame width (None:
        fixed by the first frame).
    config : AgentConfig
        The agents' configuration.
    state : StateSettings, optional
        Snapshots (``dir`` must be reachable from every node); None: none, and
        a restarted actor starts its agents afresh.
    fresh : bool
        First start: do not resume (older snapshots are kept).
    floors : dict of str to int, optional
        With ``fresh``: per agent, the highest snapshot sequence number that
        existed before this run (a restart resumes only from newer ones).
    log_level, log_format : str
        The actor process's logging (as the daemon's).
    torch_threads : int
        ``torch.set_num_threads`` of the actor process.
    """

    def __init__(self, widths: dict[str, int | None], config: AgentConfig,
                 state: StateSettings | None, *, fresh: bool = False,
                 floors: dict[str, int] | None = None, log_level: str = "info",
                 log_format: str = "console", torch_threads: int = 1) -> None:
        import ray
        import torch

        from lillith.runtime.logging import configure_logging

        configure_logging(log_level, "json" if log_format == "json" else "console")
        torch.set_num_threads(torch_threads)
        ctx = ray.get_runtime_context()
        with warnings.catch_warnings():  # (Ray warns about an API it uses inside)
            warnings.simplefilter("ignore", DeprecationWarning)
            self.restarted = bool(ctx.was_current_actor_reconstructed)
        self.node = str(ctx.get_node_id())
        self.pid = os.getpid()
        self.config = config
        self.state = state
        self._loop = asyncio.new_event_loop()  # the snapshot writes
        threading.Thread(target=self._loop.run_forever, name="snapshot-writes",
                         daemon=True).start()
        self._slots = {name: self._open(name, width, fresh=fresh and not self.restarted,
                                        floor=(floors or {}).get(name) if fresh else None)
                       for name, width in widths.items()}
        log.info("actor_started", agents=list(widths), pid=self.pid, node=self.node,
                 restarted=self.restarted,
                 steps={n: s.step for n, s in self._slots.items()})

    def _open(self, name: str, width: int | None, *, fresh: bool, floor: int | None) -> _Slot:
        worker = _Hosted(name, self.config, width)
        st = self.state
        if st is None:
            return _Slot(worker, None)
        store = agent_store(st.dir, name, keep_last=st.keep_last, keep_every=st.keep_every,
                            storage_options=st.storage_options or None)
        cp = Checkpointer(store, agent=name, every_frames=st.checkpoint_every_frames,
                          every_seconds=st.checkpoint_every_seconds,
                          retry_min_s=st.retry_min_s, retry_max_s=st.retry_max_s)
        slot = _Slot(worker, cp)
        agent: Agent | None
        if floor is not None and not fresh:  # restarted during a --fresh run
            got = resume_after(store, self.config, name=name, n_channels=width, floor=floor)
            agent, slot.snapshot = (None, None) if got is None else got
        else:
            agent = resume(store, self.config, name=name, n_channels=width, fresh=fresh,
                           log=log)
            slot.snapshot = store.latest_name() if agent is not None else None
        if agent is not None:
            worker.agent = agent
            worker.width = agent.n_channels
            cp.mark(agent.step)
        return slot

    # ------------------------------------------------------------------ calls
    def info(self, name: str) -> dict[str, Any]:
        """The agent's step, width and snapshot, and where the actor runs."""
        s = self._slots[name]
        with s.lock:
            return {"step": s.step, "width": s.worker.width, "snapshot": s.snapshot,
                    "snapshot_step": self._durable(s), "pid": self.pid, "node": self.node,
                    "restarted": self.restarted}

    def process(self, name: str, frames: list[tuple[int, Frame]], expect_step: int) -> Reply:
        """Process a run of ``(seq, frame)`` of agent ``name`` in order, if the agent
        is at ``expect_step`` (else nothing: ``rewound``); snapshot when due."""
        s = self._slots[name]
        with s.lock:
            if s.step != expect_step:
                return Reply([], [], s.step, self._durable(s), rewound=True)
            results, reports = s.worker.run(frames)
            self._cadence(s)
            return Reply(results, reports, s.step, self._durable(s))

    def call(self, name: str, fn: Callable[[Agent | None], Any]) -> Any:
        """Run ``fn(agent)`` between frames (a command), then snapshot the agent."""
        s = self._slots[name]
        with s.lock:
            out = fn(s.worker.agent)
            if s.checkpointer is not None and s.worker.agent is not None:
                s.checkpointer.touch()
                self._write(s, "command").result()
            return out

    def checkpoint(self, name: str, reason: str) -> dict[str, Any]:
        """Snapshot the agent now (the ``checkpoint`` command, the daemon's stop)
        and wait for the write; the newest snapshot's name and step."""
        s = self._slots[name]
        cp = s.checkpointer
        if cp is None:
            raise ConfigError("snapshots are not configured")
        with s.lock:
            if s.worker.agent is not None:
                self._write(s, reason).result()
            last = cp.last
            return {"snapshot": None if last is None else last.name,
                    "step": None if last is None else last.step}

    def ping(self) -> int:
        """The actor process's pid (a liveness probe)."""
        return self.pid

    def cpu_seconds(self) -> float:
        """CPU time the actor process has used (``time.process_time``: every thread)."""
        return time.process_time()

    # ------------------------------------------------------------------ snapshots
    @staticmethod
    def _durable(s: _Slot) -> int | None:
        return None if s.checkpointer is None else s.checkpointer.last_step

    def _cadence(self, s: _Slot) -> None:
        cp, agent = s.checkpointer, s.worker.agent
        if cp is None or agent is None or (s.writing is not None and not s.writing.done()):
            return
        if cp.due(agent.step):
            s.writing = self._write(s, "cadence")

    def _write(self, s: _Slot, reason: str) -> Future[Any]:
        """Copy the state now (the caller holds the agent's lock), write it on the
        snapshot thread; the future ends with the write (never raises: a failed
        write is logged and retried on the cadence, as in the daemon)."""
        cp, agent = s.checkpointer, s.worker.agent
        assert cp is not None and agent is not None
        try:
            state, step = agent.get_state(), agent.step
        except Exception as e:
            cp.failed(agent.step, reason, "the agent's state could not be copied",
                      detail=repr(e)[:500])
            done: Future[Any] = Future()
            done.set_result(None)
            return done
        return asyncio.run_coroutine_threadsafe(cp.write(state, step, reason=reason),
                                                self._loop)
