"""Prometheus metrics of the daemon (one registry per daemon, served over HTTP)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class DaemonMetrics:
    """Counters, gauges and histograms named ``lillith_*``, labelled by agent."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames_in = Counter("lillith_frames_in", "Valid frames accepted", ["agent"],
                                 registry=r)
        self.frames_out = Counter("lillith_frames_out", "Frames processed", ["agent"],
                                  registry=r)
        self.rejects = Counter("lillith_rejects", "Payloads rejected", ["agent", "reason"],
                               registry=r)
        self.drops = Counter("lillith_drops", "Frames dropped (drop_oldest)", ["agent"],
                             registry=r)
        self.queue_depth = Gauge("lillith_queue_depth", "Frames waiting", ["agent"],
                                 registry=r)
        self.loop_lag = Histogram(
            "lillith_event_loop_lag_seconds", "Event-loop scheduling lag",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0),
            registry=r)
        self.step_latency = Histogram(
            "lillith_step_seconds", "Agent processing time per frame", ["agent"],
            buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1),
            registry=r)
        self.loss = Gauge("lillith_loss", "Latest prediction loss", ["agent"], registry=r)
        self.energy = Gauge("lillith_energy", "BioSystem energy", ["agent"], registry=r)
        self.likelihood = Gauge("lillith_anomaly_likelihood", "Latest anomaly likelihood",
                                ["agent"], registry=r)
        self.alarms = Counter("lillith_alarms", "Alarm onsets, by what raised them",
                              ["agent", "reason"], registry=r)
        self.alarm = Gauge("lillith_alarm", "1 while the agent's alarm is on", ["agent"],
                           registry=r)
        self.mode = Gauge("lillith_mode", "1 for the agent's current propagation mode",
                          ["agent", "mode"], registry=r)
        self.snapshot_time = Gauge(
            "lillith_snapshot_last_success_timestamp_seconds",
            "Wall-clock time of the last snapshot written (age: time() - this)", ["agent"],
            registry=r)
        self.snapshot_seconds = Histogram(
            "lillith_snapshot_seconds", "Time to write a snapshot", ["agent"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0), registry=r)
        self.snapshot_failures = Counter("lillith_snapshot_failures", "Snapshots that failed",
                                         ["agent"], registry=r)
        self.agents = Gauge("lillith_agents", "Agents the daemon hosts", registry=r)
        self._seen: dict[str, tuple[int, int]] = {}  # agent -> (written, failures) exported

    def export_snapshots(self, agent: str, cp: Any) -> None:
        """A :class:`~lillith.runtime.checkpoint.Checkpointer`'s news as metrics:
        the last success's time and duration, the failures since the last call."""
        seen = self._seen.get(agent, (0, 0))
        if cp.written != seen[0] and cp.last_written_at is not None:
            self.snapshot_time.labels(agent).set(cp.last_written_at)
            self.snapshot_seconds.labels(agent).observe(cp.last_seconds)
        if cp.failures > seen[1]:
            self.snapshot_failures.labels(agent).inc(cp.failures - seen[1])
        self._seen[agent] = (cp.written, cp.failures)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` on ``addr:port`` (a background thread)."""
        start_http_server(port, addr=addr, registry=self.registry)
