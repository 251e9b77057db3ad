"""Diagnostic: how the NAB score depends on the rest period after an alarm.

``score.suppress`` (the rest period, in frames) changes nothing the agent
learns: it only decides which frames of the likelihood alarm. On 31 streams
with 1 to 4 labelled windows each, an alarm's rest decides whether the next
alarm falls inside a window, just before it (a false positive whose rest
then hides the window) or after it, and whether it spends a token of the
alarm budget that a later window needed. This replays the corpus through a
fresh agent per stream for each rest period and seed, so the score's
sensitivity to that one constant is measured, not assumed
(docs/performance.md, "How much of the score is the rest period's
alignment").

Run: ``python bench/nab_rest.py [--data DIR] [--seeds 0,1,2]
[--values 100,150,200,250,300]``; one agent replay of the corpus (about a
minute) per value and seed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench_nab import DEFAULT_DATA, run_config
from lillith.agents.config import AgentConfig
from lillith.agents.nab import PROFILES


def run(data: Path, seeds: list[int], values: list[int]) -> dict[str, Any]:
    """NAB scores for every rest period and seed, and their means over seeds."""
    torch.set_num_threads(1)
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for v in values:
            per_seed = {}
            for seed in seeds:
                cfg = AgentConfig.model_validate({"seed": seed, "score": {"suppress": v}})
                r = run_config(cfg, data, Path(tmp) / f"{v}_{seed}")
                per_seed[seed] = {k: round(r[k], 2) for k in PROFILES}
            rows[str(v)] = {
                "seeds": per_seed,
                "mean": {k: round(float(np.mean([s[k] for s in per_seed.values()])), 2)
                         for k in PROFILES},
            }
    standard = [row["mean"]["standard"] for row in rows.values()]
    return {"rest_periods": rows, "default": AgentConfig().score.suppress,
            "standard_over_values": {"min": min(standard), "max": max(standard),
                                     "mean": round(float(np.mean(standard)), 2)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--seeds", default="0")
    p.add_argument("--values", default="100,150,200,250,300")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    values = [int(v) for v in a.values.split(",")]
    print(json.dumps(run(a.data, seeds, values), indent=2))


if __name__ == "__main__":
    main()
