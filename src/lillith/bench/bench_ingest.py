"""Benchmark: messages/s the daemon ingests (decode + validate + enqueue) from mosquitto.

Every consumer drains the same backlog: N QoS-1 JSON frames queued by a local
mosquitto for a persistent session. Baseline: ``mosquitto_sub`` (C) reading
the backlog of its own session. Ours: the daemon's intake (``Daemon._intake``:
topic routing, ``decode`` and validation, counters, the agent's bounded queue)
over each of the daemon's MQTT links (``mqtt.client``: native, paho),
with every message acknowledged once taken off the agent's queue (no agent
processing, which ``lillith bench agent`` measures). One process each; the
repeats of all consumers are interleaved and the best of each is reported.
Then ``bench_latency`` (end-to-end latency of the daemon at half its
sustainable rate: ``p50_ms``, ``p99_ms``; details under ``latency``).
Run: ``lillith bench ingest --json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from lillith.agents.config import AgentConfig
from lillith.bench.local_broker import free_port, start_mosquitto
from lillith.runtime.config import AgentBinding
from lillith.runtime.daemon import Daemon
from lillith.runtime.hosted import HostedAgent
from lillith.sensors.mqtt import Link, MqttSettings, open_link

CLIENTS = ("native", "paho")  # the daemon's links (``mqtt.client``)


def _register(port: int, client_id: str, topic: str) -> None:
    """Create a persistent session subscribed to ``topic``, then leave."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.subscribe(topic, qos=1)[1]
    time.sleep(0.3)
    c.loop_stop()
    c.disconnect()


def _fill(port: int, topic: str, n: int) -> None:
    p = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-pub")
    p.max_inflight_messages_set(1000)
    p.max_queued_messages_set(0)
    p.connect("127.0.0.1", port)
    p.loop_start()
    for lo in range(0, n, 1000):  # in chunks: paho's own queue is bounded
        infos = [p.publish(topic, json.dumps({"t": i, "values": [1.0, 2.0, 3.0, float(i)]}),
                           qos=1) for i in range(lo, min(n, lo + 1000))]
        for info in infos:
            info.wait_for_publish(120)
    p.loop_stop()
    p.disconnect()


def _mosquitto_sub(port: int, client_id: str, topic: str, n: int) -> float:
    exe = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
    t0 = time.perf_counter()
    subprocess.run([exe, "-h", "127.0.0.1", "-p", str(port), "-i", client_id, "-c", "-q", "1",
                    "-t", topic, "-C", str(n)], stdout=subprocess.DEVNULL, check=True,
                   timeout=600)
    return n / (time.perf_counter() - t0)


async def _ours(port: int, client_id: str, n: int, client: str) -> float:
    """The daemon's own intake on ``n`` backlogged messages: ``Daemon._intake`` (topic
    routing, decode and validation, counters, the agent's bounded queue); the
    agent's worker is not started, a stand-in takes each frame off its queue
    and acknowledges the message as the publisher does after processing."""
    settings = MqttSettings(host="127.0.0.1", port=port, client_id=client_id, protocol=311,
                            receive_maximum=65535, client=client)
    binding = AgentBinding(name="bench", topics=["bench/#"], width=4, queue_size=4096)
    daemon = Daemon(settings, [binding], AgentConfig())
    loop = asyncio.get_running_loop()
    a = HostedAgent(binding, daemon.config, daemon._results, loop, daemon._evolutions,
                      daemon.metrics)
    daemon.agents = [a]
    stop = asyncio.Event()
    taken = 0

    async def processed(link: Link) -> None:
        nonlocal taken
        while taken < n:
            item = a.worker.take()
            if not isinstance(item, tuple):  # nothing waiting
                await asyncio.sleep(0)
                continue
            link.ack(a.unacked.pop(item[0]))
            taken += 1

    t0 = time.perf_counter()
    async with open_link(settings) as link:
        intake = asyncio.create_task(daemon._intake(link, stop))
        await processed(link)
        intake.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await intake
        elapsed = time.perf_counter() - t0
    if a.frames_in != n or any(a.rejects.values()):
        raise RuntimeError(f"intake took {a.frames_in} frames, rejected {dict(a.rejects)}")
    return n / elapsed


def run(*, quick: bool = False) -> dict[str, Any]:
    """Ingest rate of the daemon's path against mosquitto_sub on the same backlog."""
    n = 20_000 if quick else 100_000
    repeats = 1 if quick else 3
    rates: dict[str, list[float]] = {k: [] for k in ("mosquitto_sub", *CLIENTS)}
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        broker = start_mosquitto(port, Path(d), max_inflight=0)
        try:
            _register(port, "bench-sub", "bench/sub")
            for client in CLIENTS:
                _register(port, f"bench-{client}", f"bench/{client}")
            for _ in range(repeats):  # interleaved: the host's drift hits every side alike
                _fill(port, "bench/sub", n)
                rates["mosquitto_sub"].append(_mosquitto_sub(port, "bench-sub", "bench/sub", n))
                for client in CLIENTS:
                    _fill(port, f"bench/{client}", n)
                    rates[client].append(asyncio.run(_ours(port, f"bench-{client}", n, client)))
        finally:
            broker.terminate()
            broker.wait(10)
    best = {k: max(v) for k, v in rates.items()}
    ours, theirs = best["native"], best["mosquitto_sub"]
    # the daemon end to end, after the ingest runs (never at once)
    from lillith.bench import bench_latency

    lat = bench_latency.run(quick=quick)
    return {"messages": n, "repeats": repeats, "client": "native",
            "p50_ms": lat["p50_ms"], "p99_ms": lat["p99_ms"], "p99_ok": lat["p99_ok"],
            "latency": lat,
            "msgs_per_s": round(ours, 1), "mosquitto_sub_msgs_per_s": round(theirs, 1),
            "ratio": round(ours / theirs, 3),
            "links": {c: {"msgs_per_s": round(best[c], 1),
                          "ratio": round(best[c] / theirs, 3)} for c in CLIENTS},
            "target": {"msgs_per_s": 30_000, "ratio": 0.5},
            "msgs_per_s_ok": ours >= 30_000, "ratio_ok": ours / theirs >= 0.5}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
