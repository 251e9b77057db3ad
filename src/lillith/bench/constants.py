"""Diagnostic: each scoring constant, one at a time, under the cross-validated protocol.

For every constant of ``score.*`` (and ``score.norm_alpha``, which the model
reads), a few values around the default are replayed on every stream, the
others at their defaults, and the leave-one-group-out protocol of
``lillith.eval.cv`` picks among them for each held-out group. A constant is
justified by the protocol when the groups' picks agree with the default and
its cross-validated score is not below the in-sample one by more than the
spread across values; docs/performance.md tabulates the result.

Run: ``python -m lillith.bench.constants --data DIR --corpus nab|skab [--only a,b]``
(DIR as for ``lillith bench nab`` / ``skab``); about 15 minutes for NAB.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from lillith.agents.config import AgentConfig
from lillith.eval import cv, nab, skab
from lillith.eval.protocol import data_dir, log_stream
from lillith.eval.record import TermLog
from lillith.sensors.csvfile import read_csv_stream

# (constant, values), the default among them
NAB_CONSTANTS: list[tuple[str, list[Any]]] = [
    ("err_weight", [0.0, 0.5, 1.0, 2.0]), ("som_weight", [0.0, 0.25, 0.5, 1.0]),
    ("level_weight", [0.0, 1.0, 2.0, 4.0]), ("window", [1000, 2000, 4000]),
    ("short", [1, 3, 6]), ("min_history", [20, 50, 200]), ("alarm", [0.999, 0.9999, 0.99999]),
    ("suppress", [100, 200, 300]), ("budget", [0, 4, 8, 16]),
    ("budget_period", [1000, 2000, 4000]), ("range_tol", [0.05, 0.1, 0.2, 0.4]),
    ("range_days", [0, 30, 90]), ("stuck_factor", [1.5, 2.0, 3.0]),
    ("stuck_min_run", [5, 10, 20]), ("recurrence_days", [0, 2, 3, 4]),
    ("recurrence_slack", [0, 1, 2]), ("recurrence_tol", [1800.0, 5400.0, 10800.0]),
    ("recurrence_ratio", [0.6, 0.8, 1.0]), ("week_context", [False, True]),
    ("range_alarm", [False, True]), ("stuck_alarm", [False, True]),
    ("shift_news", [False, True]), ("norm_alpha", [1e-3, 2e-3, 4e-3]),
]
SKAB_CONSTANTS: list[tuple[str, list[Any]]] = [
    ("hold", [0.3, 0.5, 0.7, 0.9]), ("shift_level", [0.99, 0.999, 0.9999]),
    ("shift_rate", [0.01, 0.02, 0.05, 0.1]), ("alarm", [0.999, 0.9999, 0.99999]),
    ("window", [1000, 2000, 4000]), ("min_history", [20, 50, 200]),
    ("shift_alarm", [False, True]), ("norm_alpha", [1e-3, 2e-3, 4e-3]),
]
MODEL_KEYS = frozenset({"norm_alpha"})


def _logs(corpus: str, data: Path, cfg: AgentConfig) -> tuple[list[Any], dict[str, TermLog]]:
    if corpus == "nab":
        streams = nab.load_corpus(data)
        logs = {}
        for s in streams:
            st = read_csv_stream(data / "data" / s.path)
            logs[s.path] = log_stream(cfg, st.values, list(st.t), Path(s.path).stem)
        return streams, logs
    files = skab.load_corpus(data)
    return files, {f.path: log_stream(cfg, f.values, list(f.t), f.path) for f in files}


def _evaluate(corpus: str, items: list[Any], decisions: list[Any],
              points: list[dict[str, Any]]) -> dict[str, Any]:
    if corpus == "nab":
        r = cv.logo_nab(items, decisions, points)
        ins: list[float] = [
            nab.score_corpus(items, {s.path: d[s.path].likelihood for s in items})["score"]
            for d in decisions]
        return {"cv": round(r["score"], 2), "in_sample": [round(v, 2) for v in ins],
                "picks": dict(Counter(repr(f["pick"]) for f in r["folds"]))}
    rs = cv.logo_skab(items, decisions, points)
    sk = [skab.score(items, {f.path: d[f.path].alarm for f in items}) for d in decisions]
    return {"cv": {"f1": round(rs["f1"], 4), "far": round(rs["far"], 2)},
            "in_sample": [{"f1": round(v["f1"], 4), "far": round(v["far"], 2)} for v in sk],
            "picks": dict(Counter(repr(f["pick"]) for f in rs["folds"]))}


def run(corpus: str, data: Path, only: set[str] | None = None) -> dict[str, Any]:
    """One-at-a-time cross-validation of the scoring constants (see the module)."""
    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    table = NAB_CONSTANTS if corpus == "nab" else SKAB_CONSTANTS
    for variant, ablate in (("full", False), ("ablated", True)):
        base = AgentConfig(ablate_fabric=ablate)
        items, logs = _logs(corpus, data, base)
        res: dict[str, Any] = {}
        for name, values in table:
            if (only and name not in only) or (ablate and name == "som_weight"):
                continue
            points = [{name: v} for v in values]
            if name in MODEL_KEYS:  # the model reads it: run it again for each value
                decisions = []
                for v in values:
                    cfg = base.model_copy(update={"score": base.score.model_copy(
                        update={name: v})})
                    vlogs = logs if v == getattr(base.score, name) else _logs(corpus, data,
                                                                               cfg)[1]
                    decisions.extend(cv.replay_grid(vlogs, cfg.score, [{}],
                                                    som=not ablate))
            else:
                decisions = cv.replay_grid(logs, base.score, points, som=not ablate)
            r = _evaluate(corpus, items, decisions, points)
            r.update(default=getattr(base.score, name), values=values)
            res[name] = r
            print(variant, name, json.dumps(r), file=sys.stderr, flush=True)
        out[variant] = res
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--corpus", choices=("nab", "skab"), default="nab")
    p.add_argument("--only", default=None, help="comma-separated constants")
    a = p.parse_args()
    data = data_dir(a.data, a.corpus)
    if a.corpus == "skab" and (data / "data").is_dir():
        data = data / "data"
    print(json.dumps(run(a.corpus, data, set(a.only.split(",")) if a.only else None),
                     indent=1))


if __name__ == "__main__":
    main()
