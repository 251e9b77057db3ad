"""Shared fixtures: a real mosquitto broker on a free port (``lillith.bench.local_broker``).

torch runs single-threaded in the tests, as the daemon runs it
(``torch_threads = 1``): the tile predictor's small matrices gain nothing from
two threads, and on this 2-core machine they lose a lot when a neighbour
(numba, a subprocess) wants the other core.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from lillith.bench.local_broker import MOSQUITTO, free_port, start_mosquitto

__all__ = ["MOSQUITTO", "free_port", "start_mosquitto"]

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A mosquitto broker on a free loopback port for the whole session; yields the port."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (make test installs it as root)")
    port = free_port()
    proc = start_mosquitto(port, tmp_path_factory.mktemp("mosquitto"))
    yield port
    proc.terminate()
    proc.wait(10)
