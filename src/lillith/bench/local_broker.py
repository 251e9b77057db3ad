"""A private mosquitto on a free loopback port, for the benchmarks and the tests.

``tests/conftest.py`` imports this file (the tests' broker fixtures), as do
``bench_ingest``, ``bench_latency`` and ``bench_cluster``: one place for how a
test broker is configured, and for the benchmarks' publishing client.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                          if Path("/usr/sbin/mosquitto").exists() else None)
"""The mosquitto executable, or None when it is not installed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(port: int, directory: Path, *, persistent: bool = False,
                    anonymous: bool = True, extra: str = "",
                    max_inflight: int | None = None) -> subprocess.Popen[bytes]:
    """Start mosquitto on ``127.0.0.1:port`` and wait (10 s) until it accepts connections.

    ``max_queued_messages 0`` lifts the broker's default cap of 1000 queued
    QoS-1 messages per client, which would otherwise drop messages to a slow
    subscriber (docs/mqtt.md). ``persistent`` keeps the broker's sessions in
    ``directory`` across restarts; ``extra`` lines apply to the listener (TLS
    files, a password file); ``max_inflight`` sets ``max_inflight_messages``
    (0: no limit).

    Raises
    ------
    RuntimeError
        mosquitto is not installed, or did not accept connections in time.
    """
    if MOSQUITTO is None:
        raise RuntimeError("mosquitto is not installed")
    conf = directory / f"mosquitto-{port}.conf"
    persistence = (f"persistence true\npersistence_location {directory}/\n" if persistent
                   else "persistence false\n")
    # started as root, mosquitto drops to its own user, who cannot write a
    # persistence file into (or read TLS keys from) private tmp dirs
    user = "user root\n" if os.geteuid() == 0 else ""
    inflight = "" if max_inflight is None else f"max_inflight_messages {max_inflight}\n"
    conf.write_text(f"{user}listener {port} 127.0.0.1\n{extra}"
                    f"allow_anonymous {'true' if anonymous else 'false'}\n"
                    f"max_queued_messages 0\n{inflight}{persistence}")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("mosquitto did not start")


def publisher(port: int, prefix: str = "bench-tx") -> mqtt.Client:
    """A connected paho client on ``127.0.0.1:port`` (its network loop started)
    that publishes as fast as the broker takes it: 1,000 QoS-1 messages in
    flight, its own queue unbounded. Named ``<prefix>-<random>``."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{prefix}-{uuid.uuid4().hex[:8]}")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c
