"""Benchmark: NAB scores of the agent on the labelled streams, with and without the fabric.

Every stream is replayed through a fresh agent, one after the other, with one
configuration for all streams (no per-stream tuning, no look-ahead); the
``anomaly_likelihood`` column is scored with NAB v1.1 rules
(``lillith.agents.nab``). The same run is repeated with the fabric and SOM
ablated (the predictor fed only the normalised recent inputs).
Run: ``lillith bench nab [--data DIR] [--out DIR] --json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lillith.agents.agent import Agent
from lillith.agents.config import AgentConfig
from lillith.agents.nab import load_corpus, read_scores, score_all_profiles
from lillith.runtime.replay import replay_stream
from lillith.sensors.csvfile import read_csv_stream

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nab"
PUBLISHED = {"ARTime": 78.15, "CAD OSE": 74.05, "Numenta HTM": 71.21, "KNN CAD": 64.40,
             "windowed Gaussian": 36.71}


def run_config(config: AgentConfig, data: Path, out: Path,
               limit: int | None = None) -> dict[str, Any]:
    """Replay the corpus under ``data`` into ``out`` and score it."""
    streams = load_corpus(data)[:limit] if limit else load_corpus(data)
    t0 = time.perf_counter()
    rows = 0
    for s in streams:
        stream = read_csv_stream(data / "data" / s.path)
        agent = Agent(1, config, name=Path(s.path).stem)
        replay_stream(agent, stream, out / s.path)
        rows += stream.values.shape[0]
    elapsed = time.perf_counter() - t0
    scores = read_scores(out, streams, column="anomaly_likelihood")
    result: dict[str, Any] = dict(score_all_profiles(streams, scores))
    result.update(rows=rows, seconds=round(elapsed, 1), frames_per_s=round(rows / elapsed, 1),
                  streams=len(streams))
    return result


def run(*, quick: bool = False, data: Path | None = None, out: Path | None = None
        ) -> dict[str, Any]:
    """Full agent and fabric-ablated agent on the NAB corpus."""
    torch.set_num_threads(1)
    data = Path(data) if data else DEFAULT_DATA
    out = Path(out) if out else Path("bench-out") / "nab"
    limit = 6 if quick else None
    full = run_config(AgentConfig(), data, out / "full", limit)
    ablated = run_config(AgentConfig(ablate_fabric=True), data, out / "ablated", limit)
    return {
        "standard": full["standard"],
        "reward_low_FP_rate": full["reward_low_FP_rate"],
        "reward_low_FN_rate": full["reward_low_FN_rate"],
        "full": full,
        "ablated": ablated,
        "published_standard": PUBLISHED,
        "quick_subset": quick,
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
