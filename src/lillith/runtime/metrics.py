"""Prometheus metrics of the daemon (one registry per daemon, served over HTTP)."""

from __future__ import annotations

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

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` on ``addr:port`` (a background thread)."""
        start_http_server(port, addr=addr, registry=self.registry)
