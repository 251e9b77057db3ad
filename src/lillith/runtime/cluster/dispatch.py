"""The daemon's side: actors started on a Ray cluster, and a worker per agent
that feeds its actor.

The MQTT intake, validation, publishing and acknowledgement stay in the daemon
(:mod:`lillith.runtime.daemon`), unchanged: an agent's frames wait in the same
bounded queue as on one machine (``queue_size``, ``policy``), and a thread of
the daemon (:class:`ActorWorker`, an :class:`~lillith.runtime.worker.AgentWorker`
whose processing is remote) takes the frames waiting, up to
:data:`~lillith.runtime.worker.MAX_RUN` at a time, sends them to the agent's
actor as one call, and hands the results to the publisher, which publishes
each and only then acknowledges its message. One call per agent is in flight:
the agent's frames are processed in order, so its outputs are bit for bit
those of a single-process daemon.

When an actor dies, Ray restarts it (``max_restarts``) and its agents resume
from their newest snapshot (:mod:`lillith.runtime.cluster.host`); once Ray
has no restart left for it, the daemon creates a new actor in its place, with
the same arguments (``actor_replaced``; at most one per actor every 2**k
seconds, k the replacements so far, up to a minute), and the agents resume the
same way. The worker
notices (the call fails, or the agent answers from another step), waits for
the actor, and sends again the frames it had processed since that snapshot
(kept for this, at most ``replay_frames``; their outputs were published, and
are not published twice) and then the frames that were in flight: the agent
is back in the state it had, and every frame is published once. If the
snapshot is older than what was kept, the agent goes on from the snapshot's
state (``actor_resumed_with_gap``: the frames between were published but
their learning is lost, as when a single-process daemon is killed), and
nothing is lost either: frames whose result was not published are not yet
acknowledged, and are sent again (and if the daemon itself dies, the broker
redelivers them).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lillith.agents.agent import Agent
from lillith.agents.config import AgentConfig
from lillith.errors import ConfigError, LillithError
from lillith.runtime.cluster.host import AgentHost, Reply
from lillith.runtime.config import AgentBinding, ClusterSettings, LogConfig, StateSettings
from lillith.runtime.resume import agent_store
from lillith.runtime.worker import MAX_RUN, AgentWorker, Policy, Result
from lillith.sensors.codec import Frame

log = structlog.get_logger(component="cluster")
ACTOR_ERROR = "actor_error"
"""Dead-letter reason of frames whose actor call raised (not an actor loss)."""
INFO_TIMEOUT_S = 30.0  # one wait for a (re)starting actor's answer


class _LostError(Exception):
    """The actor was restarted again during a replay."""


class ClusterError(LillithError):
    """The Ray cluster cannot be joined or the actors cannot be started."""


class ClusterMetrics:
    """Prometheus metrics per actor and agent (``lillith_actor_*``), on the
    daemon's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        labels = ["actor", "agent"]
        self.call_seconds = Histogram(
            "lillith_actor_call_seconds", "Round trip of one run of frames to the actor",
            labels, buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0),
            registry=registry)
        self.frames = Counter("lillith_actor_frames", "Frames processed by the actor", labels,
                              registry=registry)
        self.restarts = Counter("lillith_actor_losses", "Times the actor was lost (then "
                                "restarted by Ray and resumed)", labels, registry=registry)
        self.replayed = Counter("lillith_actor_replayed_frames", "Frames sent again after a "
                                "restart to restore the agent's state", labels,
                                registry=registry)
        self.gap = Counter("lillith_actor_gap_frames", "Frames whose learning a restart lost "
                           "(the snapshot was older than the replay log)", labels,
                           registry=registry)
        self.up = Gauge("lillith_actor_up", "1 while the agent's actor answers", labels,
                        registry=registry)
        self.replaced = Counter("lillith_actor_replacements", "Times the daemon created a "
                                "new actor in place of one Ray would not restart again",
                                ["actor"], registry=registry)
        self.log_frames = Gauge("lillith_actor_replay_log_frames", "Frames kept to replay "
                                "after a restart (since the last snapshot)", labels,
                                registry=registry)


def ray_address(address: str) -> str:
    """``ray`` → ``local`` (a new local Ray); ``ray://ADDRESS`` → ``ADDRESS``."""
    if address == "ray":
        return "local"
    if address.startswith("ray://") and len(address) > len("ray://"):
        return address[len("ray://"):]
    raise ConfigError("cluster address must be 'ray' or 'ray://ADDRESS'", address=address)


class ActorWorker(AgentWorker):
    """An agent's bounded queue and feeding thread in the daemon; the agent itself
    lives in a Ray actor.

    Same interface as :class:`AgentWorker` (``offer``, ``put``, ``call``,
    ``stop``, ``join``, ``depth``, counters); ``agent`` stays None here.
    :meth:`bind` (once, before :meth:`start`) waits for the actor and learns the
    agent's step and width. Commands (``call``) run in the actor between
    frames. At stop, after the last frames, the actor writes a final snapshot.
    """

    def __init__(self, name: str, config: AgentConfig, *, queue_size: int, policy: Policy,
                 width: int | None, on_results: Callable[[list[Result]], None],
                 on_evolution: Callable[[dict[str, Any]], None] | None = None,
                 actor: Any, actor_name: str, metrics: ClusterMetrics, replay_frames: int,
                 snapshots: bool, replace: Callable[[str, Any], Any] | None = None) -> None:
        super().__init__(name, config, queue_size=queue_size, policy=policy, width=None,
                         on_results=on_results, on_evolution=on_evolution)
        self.width = width
        self._thread.name = f"actor-feed-{name}"
        self.actor = actor
        self.actor_name = actor_name
        self.snapshots = snapshots
        # replace(actor_name, dead handle) -> the handle of the actor in its place
        self._replace = replace
        self._cap_log = replay_frames if snapshots else 0
        self._step = 0  # the agent's step as last answered
        self._log: deque[tuple[int, Frame, int | None]] = deque()  # (seq, frame, its step)
        self._log_start = 0  # the agent's step before the first frame kept
        self.pid: int | None = None
        self.losses = 0  # times the actor was lost
        self.replayed = 0  # frames sent again to bring the agent back
        self.resumed: list[int] = []  # the step each restart resumed from
        m = (actor_name, name)
        self._m_call = metrics.call_seconds.labels(*m)
        self._m_frames = metrics.frames.labels(*m)
        self._m_losses = metrics.restarts.labels(*m)
        self._m_replayed = metrics.replayed.labels(*m)
        self._m_gap = metrics.gap.labels(*m)
        self._m_up = metrics.up.labels(*m)
        self._m_log = metrics.log_frames.labels(*m)

    # ------------------------------------------------------------------ set-up
    def bind(self) -> dict[str, Any]:
        """Wait for the actor (started, agents resumed); its answer about the agent
        (``step``, ``width``, ``snapshot``, ``pid``, ``node``)."""
        info = self._info(at_start=True)
        self._step = self._log_start = int(info["step"])
        if info["width"] is not None:
            self.width = int(info["width"])
        log.info("actor_ready", agent=self.name, actor=self.actor_name, pid=info["pid"],
                 node=info["node"], step=info["step"], snapshot=info["snapshot"])
        return info

    def _info(self, at_start: bool = False) -> dict[str, Any]:
        """The actor's answer, waiting for it to (re)start, however long (logged
        every minute it does not answer).

        Raises
        ------
        ClusterError
            ``at_start``, and the actor is dead: its creation failed (a snapshot
            of another configuration, a store it cannot reach: the cause is
            in the message) or it cannot be placed.
        """
        import ray
        from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError

        t0 = last = time.monotonic()
        delay = 0.05
        while True:
            try:
                info: dict[str, Any] = ray.get(self.actor.info.remote(self.name),
                                               timeout=INFO_TIMEOUT_S)
            except (RayActorError, GetTimeoutError) as e:
                dead = isinstance(e, ActorDiedError)  # for good: no restart left
                if dead and at_start:
                    raise ClusterError("the agent's actor could not start", agent=self.name,
                                       actor=self.actor_name, error=str(e)[-1500:]) from None
                now = time.monotonic()
                if now - last > 60 or (dead and last == t0):
                    last = now
                    log.error("actor_dead" if dead else "actor_unavailable", agent=self.name,
                              actor=self.actor_name, seconds=round(now - t0, 1),
                              error=str(e)[-1500:])
                if dead and self._replace is not None:
                    self.actor = self._replace(self.actor_name, self.actor)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self.pid = int(info["pid"])
            self._m_up.set(1)
            return info

    # ------------------------------------------------------------------ frames
    def _process(self, frames: list[tuple[int, Frame]]) -> None:
        """Send a run of frames to the actor and hand the results on (after a
        loss: recover, then send them again)."""
        while True:
            reply = self._send(frames)
            if reply is not None:
                break
        ok = [r for r in reply.results if r.metrics is not None]
        self.processed += len(ok)
        self.errors += len(reply.results) - len(ok)
        self._m_frames.inc(len(ok))
        if self._cap_log:
            steps = {r.seq: r.metrics.step for r in ok if r.metrics is not None}
            self._log.extend((seq, f, steps.get(seq)) for seq, f in frames)
        self._step = reply.step
        if self._cap_log:
            self._trim(reply.snapshot_step)
        else:  # nothing kept: a restart is a gap unless the agent lost nothing
            self._log_start = self._step
        if self._on_evolution is not None:
            for report in reply.evolutions:
                self._on_evolution(report)
        self._on_results(reply.results)

    def _send(self, frames: list[tuple[int, Frame]]) -> Reply | None:
        """One call; None when the actor was lost (and has been recovered since)."""
        import ray
        from ray.exceptions import RayActorError

        t0 = time.perf_counter()
        try:
            reply: Reply = ray.get(self.actor.process.remote(self.name, frames, self._step))
        except RayActorError as e:
            self._recover(repr(e)[:300])
            return None
        except Exception as e:  # the call itself failed (not the agent: it reports its
            # own errors per frame): the frames are dead-lettered, never silently lost
            log.error("actor_call_failed", agent=self.name, actor=self.actor_name,
                      frames=len(frames), error=repr(e)[:500])
            return Reply([Result(self.name, seq, None, 0.0, ACTOR_ERROR, repr(e)[:500])
                          for seq, _ in frames], [], self._step, None)
        if reply.rewound:
            self._recover(f"the agent answered from step {reply.step}, expected {self._step}")
            return None
        self._m_call.observe(time.perf_counter() - t0)
        return reply

    def _trim(self, snapshot_step: int | None) -> None:
        """Forget the frames the newest snapshot holds, and the oldest beyond the cap."""
        q = self._log
        if snapshot_step is not None and snapshot_step > self._log_start:
            while q and (q[0][2] is None or q[0][2] < snapshot_step):
                q.popleft()
            self._log_start = snapshot_step
        while len(q) > self._cap_log:
            step = q.popleft()[2]
            if step is not None:
                self._log_start = step + 1
        self._m_log.set(len(q))

    def _recover(self, error: str) -> None:
        """After a loss: wait for the restarted actor, then bring the agent back to
        the step it had by sending again the frames kept since its snapshot."""
        import ray
        from ray.exceptions import RayActorError

        self.losses += 1
        self._m_losses.inc()
        self._m_up.set(0)
        lost_pid = self.pid
        log.warning("actor_lost", agent=self.name, actor=self.actor_name, pid=lost_pid,
                    step=self._step, error=error)
        while True:
            info = self._info()
            resumed = int(info["step"])
            self.resumed.append(resumed)
            replay = self._replay_from(resumed)
            try:
                if replay is None:
                    gap = max(self._step - resumed, 0)
                    self._m_gap.inc(gap)
                    log.warning("actor_resumed_with_gap", agent=self.name,
                                actor=self.actor_name, pid=info["pid"],
                                snapshot=info["snapshot"], step=resumed, was_step=self._step,
                                gap=gap, kept_from=self._log_start)
                    self._log.clear()
                    self._step = self._log_start = resumed
                    return
                step = resumed
                for i in range(0, len(replay), MAX_RUN):
                    reply: Reply = ray.get(self.actor.process.remote(
                        self.name, replay[i:i + MAX_RUN], step))
                    if reply.rewound:
                        raise _LostError
                    step = reply.step
            except (RayActorError, _LostError):
                log.warning("actor_lost", agent=self.name, actor=self.actor_name,
                            pid=self.pid, step=self._step, error="lost again during replay")
                continue
            self.replayed += len(replay)
            self._m_replayed.inc(len(replay))
            if step != self._step:
                log.error("actor_replay_mismatch", agent=self.name, actor=self.actor_name,
                          step=step, expected=self._step)
                self._step = step
            log.info("actor_resumed", agent=self.name, actor=self.actor_name,
                     pid=info["pid"], lost_pid=lost_pid, node=info["node"],
                     snapshot=info["snapshot"], from_step=resumed, replayed=len(replay),
                     step=step)
            return

    def _replay_from(self, resumed: int) -> list[tuple[int, Frame]] | None:
        """The kept frames after step ``resumed``, or None when they do not reach back
        to it (or it is beyond the step the agent had)."""
        if not self._log_start <= resumed <= self._step:
            return None
        entries = list(self._log)
        k = 0
        for i, (_, _, step) in enumerate(entries):
            if step is not None and step < resumed:
                k = i + 1
        return [(seq, f) for seq, f, _ in entries[k:]]

    # ------------------------------------------------------------------ commands
    def call(self, fn: Callable[[Agent | None], Any]) -> Future[Any]:
        """Run ``fn(agent)`` in the actor, between frames; returns a future."""
        return super().call(lambda _: self._remote("call", fn))

    def snapshot(self) -> Future[Any]:
        """The ``checkpoint`` command: the actor writes a snapshot now, between
        frames; the future's value is ``{"snapshot", "step"}``."""
        return super().call(lambda _: self._remote("checkpoint", "command"))

    def _remote(self, method: str, arg: Any) -> Any:
        import ray
        from ray.exceptions import RayActorError

        while True:
            try:
                return ray.get(getattr(self.actor, method).remote(self.name, arg))
            except RayActorError as e:
                self._recover(repr(e)[:300])

    def _run(self) -> None:
        super()._run()
        if self.snapshots:  # stopped: the final snapshot, after the last frames
            try:
                got = self._remote("checkpoint", "shutdown")
                log.info("actor_final_snapshot", agent=self.name, actor=self.actor_name,
                         **got)
            except Exception as e:
                log.error("final_snapshot_failed", agent=self.name, actor=self.actor_name,
                          error=repr(e)[:500])


class RayCluster:
    """The agents' actors on a Ray cluster, for one daemon.

    Parameters
    ----------
    settings : ClusterSettings
        Address, actors, placement, restarts.
    config : AgentConfig
        The agents' configuration.
    state : StateSettings, optional
        Snapshots; ``dir`` must be reachable from every node (a local path is
        made absolute: on several nodes it must be shared storage at the same
        path; else an fsspec URL).
    fresh : bool
        Start new agents (``--fresh``).
    client_id : str
        Names the actors (``<client_id>/<index>``, in ``settings.namespace``).
    log : LogConfig, optional
        The actors' logging.
    torch_threads : int
        torch threads of each actor process.
    """

    def __init__(self, settings: ClusterSettings, config: AgentConfig, *,
                 state: StateSettings | None = None, fresh: bool = False,
                 client_id: str = "lillith", log: LogConfig | None = None,
                 torch_threads: int = 1) -> None:
        self.settings = settings
        self.config = config
        if state is not None and "://" not in state.dir:
            state = state.model_copy(update={"dir": os.path.abspath(state.dir)})
        self.state = state
        self.fresh = fresh
        self.client_id = client_id
        self.log = log or LogConfig()
        self.torch_threads = torch_threads
        self.actors: dict[str, Any] = {}  # actor name -> handle
        self.placement: dict[str, str] = {}  # agent -> actor name
        self.workers: dict[str, ActorWorker] = {}
        self.metrics: ClusterMetrics | None = None
        self.replacements: dict[str, int] = {}  # actor name -> actors created in its place
        self._create: dict[str, Callable[[], Any]] = {}  # actor name -> a new actor
        self._replaced_at: dict[str, float] = {}
        self._replace_lock = threading.Lock()
        self._owns_ray = False

    def start(self, bindings: list[AgentBinding], registry: CollectorRegistry) -> None:
        """Join (or start) Ray and create the actors; their agents resume meanwhile.

        Raises
        ------
        ClusterError
            Ray cannot be joined, or the actors cannot be created.
        """
        import ray

        s = self.settings
        if not ray.is_initialized():
            address = ray_address(s.address)
            try:
                ray.init(address=address, namespace=s.namespace, include_dashboard=False,
                         num_cpus=s.local_cpus if address == "local" else None,
                         configure_logging=False)
            except Exception as e:
                raise ClusterError("cannot join the Ray cluster", address=s.address,
                                   error=repr(e)[:500]) from None
            self._owns_ray = True
        self.metrics = ClusterMetrics(registry)
        n = min(s.actors or len(bindings), len(bindings))
        shards = [[b for i, b in enumerate(bindings) if i % n == k] for k in range(n)]
        floors = self._floors(bindings) if self.fresh else {}
        host = ray.remote(AgentHost)
        strategy = "SPREAD" if s.placement == "spread" else "DEFAULT"
        for k, shard in enumerate(shards):
            name = f"{self.client_id}/{k}"

            def create(name: str = name, shard: list[AgentBinding] = shard) -> Any:
                return host.options(
                    name=self._ray_name(name), namespace=s.namespace,
                    max_restarts=s.max_restarts, max_task_retries=0,
                    max_concurrency=len(shard) + 1, num_cpus=s.num_cpus,
                    scheduling_strategy=strategy,
                ).remote({b.name: b.frame_schema().expected_width for b in shard},
                         self.config, self.state, fresh=self.fresh,
                         floors={b.name: floors.get(b.name, 0) for b in shard},
                         log_level=self.log.level, log_format=self.log.format,
                         torch_threads=self.torch_threads)

            try:
                handle = create()
            except Exception as e:
                raise ClusterError("cannot create the actor", actor=name,
                                   error=repr(e)[:500]) from None
            self._create[name] = create
            self.actors[name] = handle
            for b in shard:
                self.placement[b.name] = name
        log.info("cluster_started", address=s.address, actors=len(shards),
                 placement=self.placement, state_dir=None if self.state is None
                 else self.state.dir, nodes=len(ray.nodes()))  # type: ignore[no-untyped-call]

    def _ray_name(self, name: str) -> str:
        """Actor ``name``'s name in Ray: ``name`` itself, then ``name~k`` for its
        k-th replacement (Ray keeps a dead actor's name taken)."""
        k = self.replacements.get(name, 0)
        return name if k == 0 else f"{name}~{k}"

    def replace(self, name: str, dead: Any) -> Any:
        """The actor in place of ``dead``, actor ``name`` that Ray will not restart
        again: a new one with the same arguments (its agents resume from their
        snapshots), created by the first of its workers to ask; the others get
        it. Not before 2**k seconds (k: replacements so far, up to 60) since the
        last one; until then, and when it cannot be created, ``dead``."""
        with self._replace_lock:
            current = self.actors.get(name)
            if current is not dead or name not in self._create:
                return current if current is not None else dead
            k = self.replacements.get(name, 0)
            if time.monotonic() - self._replaced_at.get(name, -1e9) < min(2.0 ** k, 60.0):
                return dead
            self._replaced_at[name] = time.monotonic()
            self.replacements[name] = k + 1  # (also names the new actor)
            try:
                handle = self._create[name]()
            except Exception as e:  # (Ray unreachable, no room): next time
                self.replacements[name] = k
                log.error("actor_replace_failed", actor=name, error=repr(e)[:500])
                return dead
            self.actors[name] = handle
            if self.metrics is not None:
                self.metrics.replaced.labels(name).inc()
            log.warning("actor_replaced", actor=name, ray_name=self._ray_name(name),
                        replacements=k + 1,
                        agents=sorted(a for a, n in self.placement.items() if n == name))
            return handle

    def _floors(self, bindings: list[AgentBinding]) -> dict[str, int]:
        """Per agent, the highest sequence number of its snapshots before this
        (``--fresh``) run."""
        st = self.state
        if st is None:
            return {}
        out = {}
        for b in bindings:
            infos = agent_store(st.dir, b.name, storage_options=st.storage_options or None
                                ).snapshots()
            out[b.name] = max((i.seq for i in infos), default=0)
        return out

    def worker(self, name: str, config: AgentConfig, *, queue_size: int, policy: Policy,
               width: int | None, on_results: Callable[[list[Result]], None],
               on_evolution: Callable[[dict[str, Any]], None] | None = None) -> ActorWorker:
        """The daemon's worker for agent ``name`` (the signature of
        :class:`AgentWorker`: the daemon builds either)."""
        if self.metrics is None or name not in self.placement:
            raise ClusterError("the cluster is not started for this agent", agent=name)
        actor = self.placement[name]
        w = ActorWorker(name, config, queue_size=queue_size, policy=policy, width=width,
                        on_results=on_results, on_evolution=on_evolution,
                        actor=self.actors[actor], actor_name=actor, metrics=self.metrics,
                        replay_frames=self.settings.replay_frames,
                        snapshots=self.state is not None, replace=self.replace)
        self.workers[name] = w
        return w

    def bind(self, worker: AgentWorker) -> int | None:
        """Wait for the actor of ``worker``'s agent (started, agent resumed); the
        agent's width when known (blocking: call it off the event loop)."""
        assert isinstance(worker, ActorWorker)
        info = worker.bind()
        return None if info["width"] is None else int(info["width"])

    def snapshot(self, worker: AgentWorker) -> Future[Any]:
        """The ``checkpoint`` command for ``worker``'s agent (:meth:`ActorWorker.snapshot`)."""
        assert isinstance(worker, ActorWorker)
        return worker.snapshot()

    def close(self) -> None:
        """End the actors (after the daemon's drain and final snapshots), and the
        local Ray if this started it."""
        import ray

        if not ray.is_initialized():
            return
        for handle in self.actors.values():
            try:
                ray.kill(handle, no_restart=True)
            except Exception as e:  # already gone
                log.debug("actor_kill_failed", error=repr(e)[:200])
        self.actors.clear()
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
