"""The asyncio daemon: MQTT in, agents on worker threads, MQTT out.

One event loop, no computation on it: it decodes and validates payloads,
routes them to each agent's bounded queue, publishes results, dead letters,
status and command replies. Background tasks are named coroutines in one
``asyncio.TaskGroup`` per connection; the connection is retried forever with
exponential backoff and jitter. Each agent resumes from its newest intact
snapshot at start and is checkpointed on a cadence (a copy taken by its
worker between frames, written off the loop). Shutdown order: stop intake,
drain the queues (within a timeout), final checkpoint, publish offline
status, disconnect. With a cluster (:mod:`lillith.runtime.cluster`) each
agent lives in a Ray actor, which resumes and snapshots it; its worker in the
daemon keeps the queue and feeds the actor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import structlog

from lillith.agents.agent import Agent
from lillith.agents.config import AgentConfig
from lillith.errors import ConfigError
from lillith.runtime import homeassistant as ha
from lillith.runtime.checkpoint import Checkpointer
from lillith.runtime.commands import CommandLimits, echo_fields, parse_command
from lillith.runtime.config import AgentBinding, HomeAssistantSettings, StateSettings
from lillith.runtime.evolution import log_evolution, surgery_command
from lillith.runtime.hosted import HostedAgent
from lillith.runtime.metrics import DaemonMetrics
from lillith.runtime.resume import agent_store, resume
from lillith.runtime.topic_agents import TopicAgents, topic_agent_binding
from lillith.runtime.worker import Result
from lillith.sensors.codec import (
    Frame,
    RejectError,
    decode,
    excerpt,
)
from lillith.sensors.mqtt import (
    Incoming,
    LastWill,
    Link,
    MqttError,
    MqttSettings,
    open_link,
    plaintext_credentials,
    topic_matches,
)

if TYPE_CHECKING:  # (no import of Ray without a cluster)
    from lillith.runtime.cluster import RayCluster

log = structlog.get_logger(component="daemon")
ROUTE_CACHE = 65_536  # topics remembered by the intake's router
ROUTE_CACHE_BYTES = 4 << 20  # ... and their characters, at most
TOPIC_EXCERPT = 512  # characters of a topic quoted in a dead letter
_MISS = object()


class Daemon:
    """Hosts agents bound to MQTT topic filters."""

    def __init__(self, mqtt: MqttSettings, bindings: list[AgentBinding], config: AgentConfig,
                 *, drain_timeout_s: float = 10.0, status_every_s: float = 10.0,
                 reject_log_window_s: float = 10.0, metrics_port: int | None = None,
                 lag_probe_s: float = 0.1, state: StateSettings | None = None,
                 fresh: bool = False, commands: CommandLimits | None = None,
                 max_frames: int | None = None, metrics_addr: str = "127.0.0.1",
                 summary_every_s: float = 10.0,
                 homeassistant: HomeAssistantSettings | None = None,
                 cluster: RayCluster | None = None) -> None:
        """``max_frames``: stop (as SIGTERM does) once this many frames are
        processed, all agents together; ``metrics_addr``: the address the
        metrics endpoint binds; ``summary_every_s``: period of the
        ``frames_processed`` log line per agent (0: none); ``homeassistant``:
        Home Assistant discovery (:mod:`lillith.runtime.homeassistant`).
        Bindings with ``agent_per_topic`` start no agent: one is created for
        each topic their filters receive (:mod:`lillith.runtime.topic_agents`).
        ``cluster``: the agents live in its Ray actors instead of worker threads
        (:mod:`lillith.runtime.cluster`; not with ``agent_per_topic``)."""
        self.mqtt = mqtt
        self.cluster = cluster  # agents in Ray actors (lillith.runtime.cluster), else threads
        self.commands = commands or CommandLimits()
        self.bindings = bindings
        self.config = config
        self.drain_timeout_s = drain_timeout_s
        self.status_every_s = status_every_s
        self.reject_log_window_s = reject_log_window_s
        self.agents: list[HostedAgent] = []
        self._routes: dict[str, tuple[HostedAgent, bool] | None] = {}
        self._route_chars = 0
        self._results: asyncio.Queue[Result] = asyncio.Queue()
        self._evolutions: asyncio.Queue[tuple[HostedAgent, dict[str, Any]]] = asyncio.Queue()
        self.metrics = DaemonMetrics()
        self.metrics_port = metrics_port
        self.lag_probe_s = lag_probe_s
        self.max_lag_s = 0.0
        self.state = state
        self.fresh = fresh
        self._finalized = False
        self.max_frames = max_frames
        self.metrics_addr = metrics_addr
        self.summary_every_s = summary_every_s
        self.homeassistant = homeassistant or HomeAssistantSettings()
        self._stop: asyncio.Event | None = None
        self._by_name: dict[str, HostedAgent] = {}
        self.topic_agents = TopicAgents([b for b in bindings if b.agent_per_topic])
        self.discovery = (ha.Discovery(self.homeassistant, mqtt.client_id, mqtt.qos)
                          if self.homeassistant.enabled else None)

    # ------------------------------------------------------------------ lifecycle
    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, reconnecting forever; then shut down in order."""
        self._stop = stop
        if self.metrics_port is not None:  # first: a port in use fails before any work
            try:
                self.metrics.serve(self.metrics_port, self.metrics_addr)
            except OSError as e:
                raise ConfigError("cannot serve metrics on this address and port",
                                  port=self.metrics_port, addr=self.metrics_addr,
                                  error=e.strerror or str(e)) from None
        plain = plaintext_credentials(self.mqtt)
        if plain:
            log.warning("mqtt_plaintext_credentials", host=self.mqtt.host, port=self.mqtt.port,
                        detail="the password goes over the network unencrypted; set tls = "
                               "true (or tls_ca), or plaintext_credentials = \"refuse\"")
        if self.cluster is not None:  # (off the main thread: Ray then installs no SIGTERM
            # handler over the daemon's, which drains and snapshots)
            await asyncio.to_thread(self.cluster.start, self.bindings, self.metrics.registry)
        self.agents = []
        for b in self.bindings:
            if not b.agent_per_topic:
                await self._add_agent(b)
        log.info("daemon_started", metrics_port=self.metrics_port,
                 metrics_addr=self.metrics_addr if self.metrics_port is not None else None,
                 per_topic=[b.name for b in self.topic_agents.bindings],
                 agents=[a.binding.name for a in self.agents],
                 broker=f"{self.mqtt.host}:{self.mqtt.port}")
        backoff = self.mqtt.reconnect_min_s
        while not stop.is_set():
            connected = False
            try:
                # the broker publishes this if the connection ends without a clean
                # DISCONNECT: the process died, or left the link by an exception
                will = LastWill(f"lillith/{self.bindings[0].name}/status",
                                json.dumps({"state": "offline", "clean": False}).encode())
                async with open_link(self.mqtt, will) as link:
                    connected = True
                    backoff = self.mqtt.reconnect_min_s
                    log.info("broker_connected", host=self.mqtt.host, port=self.mqtt.port,
                             client=type(link).__name__)
                    await self._serve(link, stop)
                    return
            except (MqttError, ExceptionGroup) as e:
                errors: list[BaseException] = [e]
                if isinstance(e, ExceptionGroup):  # raised inside the task group
                    lost = e.subgroup(MqttError)
                    if lost is None or lost.exceptions != e.exceptions:
                        raise
                    errors = list(lost.exceptions)
                if stop.is_set():
                    break
                delay = backoff * (0.5 + random.random())
                log.warning("broker_connection_lost" if connected else "broker_unreachable",
                            error="; ".join(str(x) for x in errors),
                            error_type=type(errors[0]).__name__, retry_in_s=round(delay, 2))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                backoff = min(backoff * 2, self.mqtt.reconnect_max_s)
        # stopped while disconnected: nothing to publish, but save what was learned
        self._stop_workers()
        deadline = time.monotonic() + self.drain_timeout_s
        for a in self.agents:
            while not a.worker.join(0) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        await self._final_checkpoints()

    async def _add_agent(self, b: AgentBinding) -> HostedAgent:
        """Create, resume and start the agent of binding ``b``."""
        a = HostedAgent(b, self.config, self._results, asyncio.get_running_loop(),
                          self._evolutions, self.metrics, self.cluster)
        await self._resume(a)
        a.worker.start()
        self.agents.append(a)
        self._by_name[b.name] = a
        self.metrics.agents.set(len(self.agents))
        return a

    async def _announce(self, link: Link, a: HostedAgent) -> None:
        """An agent's online status, subscriptions and discovery messages."""
        await self._publish_status(link, a, "online")
        if not a.binding.agent_per_topic:
            for t in a.binding.topics:
                await link.subscribe(t)
        await link.subscribe(f"{a.prefix}/cmd")
        if self.discovery is not None:
            await self.discovery.announce(link, a.binding.name)

    async def _topic_agent(self, link: Link, msg: Incoming) -> HostedAgent | None:
        """The agent of a topic of an ``agent_per_topic`` binding, created at its
        first frame (None: not such a topic, or over ``max_topic_agents``)."""
        b = self.topic_agents.binding_of(msg.topic)
        if b is None:
            return None
        name = topic_agent_binding(b, msg.topic).name
        a = self._by_name.get(name)
        if a is not None:
            return a
        if self.topic_agents.count(b) >= b.max_topic_agents:
            return None
        self.topic_agents.added(b, name)
        a = await self._add_agent(topic_agent_binding(b, msg.topic))
        log.info("topic_agent_started", agent=name, topic=msg.topic[:TOPIC_EXCERPT],
                 binding=b.name)
        await self._announce(link, a)
        self._routes.clear()
        self._route_chars = 0
        return a

    async def _resume(self, a: HostedAgent) -> None:
        """Restore the agent from its newest intact snapshot (unless ``fresh``)."""
        if self.cluster is not None:  # its actor resumes it, and snapshots it
            width = await asyncio.to_thread(self.cluster.bind, a.worker)
            if width is not None:
                a.schema = replace(a.schema, width=width)
            return
        if self.state is None:
            return
        st = self.state
        name = a.binding.name
        store = agent_store(st.dir, name, keep_last=st.keep_last, keep_every=st.keep_every,
                            storage_options=st.storage_options or None)
        a.checkpointer = Checkpointer(store, agent=name, every_frames=st.checkpoint_every_frames,
                                      every_seconds=st.checkpoint_every_seconds,
                                      retry_min_s=st.retry_min_s, retry_max_s=st.retry_max_s)
        agent = await asyncio.to_thread(resume, store, self.config, name=name,
                                        n_channels=a.worker.width, fresh=self.fresh, log=log)
        if agent is None:
            return
        a.worker.agent = agent
        a.worker.width = agent.n_channels
        a.schema = replace(a.schema, width=agent.n_channels)
        a.checkpointer.mark(agent.step)

    async def _checkpoint(self, a: HostedAgent, reason: str) -> None:
        """Copy the state on the worker (between frames), write it off the loop.

        Never raises: a state that cannot be copied counts as a failed
        snapshot (logged, retried with backoff) like one that cannot be written.
        """
        cp = a.checkpointer
        if cp is None or a.worker.agent is None:
            return
        fut = a.worker.call(lambda ag: None if ag is None else (ag.step, ag.get_state()))
        try:
            got = await asyncio.wrap_future(fut)
        except Exception as e:
            ag = a.worker.agent
            cp.failed(-1 if ag is None else ag.step, reason, "the agent's state could not be "
                      "copied", detail=repr(e)[:500])
            return
        if got is not None:
            await cp.write(got[1], got[0], reason=reason)

    async def _checkpoint_loop(self) -> None:
        """Snapshot each agent when its cadence (frames or seconds) says so."""
        while True:
            await asyncio.sleep(0.05)
            for a in self.agents:
                cp, ag = a.checkpointer, a.worker.agent
                if cp is not None and ag is not None and cp.due(ag.step):
                    await self._checkpoint(a, "cadence")

    async def _evolution_loop(self) -> None:
        """Log the evolution rounds the workers ran (at the steps they fell due) and
        mark the agents' state changed for the next snapshot."""
        while True:
            a, report = await self._evolutions.get()
            try:
                self._after_evolution(a, report, "schedule")
            except Exception as e:  # a report that cannot be logged must not stop the daemon
                log.error("evolution_report_failed", agent=a.binding.name, error=repr(e)[:500])

    def _after_evolution(self, a: HostedAgent, report: dict[str, Any], reason: str) -> None:
        self._touch(a)
        log_evolution(a.binding.name, report, reason)

    async def _evolve_now(self, a: HostedAgent) -> dict[str, Any]:
        """The ``evolve`` command: one round at once, on the worker between frames."""
        def act(ag: Agent | None) -> dict[str, Any]:
            if ag is None:
                raise ValueError("the agent has seen no frame yet")
            return ag.evolve()

        report: dict[str, Any] = await asyncio.wrap_future(a.worker.call(act))
        self._after_evolution(a, report, "command")
        return report

    async def _final_checkpoints(self) -> None:
        """After the drain: the workers have exited, the state is still."""
        if self._finalized:
            return
        self._finalized = True
        for a in self.agents:
            cp, ag = a.checkpointer, a.worker.agent
            if cp is None or ag is None:
                continue
            await cp.wait()
            if not a.worker.join(0):
                log.error("final_snapshot_skipped", agent=a.binding.name,
                          reason="worker still busy after the drain timeout")
                continue
            try:
                state = await asyncio.to_thread(ag.get_state)
            except Exception as e:
                cp.failed(ag.step, "shutdown", "the agent's state could not be copied",
                          detail=repr(e)[:500])
                continue
            await cp.write(state, ag.step, reason="shutdown")

    async def _serve(self, link: Link, stop: asyncio.Event) -> None:
        for a in self.agents:
            await self._announce(link, a)
        for b in self.topic_agents.bindings:
            for t in b.topics:
                await link.subscribe(t)
        if self.discovery is not None:  # our retained entities: clear those of gone agents
            await link.subscribe(self.discovery.subscription)
        async with asyncio.TaskGroup() as tg:
            intake = tg.create_task(self._intake(link, stop), name="intake")
            publisher = tg.create_task(self._publisher(link), name="publisher")
            status = tg.create_task(self._status_loop(link, stop), name="status")
            lag = tg.create_task(self._lag_probe(), name="loop-lag")
            ckpt = tg.create_task(self._checkpoint_loop(), name="checkpoint")
            evo = tg.create_task(self._evolution_loop(), name="evolution")
            summary = tg.create_task(self._summary_loop(), name="summary")
            ticks = [tg.create_task(self._tick_loop(a, stop), name=f"assemble-{a.binding.name}")
                     for a in self.agents if a.assembler is not None]
            await stop.wait()
            log.info("intake_stopping", pending=link.pending())
            # (unread messages are unacknowledged: the broker redelivers them)
            intake.cancel()
            for tick in ticks:
                tick.cancel()
            status.cancel()
            lag.cancel()
            ckpt.cancel()
            evo.cancel()
            summary.cancel()
            await self._drain()
            while not self._evolutions.empty():  # rounds run during the drain
                a, report = self._evolutions.get_nowait()
                self._after_evolution(a, report, "schedule")
            publisher.cancel()
        await self._final_checkpoints()
        for a in self.agents:
            await self._publish_status(link, a, "offline")
        # (only now: the will, {"state": "offline", "clean": false}, is kept for
        # a link left by an exception, and the clean DISCONNECT discards it)
        log.info("daemon_stopped", **{a.binding.name: a.frames_out for a in self.agents})

    async def _drain(self) -> None:
        """Let the workers finish their queues, then wait for the last results."""
        self._stop_workers()
        deadline = time.monotonic() + self.drain_timeout_s
        for a in self.agents:
            while not a.worker.join(0) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        with contextlib.suppress(TimeoutError):  # every result published
            await asyncio.wait_for(self._results.join(),
                                   max(deadline - time.monotonic(), 0.01))
        log.info("queues_drained", left=sum(a.worker.depth for a in self.agents))

    def _stop_workers(self) -> None:
        for a in self.agents:
            a.worker.stop()

    def reload(self, bindings: list[AgentBinding]) -> None:
        """Apply the parts of a new configuration that can change live.

        Per agent (matched by name): value bounds, payload size, time, width
        and nesting limits, output decimation and the queue policy. Topics, channels, widths and
        the agent's model need a restart; a change to them is logged and
        ignored.
        """
        by_name = {b.name: b for b in bindings}
        for a in self.agents:
            parent = self.topic_agents.parent_of(a.binding.name)  # agent_per_topic's
            new = by_name.get(parent or a.binding.name)
            if new is None:
                log.warning("config_reload_agent_missing", agent=a.binding.name)
                continue
            old = (self.topic_agents.template(parent) if parent else None) or a.binding
            fixed = ("topics", "channels", "width", "queue_size", "agent_per_topic")
            changed = [f for f in fixed if getattr(new, f) != getattr(old, f)]
            if changed:
                log.warning("config_reload_needs_restart", agent=a.binding.name, fields=changed)
            a.binding = a.binding.model_copy(update={
                "low": new.low, "high": new.high, "max_bytes": new.max_bytes,
                "max_abs_t": new.max_abs_t, "max_width": new.max_width,
                "max_depth": new.max_depth, "output_every": new.output_every,
                "policy": new.policy})
            a.schema = replace(a.schema, low=new.low, high=new.high, max_bytes=new.max_bytes,
                               max_abs_t=new.max_abs_t, max_width=new.max_width,
                               max_depth=new.max_depth)
            if a.assembler is not None:
                a.channel_schema = replace(a.channel_schema, low=new.low, high=new.high,
                                           max_bytes=new.max_bytes, max_depth=new.max_depth)
            a.worker.policy = new.policy
            log.info("config_reloaded", agent=a.binding.name, output_every=new.output_every,
                     low=new.low, high=new.high, max_bytes=new.max_bytes, policy=new.policy)

    # ------------------------------------------------------------------ tasks
    def _route(self, topic: str) -> tuple[HostedAgent, bool] | None:
        """Which agent a topic is for, and whether it is that agent's command topic.

        Topics repeat, so the answer is cached (the cache is cleared when it
        grows past :data:`ROUTE_CACHE` topics or :data:`ROUTE_CACHE_BYTES`
        characters: distinct long topics cannot hold memory); topics and
        agents are fixed for the daemon's run (a reload cannot change them).
        """
        hit = self._routes.get(topic, _MISS)
        if hit is not _MISS:
            return hit  # type: ignore[return-value]
        target: tuple[HostedAgent, bool] | None = None
        for a in self.agents:
            if topic == f"{a.prefix}/cmd":
                target = (a, True)
                break
            if a.binding.agent_per_topic:
                if topic == a.binding.topics[0]:
                    target = (a, False)
                    break
                continue
            if any(topic_matches(topic, f) for f in a.binding.topics):
                target = (a, False)
                break
        if len(self._routes) >= ROUTE_CACHE or self._route_chars >= ROUTE_CACHE_BYTES:
            self._routes.clear()
            self._route_chars = 0
        self._routes[topic] = target
        self._route_chars += len(topic)
        return target

    async def _intake(self, link: Link, stop: asyncio.Event) -> None:
        route = self._route
        async for msg in link.messages():
            target = route(msg.topic)
            if target is None and self.topic_agents.bindings:
                a = await self._topic_agent(link, msg)
                target = None if a is None else (a, False)
                b = None if a is not None else self.topic_agents.binding_of(msg.topic)
                if b is not None and self.topic_agents.first_refusal(b):
                    log.warning("too_many_topic_agents", binding=b.name,
                                topic=msg.topic[:TOPIC_EXCERPT], limit=b.max_topic_agents,
                                detail="frames of further topics are acknowledged unprocessed "
                                       "(logged once); raise max_topic_agents")
            if target is None:
                if self.discovery is not None and msg.payload:
                    await self.discovery.seen(link, msg.topic, self._hosted())
                link.ack(msg)
            elif target[1]:
                await self._command(link, target[0], msg.payload)
                link.ack(msg)
            elif target[0].assembler is not None:
                await self._accept_channel(link, target[0], msg)
            else:
                await self._accept(link, target[0], msg)
            if stop.is_set():
                return

    async def _reject(self, link: Link, a: HostedAgent, msg: Incoming, e: RejectError
                      ) -> None:
        """Count, log (rate-limited) and dead-letter a rejected payload; it is done with."""
        await self._dead_letter(link, a, msg.topic, msg.payload, e.reason, e.message,
                                "payload_rejected")
        link.ack(msg)  # handled: rejected for good

    async def _dead_letter(self, link: Link, a: HostedAgent, topic: str, payload: bytes,
                           reason: str, detail: str, event: str, **fields: Any) -> None:
        """Count ``reason``, log ``event`` (at most once per window and reason, with
        the count) and publish the dead letter."""
        a.rejects[reason] += 1
        self.metrics.rejects.labels(a.binding.name, reason).inc()
        now = time.monotonic()
        if now - a.last_log.get(reason, -1e9) >= self.reject_log_window_s:
            a.last_log[reason] = now
            log.warning(event, agent=a.binding.name, topic=topic[:TOPIC_EXCERPT],
                        reason=reason, detail=detail[:TOPIC_EXCERPT], count=a.rejects[reason],
                        **fields)
        dead = {"topic": topic[:TOPIC_EXCERPT], "reason": reason, "detail": detail,
                "excerpt": excerpt(payload)}
        await link.publish(f"{a.prefix}/deadletter", json.dumps(dead).encode(), qos=0)

    async def _accept_channel(self, link: Link, a: HostedAgent, msg: Incoming) -> None:
        """One channel's value (per-channel topics): validated, held for the next tick.

        Acknowledged at once: with last-value hold a value is used by the ticks
        that follow it until a newer one replaces it, so "processed" means held.
        """
        assert a.assembler is not None
        channel = msg.topic.rpartition("/")[2]
        try:
            if channel not in a.assembler.index:
                raise RejectError("unknown_channel", "the topic's last level is not a channel",
                                  channel=channel, channels=list(a.assembler.channels)[:8])
            frame = decode(msg.payload, a.channel_schema, content_type=msg.content_type)
        except RejectError as e:
            await self._reject(link, a, msg, e)
            return
        a.assembler.update(channel, float(frame.values[0]), time.monotonic())
        link.ack(msg)

    async def _accept(self, link: Link, a: HostedAgent, msg: Incoming) -> None:
        try:
            frame = decode(msg.payload, a.schema, content_type=msg.content_type)
        except RejectError as e:
            await self._reject(link, a, msg, e)
            return
        if msg.topic != a.last_topic:
            self._topic_changed(a, msg.topic)
        if a.schema.expected_width is None:  # the first valid frame fixes the width
            a.schema = replace(a.schema, width=int(frame.values.size))
            log.info("width_fixed", agent=a.binding.name, width=int(frame.values.size),
                     topic=msg.topic[:TOPIC_EXCERPT])
        seq = a.seq + 1
        taken, lost = a.worker.offer(seq, frame)
        if not taken:  # backpressure: wait for room (and stop reading meanwhile)
            lost = await a.worker.put(seq, frame)
        # counted once queued: an intake cancelled while it waits for room (at
        # shutdown) leaves the frame unacknowledged, for the broker to redeliver,
        # and uncounted (no await from here on: the result cannot come first)
        a.seq = seq
        a.frames_in += 1
        a.frames_in_metric.inc()
        a.unacked[seq] = msg
        if lost is not None:  # drop_oldest: the dropped frame is done with
            link.ack(a.unacked.pop(lost))

    def _topic_changed(self, a: HostedAgent, topic: str) -> None:
        """Remember the frame's topic; warn once when an agent's filter brings
        frames from a second topic (they are merged into one stream)."""
        a.last_topic = topic
        if a.first_topic is None:
            a.first_topic = topic
        elif not a.several_topics and topic != a.first_topic:
            a.several_topics = True
            log.warning("several_topics_one_agent", agent=a.binding.name,
                        topics=[a.first_topic[:TOPIC_EXCERPT], topic[:TOPIC_EXCERPT]],
                        filters=a.binding.topics,
                        detail="frames of several topics are merged into this agent's one "
                               "stream; if each topic is a separate sensor, set "
                               "agent_per_topic = true (an agent per topic)")

    def _hosted(self) -> Callable[[str], bool]:
        """Whether an agent (by its Home Assistant slug) is one this daemon hosts
        or may create (``agent_per_topic``): for the removal of gone entities."""
        names = {ha.slug(a.binding.name) for a in self.agents}
        parents = tuple(ha.slug(b.name + ".") for b in self.topic_agents.bindings)
        return lambda slug: slug in names or (bool(parents) and slug.startswith(parents))

    async def _tick_loop(self, a: HostedAgent, stop: asyncio.Event) -> None:
        """Assemble a frame of the latest channel values every ``tick_s`` seconds.

        Ticks keep an absolute schedule; ticks missed while the loop was late
        are skipped, not caught up. A frame the queue cannot take under
        backpressure is skipped too (counted in ``ticks_skipped``): the next
        tick carries the newer values.
        """
        assert a.assembler is not None and a.binding.tick_s is not None
        loop = asyncio.get_running_loop()
        tick = a.binding.tick_s
        due = loop.time() + tick
        while not stop.is_set():
            await asyncio.sleep(max(due - loop.time(), 0.0))
            now = loop.time()
            due += tick * max(1, int((now - due) // tick) + 1)
            got = a.assembler.frame(time.monotonic())
            if got is None:
                continue
            taken, lost = a.worker.offer(a.seq + 1, Frame(got.values, time.time()))
            if not taken:
                a.ticks_skipped += 1
                continue
            a.seq += 1
            a.frames_in += 1
            a.frames_in_metric.inc()
            a.assembled[a.seq] = got
            if lost is not None:
                a.assembled.pop(lost, None)

    async def _publisher(self, link: Link) -> None:
        by_name = self._by_name  # (grows as agent_per_topic adds agents)
        while True:
            r = await self._results.get()
            try:
                a = by_name[r.agent]
                msg = a.unacked.pop(r.seq, None)
                got = a.assembled.pop(r.seq, None)
                if r.metrics is None:  # processing failed: counted by the worker
                    reason = r.reason or "agent_error"
                    if msg is not None:  # dead-lettered like a rejected payload
                        await self._dead_letter(link, a, msg.topic, msg.payload, reason,
                                                r.error or "", "frame_failed", seq=r.seq)
                        link.ack(msg)
                    else:  # an assembled frame: nothing to dead-letter but the log
                        await self._dead_letter(link, a, f"{a.prefix}/assembled", b"", reason,
                                                r.error or "", "frame_failed", seq=r.seq)
                    continue
                a.frames_out += 1
                name = a.binding.name
                self.metrics.frames_out.labels(name).inc()
                self.metrics.step_latency.labels(name).observe(r.seconds)
                self.metrics.loss.labels(name).set(r.metrics.loss)
                self.metrics.energy.labels(name).set(r.metrics.energy)
                self.metrics.likelihood.labels(name).set(r.metrics.anomaly_likelihood)
                self.metrics.alarm.labels(name).set(int(r.metrics.alarm))
                if r.metrics.alarm_onset:
                    self.metrics.alarms.labels(name, r.metrics.alarm_reason).inc()
                self._observe(a, r.metrics)
                dropped = a.worker.dropped - a.dropped_reported
                if dropped:
                    self.metrics.drops.labels(name).inc(dropped)
                    a.dropped_reported += dropped
                m = r.metrics
                # (an alarm's first and last frames are published whatever output_every says)
                edge = m.alarm != a.alarm_on
                a.alarm_on = m.alarm
                if edge or r.seq % a.binding.output_every == 0:
                    out: dict[str, Any] = {
                        "t": m.t, "seq": r.seq, "anomaly_score": m.anomaly_score,
                        "anomaly_likelihood": m.anomaly_likelihood, "alarm": int(m.alarm),
                        "alarm_reason": m.alarm_reason,
                        "prediction": m.prediction, "loss": m.loss, "bmu": m.bmu,
                        "mode": m.mode, "energy": m.energy, "skipped": m.skipped,
                        # where the frame came from: its topic (assembled frames: the
                        # agent's filters, the channels' topics under them)
                        "topic": msg.topic if msg is not None
                        else ",".join(a.binding.topics)}
                    if a.assembler is not None:  # what was held, and what had gone quiet
                        out["values"] = None if got is None else got.values.tolist()
                        out["stale"] = [] if got is None else list(got.stale)
                    await link.publish(f"{a.prefix}/out", json.dumps(out).encode())
                if msg is not None:
                    link.ack(msg)  # processed and published: the broker may forget it
                if (self.max_frames is not None and self._stop is not None
                        and sum(x.frames_out for x in self.agents) >= self.max_frames):
                    self._stop.set()  # --max-frames: stop as SIGTERM does
            finally:
                self._results.task_done()

    def _observe(self, a: HostedAgent, m: Any) -> None:
        """Fold one result into the agent's summary window and mode gauge."""
        before = a.window.mode
        a.window.observe(m)
        if m.mode != before:
            if before:
                self.metrics.mode.labels(a.binding.name, before).set(0)
            self.metrics.mode.labels(a.binding.name, m.mode).set(1)

    async def _summary_loop(self) -> None:
        """Log ``frames_processed`` per agent every ``summary_every_s`` seconds,
        as the local run does every second."""
        if self.summary_every_s <= 0:
            return
        while True:
            await asyncio.sleep(self.summary_every_s)
            for a in self.agents:
                log.info("frames_processed", agent=a.binding.name, frames_in=a.frames_in,
                         frames_out=a.frames_out, queue_depth=a.worker.depth,
                         dropped=a.worker.dropped, rejects=sum(a.rejects.values()),
                         topic=a.last_topic, **a.window.summary())
                a.window = a.window.next()

    async def _lag_probe(self) -> None:
        """Measure how late the loop wakes a sleeper: the event loop's lag."""
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(self.lag_probe_s)
            lag = max(time.monotonic() - t0 - self.lag_probe_s, 0.0)
            self.max_lag_s = max(self.max_lag_s, lag)
            self.metrics.loop_lag.observe(lag)
            for a in self.agents:
                self.metrics.queue_depth.labels(a.binding.name).set(a.worker.depth)
                if a.checkpointer is not None:
                    self.metrics.export_snapshots(a.binding.name, a.checkpointer)

    async def _status_loop(self, link: Link, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(self.status_every_s)
            for a in self.agents:
                await self._publish_status(link, a, "online")

    async def _publish_status(self, link: Link, a: HostedAgent, state: str) -> None:
        body: dict[str, Any] = {"state": state, "step": a.frames_out, "frames_in": a.frames_in,
                "frames_out": a.frames_out, "max_loop_lag_ms": round(self.max_lag_s * 1e3, 3),
                "queue_depth": a.worker.depth, "dropped": a.worker.dropped,
                "rejects": dict(a.rejects), "errors": a.worker.errors}
        if state == "offline":
            body["clean"] = True
        if a.assembler is not None:
            body["channel_updates"] = a.assembler.updates
            body["ticks_skipped"] = a.ticks_skipped
        await link.publish(f"{a.prefix}/status", json.dumps(body).encode(), retain=True, qos=1,
                           wait=state == "offline")

    async def _command(self, link: Link, a: HostedAgent, payload: bytes) -> None:
        """Validate (size first, then fields: :mod:`lillith.runtime.commands`), run and
        reply; a bad or failing command gets an error reply, never a crash."""
        reply: dict[str, Any] = {}
        try:
            reply.update(echo_fields(payload))  # id and cmd, when they can be read at all
            cmd = parse_command(payload, self.commands)
            reply = {"id": cmd.get("id"), "cmd": cmd["cmd"]}
            reply.update(await self._run_command(a, cmd))
            reply["ok"] = True
        except Exception as e:  # a bad command gets an error reply, never a crash
            reply = {**{k: v for k, v in reply.items() if k in ("id", "cmd")},
                     "ok": False, "error": str(e)[:2000]}
            if isinstance(payload, bytes):
                reply["excerpt"] = excerpt(payload)
            log.warning("command_failed", agent=a.binding.name, error=str(e)[:500],
                        bytes=len(payload))
        await link.publish(f"{a.prefix}/cmd/reply", json.dumps(reply).encode())

    async def _run_command(self, a: HostedAgent, cmd: dict[str, Any]) -> dict[str, Any]:
        name = cmd["cmd"]
        if name == "status":
            return {"frames_in": a.frames_in, "frames_out": a.frames_out,
                    "rejects": dict(a.rejects), "queue_depth": a.worker.depth}
        if name in ("pause", "resume"):
            on = name == "resume"
            await asyncio.wrap_future(a.worker.call(
                lambda ag: ag.set_learning_mode(on) if ag is not None else None))
            self._touch(a)
            return {"learning": on}
        if name == "checkpoint":
            if self.cluster is not None and self.state is not None:
                got: dict[str, Any] = await asyncio.wrap_future(self.cluster.snapshot(a.worker))
                return got
            if a.checkpointer is None:
                raise ValueError("snapshots are not configured")
            await self._checkpoint(a, "command")
            last = a.checkpointer.last
            return {"snapshot": None if last is None else last.name,
                    "step": None if last is None else last.step}
        if name == "mode":
            mode = cmd.get("mode")
            await asyncio.wrap_future(a.worker.call(
                lambda ag: ag.force_mode(mode) if ag is not None else None))
            self._touch(a)
            return {"mode": mode}
        if name == "evolve":
            return {"report": await self._evolve_now(a)}
        if name == "surgery":
            op = await asyncio.wrap_future(a.worker.call(lambda ag: surgery_command(ag, cmd)))
            self._touch(a)
            log.info("tile_surgery", agent=a.binding.name, **op)
            return {"operation": op}
        raise ValueError(f"unknown command {name!r}")

    @staticmethod
    def _touch(a: HostedAgent) -> None:
        if a.checkpointer is not None:
            a.checkpointer.touch()

