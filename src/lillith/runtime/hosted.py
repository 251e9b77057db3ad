"""An agent as the daemon hosts it: worker, acknowledgements, counters (:class:`HostedAgent`)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING, Any

from lillith.agents.config import AgentConfig
from lillith.runtime.checkpoint import Checkpointer
from lillith.runtime.config import AgentBinding
from lillith.runtime.metrics import DaemonMetrics
from lillith.runtime.summary import Window
from lillith.runtime.worker import AgentWorker, Result
from lillith.sensors.assemble import Assembled, Assembler
from lillith.sensors.codec import Schema
from lillith.sensors.mqtt import Incoming

if TYPE_CHECKING:  # (no import of Ray without a cluster)
    from lillith.runtime.cluster import RayCluster


class HostedAgent:
    """One agent as the daemon hosts it: its binding and frame schema, its worker
    (a thread, or with a cluster the feeder of its Ray actor), and the daemon's
    books on it: sequence numbers, unacknowledged messages (acknowledged once
    their result is published), counters, the per-channel assembler, the
    summary window. Touched by the event loop only; the worker calls back
    through ``loop.call_soon_threadsafe``."""

    def __init__(self, b: AgentBinding, config: AgentConfig, results: asyncio.Queue[Result],
                 loop: asyncio.AbstractEventLoop,
                 evolutions: asyncio.Queue[tuple[HostedAgent, dict[str, Any]]],
                 metrics: DaemonMetrics, cluster: RayCluster | None = None) -> None:
        self.binding = b
        self.schema = b.frame_schema()
        def put_all(rs: list[Result]) -> None:
            for r in rs:
                results.put_nowait(r)

        def deliver(rs: list[Result]) -> None:  # runs on the worker thread
            loop.call_soon_threadsafe(put_all, rs)  # one wake-up of the loop per run

        def evolved(report: dict[str, Any]) -> None:  # runs on the worker thread
            loop.call_soon_threadsafe(evolutions.put_nowait, (self, report))

        self.worker = (AgentWorker if cluster is None else cluster.worker)(
            b.name, config, queue_size=b.queue_size, policy=b.policy,
            width=self.schema.expected_width, on_results=deliver,
            on_evolution=evolved)
        self.seq = 0
        self.frames_in = 0
        self.frames_out = 0
        self.dropped_reported = 0
        self.alarm_on = False  # the last published frame's alarm (edges are always published)
        self.unacked: dict[int, Incoming] = {}  # seq -> message, acked once processed
        self.checkpointer: Checkpointer | None = None
        self.rejects: Counter[str] = Counter()
        self.last_log: dict[str, float] = {}
        self.frames_in_metric = metrics.frames_in.labels(b.name)  # bound once: hot path
        self.assembler: Assembler | None = None
        self.assembled: dict[int, Assembled] = {}  # seq -> its assembled frame, until output
        self.ticks_skipped = 0
        self.first_topic: str | None = None  # the first topic a frame came from ...
        self.several_topics = False  # ... and whether another has since (warned once)
        self.last_topic: str | None = None
        self.window = Window()  # what the next summary log line reports
        if b.tick_s is not None and b.channels:
            self.assembler = Assembler(b.channels, stale_s=b.stale_s or 3 * b.tick_s)
            self.channel_schema = Schema(width=1, low=b.low, high=b.high,
                                         max_bytes=b.max_bytes, max_depth=b.max_depth)

    @property
    def prefix(self) -> str:
        return f"lillith/{self.binding.name}"
