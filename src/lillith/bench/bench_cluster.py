"""Benchmark: the daemon with its agents in 1, 2 and 4 Ray actors against the
single-process daemon, on the same frames.

Workload: 8 agents (the default agent, 3 channels, one topic each) and
``frames`` frames in all (20,000; ``--quick`` 8,000), interleaved over the
agents and queued by a private mosquitto for the daemon's persistent session
before it starts: a backlog, which the daemon drains as fast as it can. Each
run starts the daemon (with a cluster, its actors are created and their agents
bound before it connects) and times its published outputs: frames/s is the
steady rate between the 10th and the 90th percent of them (the first frames
also load the numba kernels). Every output payload is compared, per agent and
bit for bit, with the single-process run's (``identical``); ``lost`` counts frames that never
came out. Ray: a local cluster, ``ray.init(num_cpus=2, include_dashboard=False)``,
each actor reserving ``2 / actors`` CPUs; the agents are sharded round robin.
``overhead_us_per_frame`` is the wall time per frame beyond the single-process
daemon's (transfer, serialisation, the actors' processes competing for the
same cores); the CPU per frame (between the 10% and 90% marks) is measured in
the daemon's process (``daemon_cpu_us_per_frame``: intake, publishing, the
dispatch; the single process's also runs the agents) and in the actors'
(``actors_cpu_us_per_frame``), and ``cpu_overhead_us_per_frame`` is their sum
beyond the single process's: the figures of the scaling estimate in
docs/operations.md. Latency: the same frames published at a steady
``LATENCY_RATE`` frames/s (all agents together, well below what either set-up
processes) to the single-process daemon and to ``LATENCY_ACTORS`` actors, each
output's arrival minus its frame's publication, both in this process
(``latency``: percentiles in ms over the frames published from 2 s after the
first output on; the ones before waited for the start). The tests
(``tests/test_cluster.py``) run the same harness.

Run: ``lillith bench cluster --json [--quick]``, or
``python -m lillith.bench.bench_cluster [--quick]``.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from lillith.agents.config import AgentConfig
from lillith.runtime.config import AgentBinding, ClusterSettings, StateSettings
from lillith.runtime.daemon import Daemon
from lillith.sensors.mqtt import MqttSettings

AGENTS = 8
CHANNELS = 3
QUEUE = 1024  # each agent's bounded queue (the default)
ACTORS = (1, 2, 4)
CPUS = 2
LATENCY_RATE = 400.0  # frames/s, all agents together
LATENCY_ACTORS = 2


def broker() -> Any:
    """The private-mosquitto helpers (``local_broker``: in the package, or in
    ``bench/`` of an older checkout)."""
    try:
        return importlib.import_module("lillith.bench.local_broker")
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
        return importlib.import_module("local_broker")


@dataclass(frozen=True)
class Workload:
    """``frames`` frames over ``agents`` agents, named and routed by ``uid``."""

    uid: str
    agents: int = AGENTS
    frames: int = 20_000

    def name(self, k: int) -> str:
        return f"c{self.uid}-{k}"

    def topic(self, k: int) -> str:
        return f"bench/{self.uid}/{k}"

    def per_agent(self, k: int) -> int:
        return self.frames // self.agents + (k < self.frames % self.agents)

    def payload(self, k: int, i: int) -> bytes:
        """Frame ``i`` of agent ``k``: a daily-ish wave, a slower one, a spike now
        and then (deterministic: the runs compare their outputs)."""
        x = [math.sin(i / 13.0 + k), math.cos(i / 71.0) * (k + 1),
             (5.0 if i % 997 == 500 else 0.0) + ((i * 7919 + k) % 101) / 101.0]
        return json.dumps({"t": 1.8e9 + i, "values": x}).encode()

    def interleaved(self) -> Iterator[tuple[int, int]]:
        """``(agent k, frame i)`` in publishing order: frame 0 of every agent, then 1, ..."""
        for i in range(max(self.per_agent(k) for k in range(self.agents))):
            for k in range(self.agents):
                if i < self.per_agent(k):
                    yield k, i

    def bindings(self) -> list[AgentBinding]:
        return [AgentBinding(name=self.name(k), topics=[self.topic(k)], width=CHANNELS,
                             queue_size=QUEUE) for k in range(self.agents)]


def register_session(port: int, client_id: str, w: Workload) -> None:
    """Register ``client_id``'s persistent session on the workload's topics (the
    broker keeps what is published for it before the daemon connects)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe(f"bench/{w.uid}/#", qos=1)[1]
    time.sleep(0.3)
    c.loop_stop()
    c.disconnect()


def queue_backlog(port: int, client_id: str, w: Workload) -> None:
    """Register ``client_id``'s persistent session on the workload's topics and
    publish every frame into it (QoS 1), agents interleaved."""
    register_session(port, client_id, w)
    p = broker().publisher(port, "pub")
    infos = []
    for k, i in w.interleaved():
        infos.append(p.publish(w.topic(k), w.payload(k, i), qos=1))
        if len(infos) >= 1000:  # (a thousand in flight at a time)
            for info in infos:
                info.wait_for_publish(120)
            infos = []
    for info in infos:
        info.wait_for_publish(120)
    p.loop_stop()
    p.disconnect()


def publish_paced(port: int, w: Workload, rate: float, sent: dict[str, list[float]]) -> None:
    """Publish the workload (QoS 1, agents interleaved) at ``rate`` frames/s,
    recording in ``sent[agent]`` the monotonic time of each of its frames."""
    p = broker().publisher(port, "pub")
    t0 = time.monotonic()
    for n, (k, i) in enumerate(w.interleaved()):
        wait = t0 + n / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        sent[w.name(k)].append(time.monotonic())
        p.publish(w.topic(k), w.payload(k, i), qos=1)
    time.sleep(0.5)
    p.loop_stop()
    p.disconnect()


class Outputs:
    """Every ``lillith/<agent>/out`` payload of the workload's agents, in order,
    and the arrival time of each."""

    def __init__(self, port: int, w: Workload) -> None:
        self.by_agent: dict[str, list[bytes]] = {w.name(k): [] for k in range(w.agents)}
        self.arrivals: dict[str, list[float]] = {name: [] for name in self.by_agent}
        self.count = 0
        self.times: list[float] = []  # arrival of each output
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"out-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe("lillith/+/out", qos=1)
        self.client.loop_start()
        time.sleep(0.2)

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        name = msg.topic.split("/")[1]
        now = time.monotonic()
        with self.lock:
            if name in self.by_agent:
                self.by_agent[name].append(bytes(msg.payload))
                self.arrivals[name].append(now)
                self.count += 1
                self.times.append(now)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Run:
    """What one daemon run published, and how fast."""

    outputs: dict[str, list[bytes]]
    times: list[float]
    cluster: Any = None  # the RayCluster (closed), for the tests
    arrivals: dict[str, list[float]] | None = None  # per agent, each output's arrival
    sent: dict[str, list[float]] | None = None  # per agent, each frame's publication
    daemon_cpu_s: float = 0.0  # CPU of this process between the 10% and 90% marks
    actors_cpu_s: float = 0.0  # ... and of the actors' processes
    marked_frames: int = 0  # outputs between the marks

    @property
    def frames_per_s(self) -> float:
        """The steady rate: outputs between the 10th and the 90th percent of them, over
        the time between (the first frames also pay for loading the numba kernels)."""
        n = len(self.times)
        lo, hi = n // 10, n - 1 - n // 10
        if hi <= lo or self.times[hi] <= self.times[lo]:
            return 0.0
        return (hi - lo) / (self.times[hi] - self.times[lo])

    def cpu_us_per_frame(self) -> tuple[float, float]:
        """CPU per frame (µs) of the daemon's process (intake, publishing, the
        dispatch to the actors or the agents themselves; with the benchmark's
        collector) and of the actors' processes, between the 10% and 90% marks."""
        n = max(self.marked_frames, 1)
        return 1e6 * self.daemon_cpu_s / n, 1e6 * self.actors_cpu_s / n

    def latency_ms(self) -> dict[str, float]:
        """Publication to output (ms; a paced run), percentiles over the frames
        published from 2 s after the first output on (the ones before waited for
        the daemon's start)."""
        import numpy as np

        if self.arrivals is None or self.sent is None or not self.times:
            return {}
        start = min(self.times) + 2.0
        lat: list[float] = []
        for name, outs in self.outputs.items():
            sent, arrived = self.sent[name], self.arrivals[name]
            for payload, at in zip(outs, arrived, strict=True):
                seq = int(json.loads(payload)["seq"])
                if 0 < seq <= len(sent) and sent[seq - 1] >= start:
                    lat.append(1e3 * (at - sent[seq - 1]))
        a = np.asarray(lat)
        if not a.size:
            return {}
        return {"frames": int(a.size), **{f"p{q}_ms": round(float(np.percentile(a, q)), 2)
                                          for q in (50, 90, 99)},
                "max_ms": round(float(a.max()), 2)}

    def lost(self, w: Workload) -> int:
        """Frames whose output never came (each frame's ``seq``, per agent)."""
        missing = 0
        for k in range(w.agents):
            seqs = {json.loads(p)["seq"] for p in self.outputs[w.name(k)]}
            missing += len(set(range(1, w.per_agent(k) + 1)) - seqs)
        return missing


def run_daemon(port: int, w: Workload, state_dir: Path, *, cluster: ClusterSettings | None,
               config: AgentConfig | None = None, checkpoint_every: int | None = None,
               during: Callable[[Outputs, Any], None] | None = None,
               timeout_s: float = 900.0, paced: float | None = None) -> Run:
    """Queue the workload for a new session, run the daemon on it (in a thread of
    this process, agents on worker threads or in Ray actors) until every frame's
    output is published or ``timeout_s``, stop it (drain, final snapshots) and
    return what it published. ``during(outputs, cluster)`` is called every 20 ms
    while it runs (a test kills an actor from there). With ``paced`` (frames/s)
    the frames are published at that rate while the daemon runs, not queued
    before (:meth:`Run.latency_ms`)."""
    from lillith.runtime.cluster import RayCluster

    client_id = f"d{uuid.uuid4().hex[:10]}"
    sent: dict[str, list[float]] = {w.name(k): [] for k in range(w.agents)}
    if paced is None:
        queue_backlog(port, client_id, w)
    else:
        register_session(port, client_id, w)
    config = config or AgentConfig()
    out = Outputs(port, w)
    mqtt_settings = MqttSettings(host="127.0.0.1", port=port, client_id=client_id,
                                 protocol=311, receive_maximum=65535)
    state = StateSettings(dir=str(state_dir), checkpoint_every_frames=checkpoint_every,
                          checkpoint_every_seconds=None)
    rc = None if cluster is None else RayCluster(cluster, config, state=state,
                                                  client_id=client_id)
    daemon = Daemon(mqtt_settings, w.bindings(), config, state=state, cluster=rc,
                    drain_timeout_s=120.0, status_every_s=60.0)
    box: dict[str, Any] = {}
    ready = threading.Event()

    def serve() -> None:
        async def main() -> None:
            box["stop"] = asyncio.Event()
            box["loop"] = asyncio.get_running_loop()
            ready.set()
            await daemon.run(box["stop"])

        try:
            asyncio.run(main())
        except BaseException as e:
            box["error"] = e
            ready.set()

    def cpu() -> tuple[float, float]:
        import ray

        actors = (sum(ray.get([h.cpu_seconds.remote() for h in rc.actors.values()]))
                  if rc is not None else 0.0)
        return time.process_time(), actors

    th = threading.Thread(target=serve, name="daemon", daemon=True)
    th.start()
    marks: list[tuple[int, float, float]] = []  # (outputs, daemon cpu, actors' cpu)
    try:
        ready.wait(60)
        if paced is not None:
            threading.Thread(target=publish_paced, args=(port, w, paced, sent),
                             name="paced-publisher", daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while out.count < w.frames and time.monotonic() < deadline and "error" not in box:
            if during is not None:
                during(out, rc)
            if len(marks) < 2 and out.count >= w.frames * (1 + 8 * len(marks)) // 10:
                marks.append((out.count, *cpu()))
            time.sleep(0.02)
    finally:
        if "loop" in box:
            box["loop"].call_soon_threadsafe(box["stop"].set)
        th.join(300)
        if rc is not None:
            rc.close()
        time.sleep(0.2)
        out.close()
    if "error" in box:
        raise box["error"]
    run = Run({k: list(v) for k, v in out.by_agent.items()}, list(out.times), rc,
              arrivals={k: list(v) for k, v in out.arrivals.items()},
              sent=None if paced is None else sent)
    if len(marks) == 2:
        run.marked_frames = marks[1][0] - marks[0][0]
        run.daemon_cpu_s = marks[1][1] - marks[0][1]
        run.actors_cpu_s = marks[1][2] - marks[0][2]
    return run


def warm_up(w: Workload, frames: int = 600) -> None:
    """Load this process's numba kernels and torch before the single-process run
    (its agents run here; the actors' processes load theirs in their first calls,
    inside their own runs, so the comparison does not favour the actors)."""
    import numpy as np

    from lillith.agents.agent import Agent

    x = np.array([json.loads(w.payload(0, i))["values"] for i in range(frames)])
    Agent(CHANNELS, AgentConfig(), name="warm-up").process_many(x)


def run(*, quick: bool = False) -> dict[str, Any]:
    """frames/s of the single-process daemon and of 1, 2, 4 actors on the same frames."""
    import ray
    import torch

    from lillith.runtime.logging import configure_logging

    torch.set_num_threads(1)  # the daemon's default (torch_threads = 1)
    configure_logging("warning")  # the daemons' logs on stderr, warnings only: stdout is
    # the result
    lb = broker()
    w = Workload(uuid.uuid4().hex[:6], frames=8_000 if quick else 20_000)
    warm_up(w)
    port = lb.free_port()
    with tempfile.TemporaryDirectory() as d:
        proc = lb.start_mosquitto(port, Path(d), max_inflight=0)
        try:
            single = run_daemon(port, w, Path(d) / "single", cluster=None)
            paced = Workload(uuid.uuid4().hex[:6], frames=4_000 if quick else 8_000)
            latency = {"rate_frames_per_s": LATENCY_RATE,
                       "single": run_daemon(port, paced, Path(d) / "paced-single",
                                            cluster=None, paced=LATENCY_RATE).latency_ms()}
            ray.init(num_cpus=CPUS, include_dashboard=False, namespace="lillith-bench",
                     configure_logging=False)
            actors: dict[str, dict[str, Any]] = {}
            try:
                latency[f"actors_{LATENCY_ACTORS}"] = run_daemon(
                    port, paced, Path(d) / "paced-actors", paced=LATENCY_RATE,
                    cluster=ClusterSettings(actors=LATENCY_ACTORS,
                                            num_cpus=CPUS / LATENCY_ACTORS,
                                            namespace="lillith-bench")).latency_ms()
                for n in ACTORS:
                    got = run_daemon(port, w, Path(d) / f"actors{n}", cluster=ClusterSettings(
                        actors=n, num_cpus=CPUS / n, namespace="lillith-bench"))
                    us = 1e6 / got.frames_per_s
                    daemon_us, actors_us = got.cpu_us_per_frame()
                    actors[str(n)] = {
                        "frames_per_s": round(got.frames_per_s, 1), "lost": got.lost(w),
                        "identical": got.outputs == single.outputs,
                        "us_per_frame": round(us, 1),
                        "overhead_us_per_frame": round(us - 1e6 / single.frames_per_s, 1),
                        "daemon_cpu_us_per_frame": round(daemon_us, 1),
                        "actors_cpu_us_per_frame": round(actors_us, 1),
                        "cpu_overhead_us_per_frame": round(
                            daemon_us + actors_us - single.cpu_us_per_frame()[0], 1)}
            finally:
                ray.shutdown()
        finally:
            proc.terminate()
            proc.wait(10)
    return {"agents": w.agents, "frames": w.frames, "cpus": CPUS,
            "single_process_frames_per_s": round(single.frames_per_s, 1),
            "single_process_us_per_frame": round(1e6 / single.frames_per_s, 1),
            "single_process_cpu_us_per_frame": round(single.cpu_us_per_frame()[0], 1),
            "single_process_lost": single.lost(w), "actors": actors, "latency": latency}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
