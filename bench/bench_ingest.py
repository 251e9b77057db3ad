"""Benchmark: messages/s the daemon ingests (decode + validate + enqueue) from mosquitto.

Both consumers drain the same backlog: N QoS-1 JSON frames queued by a local
mosquitto for a persistent session. Baseline: ``mosquitto_sub`` (C) reading
the backlog of its own session. Ours: the daemon's intake path, the paho link
(manual acknowledgement) -> ``decode`` -> the agent's bounded queue (no agent
processing, which ``lillith bench agent`` measures). One core each.
Run: ``lillith bench ingest --json``.
"""

from __future__ import annotations

import asyncio
import json
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from lillith.sensors.codec import Schema, decode
from lillith.sensors.mqtt import MqttSettings, PahoLink


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _broker(port: int, d: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    conf = d / "m.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    "max_queued_messages 0\nmax_inflight_messages 0\npersistence false\n")
    p = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return p
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


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


async def _ours(port: int, client_id: str, n: int) -> float:
    settings = MqttSettings(host="127.0.0.1", port=port, client_id=client_id, protocol=311,
                            receive_maximum=65535)
    schema = Schema(width=4)
    q: queue.Queue[Any] = queue.Queue()
    got = 0
    t0 = time.perf_counter()
    async with PahoLink(settings) as link:
        async for msg in link.messages():
            q.put_nowait(decode(msg.payload, schema, content_type=msg.content_type))
            link.ack(msg)
            got += 1
            if got == n:
                break
    return n / (time.perf_counter() - t0)


def run(*, quick: bool = False) -> dict[str, Any]:
    """Ingest rate of the daemon's path against mosquitto_sub on the same backlog."""
    n = 20_000 if quick else 100_000
    port = _free_port()
    with tempfile.TemporaryDirectory() as d:
        broker = _broker(port, Path(d))
        try:
            _register(port, "bench-ours", "bench/ours")
            _register(port, "bench-sub", "bench/sub")
            _fill(port, "bench/sub", n)
            theirs = _mosquitto_sub(port, "bench-sub", "bench/sub", n)
            _fill(port, "bench/ours", n)
            ours = asyncio.run(_ours(port, "bench-ours", n))
        finally:
            broker.terminate()
            broker.wait(10)
    return {"messages": n, "msgs_per_s": round(ours, 1),
            "mosquitto_sub_msgs_per_s": round(theirs, 1), "ratio": round(ours / theirs, 3),
            "target": {"msgs_per_s": 30_000, "ratio": 0.5}}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
