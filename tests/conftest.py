"""Shared fixtures: a real mosquitto broker on a free port.

torch runs single-threaded in the tests, as the daemon runs it
(``torch_threads = 1``): the tile predictor's small matrices gain nothing from
two threads, and on this 2-core machine they lose a lot when a neighbour
(numba, a subprocess) wants the other core.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                          if Path("/usr/sbin/mosquitto").exists() else None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_mosquitto(port: int, directory: Path, *, persistent: bool = False,
                    anonymous: bool = True, extra: str = "") -> subprocess.Popen[bytes]:
    """Start mosquitto on ``127.0.0.1:port`` and wait until it accepts connections.

    ``max_queued_messages 0`` lifts the broker's default cap of 1000 queued
    QoS-1 messages per client, which would otherwise drop messages to a slow
    subscriber (see DESIGN.md). ``extra`` lines apply to the listener (TLS files,
    a password file).
    """
    assert MOSQUITTO is not None
    conf = directory / f"mosquitto-{port}.conf"
    persistence = (f"persistence true\npersistence_location {directory}/\n" if persistent
                   else "persistence false\n")
    # started as root, mosquitto drops to its own user, who cannot write a
    # persistence file into (or read TLS keys from) pytest's private tmp dirs
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"{user}listener {port} 127.0.0.1\n{extra}"
                    f"allow_anonymous {'true' if anonymous else 'false'}\n"
                    f"max_queued_messages 0\n{persistence}")
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
    pytest.fail("mosquitto did not start")


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A mosquitto broker on a free loopback port for the whole session; yields the port."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (make test installs it as root)")
    port = _free_port()
    proc = start_mosquitto(port, tmp_path_factory.mktemp("mosquitto"))
    yield port
    proc.terminate()
    proc.wait(10)
