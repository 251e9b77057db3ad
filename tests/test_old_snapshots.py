"""Snapshots written by an earlier version still load and continue bit-identically.

``tests/data/snapshots/{tiny,evolving}`` were written at commit 32fc56e (before
the layout of issue 20) after 301 frames of :func:`frames` (mid micro-batch):
``tiny`` a fabric-ablated agent, ``evolving`` a full agent with evolution on
(fabric and tile apoptosis, the surgery policy, lineage). ``<name>_next50.npy``
holds what that version output for the next 50 frames (:func:`row` of each),
evolution rounds included (two fall due among them). The configuration is in
the snapshots.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from lillith.agents.agent import Agent
from lillith.agents.metrics import Metrics
from lillith.state.snapshot import SnapshotStore

DATA = Path(__file__).parent / "data" / "snapshots"
SAVED_AT = 301


def frames(start: int, n: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Frames ``start .. start + n`` of the fixtures' stream (two channels, hourly times)."""
    rng = np.random.default_rng(7)
    i = np.arange(400)
    x = np.stack([np.sin(2 * np.pi * i / 24.0), np.cos(2 * np.pi * i / 50.0)], 1)
    x = x + 0.1 * rng.standard_normal(x.shape)
    x[330, 0] += 6.0
    ts = 1.7e9 + 3600.0 * i
    return x[start:start + n], ts[start:start + n]


def row(m: Metrics) -> list[float]:
    """The outputs compared: loss, scores, alarm, forecast, BMU, BioSystem, skipped."""
    return [m.loss, m.anomaly_score, m.anomaly_likelihood, float(m.alarm), *m.prediction,
            float(m.bmu), m.energy, m.learning_drive, m.mood, float(m.skipped)]


def feed(agent: Agent, X: npt.NDArray[np.float64], ts: npt.NDArray[np.float64]
         ) -> list[Metrics]:
    """Frames through ``agent`` (it runs its evolution rounds at their steps)."""
    return agent.process_many(X, list(ts))


@pytest.mark.parametrize("name", ["tiny", "evolving"])
def test_old_snapshot_loads_and_continues_bit_identically(name: str) -> None:
    loaded = SnapshotStore(str(DATA / name)).load()
    assert loaded.info.step == SAVED_AT
    agent = Agent.from_state(loaded.state)
    assert agent.step == SAVED_AT
    assert agent.evolving == (name == "evolving")
    X, ts = frames(SAVED_AT, 50)
    got = np.array([row(m) for m in feed(agent, X, ts)], dtype=np.float64)
    want = np.load(DATA / f"{name}_next50.npy")
    assert got.shape == want.shape == (50, 11)
    np.testing.assert_array_equal(got, want)
    assert np.any(got[:, 2] != 0.5)  # the likelihood left its warm-up value
    if name == "evolving":
        assert agent.lineage_history()["births"].shape[0] > 0
