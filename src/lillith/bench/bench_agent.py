"""Benchmark: end-to-end agent throughput in replay (frames/s).

Small agent (5,5,16) and medium agent (13,13,64), 1 channel, a noisy
periodic stream with stream times 5 minutes apart (so the weekly context
runs, from the second week of stream time), processed as ``lillith replay``
does (``process_many`` in chunks), plus the fabric-ablated agent for
reference. Targets: small >= 3,000
frames/s, medium >= 500 frames/s. Run: ``lillith bench agent --json``.

Each agent is measured ``REPEATS`` times, the three agents in turn (round
robin, so a slow spell of the host does not fall on one of them only); the
best run is reported (as ``timeit`` does: interference only ever slows a run
down) with the median beside it.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
import torch

from lillith.agents.agent import Agent
from lillith.agents.config import AgentConfig

CHUNK = 512
REPEATS = 3
T0 = 1704067200.0  # 2024-01-01 00:00 UTC
STEP_S = 300.0


def _stream(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(n)
    return (10 + 3 * np.sin(2 * np.pi * t / 50) + 0.3 * rng.standard_normal(n))[:, None]


def measure(config: AgentConfig, n: int) -> float:
    """Frames per second of ``n`` frames after a warm-up of 1,000."""
    agent = Agent(1, config)
    X = _stream(n + 1000)
    ts = [T0 + STEP_S * i for i in range(n + 1000)]
    agent.process_many(X[:1000], ts[:1000])
    t0 = time.perf_counter()
    for lo in range(1000, n + 1000, CHUNK):
        agent.process_many(X[lo:lo + CHUNK], ts[lo:lo + CHUNK])
    return n / (time.perf_counter() - t0)


def run(*, quick: bool = False) -> dict[str, Any]:
    """Throughput of the small, medium and ablated agents (best and median of
    ``REPEATS`` runs each, round robin)."""
    torch.set_num_threads(1)
    n_small = 5_000 if quick else 30_000
    n_medium = 1_000 if quick else 5_000
    cases = {
        "small": (AgentConfig(), n_small, 3000),
        "medium": (AgentConfig.model_validate({"fabric": {"shape": (13, 13, 64)}}), n_medium,
                   500),
        "ablated": (AgentConfig(ablate_fabric=True), n_small, None),
    }
    runs: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(1 if quick else REPEATS):
        for name, (config, n, _target) in cases.items():
            runs[name].append(measure(config, n))
    out: dict[str, Any] = {}
    for name, (_config, _n, target) in cases.items():
        out[name] = {"frames_per_s": round(max(runs[name]), 1),
                     "median_frames_per_s": round(float(np.median(runs[name])), 1)}
        if target is not None:
            out[name]["target"] = target
    return out


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
