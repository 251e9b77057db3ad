"""Diagnostic: what each term of the raw anomaly score is worth on NAB.

The raw score sums three terms (``docs/agent.md`` step 6): the prediction
error, the SOM quantisation error and the level novelty, weighted by
``score.err_weight``, ``score.som_weight`` and ``score.level_weight``. The
weights change nothing the agent learns (``tests/test_agent.py``
``test_raw_score_weights_select_the_terms``), so scoring the corpus with one
term at a time shows what each contributes (range excursions and the alarm
budget off, so the rows compare the raw-score terms only; the last row is the
defaults). Beside
them, a persistence
forecast (``ẑ_{t+1} = z_t``, no learning) goes through the same normaliser,
running-mean scaling and likelihood: the learned forecast has to beat it for
the prediction-error term to mean anything.

Run: ``python bench/nab_terms.py [DATA_DIR]`` (default ``../shared/data/nab``);
about five agent replays of the corpus.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench_nab import DEFAULT_DATA, run_config
from lillith.agents.config import AgentConfig
from lillith.agents.nab import PROFILES, load_corpus, score_all_profiles
from lillith.agents.signal import AnomalyLikelihood, RobustNormalizer
from lillith.sensors.csvfile import read_csv_stream

TERMS: dict[str, tuple[float, float, float]] = {
    "all terms": (1.0, 0.5, 2.0),
    "prediction error only": (1.0, 0.0, 0.0),
    "level novelty only": (0.0, 0.0, 2.0),
    "SOM error only": (0.0, 0.5, 0.0),
    "prediction error + level": (1.0, 0.0, 2.0),
}


def persistence_likelihood(values: np.ndarray, config: AgentConfig) -> np.ndarray:
    """Likelihood of a persistence forecast's error, shape (n,), scored as the
    agent scores its own error term (same normaliser, scaling and likelihood)."""
    sc = config.score
    norm = RobustNormalizer(values.shape[1], alpha=sc.norm_alpha)
    lik = AnomalyLikelihood(window=sc.window, short=sc.short, min_history=sc.min_history,
                            suppress=sc.suppress, alarm=sc.alarm, budget=0)
    out = np.empty(values.shape[0])
    prev: np.ndarray | None = None
    avg = 0.0
    for i, x in enumerate(values):
        z = norm.transform(x)
        norm.learn_one(x)
        err = 0.0 if prev is None else float(np.mean(np.abs(z - prev)))
        avg += max(1.0 / (i + 1), 1e-3) * (err - avg)
        out[i] = lik.score_one(err / (avg + 1e-9))
        prev = z
    return out


def run(data: Path) -> dict[str, Any]:
    """Scores of each term alone, of the defaults and of persistence."""
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: {"err_weight": e, "som_weight": s, "level_weight": lv,
                       "range_alarm": False, "budget": 0} for name, (e, s, lv) in TERMS.items()}
        runs["defaults (all terms, range excursions, alarm budget)"] = {}
        for i, (name, score) in enumerate(runs.items()):
            r = run_config(AgentConfig.model_validate({"score": score}), data,
                           Path(tmp) / str(i))
            results[name] = {k: round(r[k], 2) for k in PROFILES}
    streams = load_corpus(data)
    cfg = AgentConfig()
    scores = {s.path: persistence_likelihood(read_csv_stream(data / "data" / s.path).values, cfg)
              for s in streams}
    results["persistence error (no learning)"] = {
        k: round(v, 2) for k, v in score_all_profiles(streams, scores).items()}
    return results


if __name__ == "__main__":
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DATA
    res = run(data)
    print(f"{'raw score':52s} {'standard':>9s} {'low FP':>9s} {'low FN':>9s}")
    for name, r in res.items():
        print(f"{name:52s} {r['standard']:9.2f} {r['reward_low_FP_rate']:9.2f} "
              f"{r['reward_low_FN_rate']:9.2f}")
    print(json.dumps(res))
