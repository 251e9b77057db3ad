"""The evaluation protocol of ``lillith bench nab`` and ``lillith bench skab``.

A fresh agent per stream (full, and with the fabric ablated), one
configuration for all streams, no look-ahead. Reported for each agent:

* ``in_sample``: the shipped defaults on every stream (what the constants
  were chosen on, so not evidence of what unseen streams get);
* ``cv``: leave-one-group-out cross-validation (:mod:`lillith.eval.cv`):
  every scoring constant of the grid chosen on the other groups' streams
  only; the headline.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lillith.agents.agent import Agent
from lillith.agents.config import AgentConfig
from lillith.errors import LillithError
from lillith.eval import cv, nab, skab
from lillith.eval.record import TermLog, decide, evidence, record
from lillith.sensors.csvfile import read_csv_stream

DATA_ENV = "LILLITH_DATA"
"""Environment variable naming a directory with ``nab/`` and ``skab/`` inside."""


class DataNotFoundError(LillithError):
    """A benchmark's data directory is missing (the CLI exits 2)."""


def data_dir(given: Path | None, name: str) -> Path:
    """The data directory of benchmark ``name``: ``given``, else ``$LILLITH_DATA/name``.

    Raises
    ------
    DataNotFound
        When neither names an existing directory.
    """
    if given is None and os.environ.get(DATA_ENV):
        given = Path(os.environ[DATA_ENV]) / name
    if given is None or not Path(given).is_dir():
        where = "nowhere (no --data, no $" + DATA_ENV + ")" if given is None else str(given)
        raise DataNotFoundError(f"data not found at {where}; pass --data", benchmark=name)
    return Path(given)


def _variants(config: AgentConfig) -> dict[str, AgentConfig]:
    return {"full": config, "ablated": config.model_copy(update={"ablate_fabric": True})}


def log_stream(config: AgentConfig, values: np.ndarray, times: Sequence[float | None],
                name: str) -> TermLog:
    agent = Agent(values.shape[1], config, name=name)
    return record(agent, values, times)[1]


def run_nab(data: Path, *, config: AgentConfig | None = None, quick: bool = False,
            points: Sequence[Mapping[str, Any]] | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """NAB v1.1 scores of the full and ablated agents: in-sample and cross-validated.

    Parameters
    ----------
    data : Path
        A NAB tree (``data/<category>/<name>.csv`` and ``labels_windows.json``).
    config : AgentConfig, optional
        The agent (default: the shipped defaults); its scoring settings are the
        in-sample setting and the base of the grid.
    quick : bool
        Two streams of each category and a smaller grid.
    points : sequence of dict, optional
        The grid (default :data:`lillith.eval.cv.NAB_GRID` x :func:`~lillith.eval.cv.switches`).
    """
    torch.set_num_threads(1)
    config = config or AgentConfig()
    streams = nab.load_corpus(data)
    if quick:
        first: dict[str, list[nab.NabStream]] = {}
        for s in streams:
            first.setdefault(s.category, []).append(s)
        streams = [s for group in first.values() for s in group[:2]]
    if points is None:
        sw = cv.switches(config.score)
        points = (cv.grid({"alarm": [0.9999], "suppress": [100, 200]}, sw[:3])
                  if quick else cv.grid(cv.NAB_GRID, sw))
    out: dict[str, Any] = {"streams": len(streams), "grid_points": len(points),
                           "groups": sorted({s.category for s in streams})}
    for variant, cfg in _variants(config).items():
        t0 = time.perf_counter()
        logs: dict[str, TermLog] = {}
        for s in streams:
            stream = read_csv_stream(data / "data" / s.path)
            logs[s.path] = log_stream(cfg, stream.values, list(stream.t), Path(s.path).stem)
        model_s = time.perf_counter() - t0
        som = not cfg.ablate_fabric
        base = cfg.score
        ins = {p.path: decide(evidence(logs[p.path], base, som=som), base).likelihood
               for p in streams}
        in_sample = {k: round(v, 2) for k, v in nab.score_all_profiles(streams, ins).items()}
        if progress:
            progress(f"{variant}: model {model_s:.0f} s, in-sample {in_sample['standard']}")
        decisions = cv.replay_grid(logs, base, points, som=som)
        res: dict[str, Any] = {"in_sample": in_sample, "cv": {}}
        for profile in nab.PROFILES:
            r = cv.logo_nab(streams, decisions, points, profile)
            res["cv"][profile] = round(r["score"], 2)
            res["cv"][f"{profile}_strict"] = round(r["strict"], 2)
            if profile == "standard":
                res["cv_folds"] = [{
                    "group": f["group"], "pick": f["pick"],
                    "held_out": round(100.0 * (f["raw"] - f["null"])
                                      / (f["perfect"] - f["null"]), 2)
                    if f["perfect"] > f["null"] else None,
                    "windows": round(f["perfect"])} for f in r["folds"]]
        rows = sum(len(s.values) for s in streams)
        res.update(rows=rows, model_seconds=round(model_s, 1),
                   frames_per_s=round(rows / model_s, 1),
                   seconds=round(time.perf_counter() - t0, 1))
        out[variant] = res
        if progress:
            progress(f"{variant}: cv {res['cv']['standard']}")
    out["standard"] = out["full"]["cv"]["standard"]
    out["in_sample_standard"] = out["full"]["in_sample"]["standard"]
    out["ablated_standard"] = out["ablated"]["cv"]["standard"]
    return out


def run_skab(data: Path, *, config: AgentConfig | None = None, quick: bool = False,
             points: Sequence[Mapping[str, Any]] | None = None,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """SKAB binary scores (the ``alarm`` column) of the full and ablated agents.

    The protocol of :mod:`lillith.eval.skab` (first 400 rows of each file
    not scored, pooled F1 / FAR / MAR); the agent learns online from row 0,
    a fresh agent per file. Top-level ``f1``, ``far``, ``mar``: the full
    agent in sample; ``cv``: the same, cross-validated leave-one-file-out
    over the grid (default :data:`lillith.eval.cv.SKAB_GRID`), each fold's
    setting chosen by F1 (SKAB's ranking); ``cv_far_bounded``: chosen by F1
    within FAR <= :data:`~lillith.eval.cv.FAR_MAX` first.
    """
    torch.set_num_threads(1)
    config = config or AgentConfig()
    files = skab.load_corpus(data)
    if quick:
        files = files[:4]
    if points is None:
        points = (cv.grid({"hold": [0.5, 0.7], "shift_level": [0.999, 0.9999]}) if quick
                  else cv.grid(cv.SKAB_GRID))
    out: dict[str, Any] = {"files": len(files), "grid_points": len(points)}
    for variant, cfg in _variants(config).items():
        t0 = time.perf_counter()
        logs = {f.path: log_stream(cfg, f.values, list(f.t), Path(f.path).stem)
                for f in files}
        model_s = time.perf_counter() - t0
        som = not cfg.ablate_fabric
        base = cfg.score
        ins = {f.path: decide(evidence(logs[f.path], base, som=som), base).alarm for f in files}
        s = skab.score(files, ins)
        decisions = cv.replay_grid(logs, base, points, som=som)
        r = cv.logo_skab(files, decisions, points)
        rc = cv.logo_skab(files, decisions, points, far_max=cv.FAR_MAX)
        res: dict[str, Any] = {
            "f1": round(s["f1"], 4), "far": round(s["far"], 2), "mar": round(s["mar"], 2),
            "cv": {"f1": round(r["f1"], 4), "far": round(r["far"], 2),
                   "mar": round(r["mar"], 2)},
            "cv_picks": _count_picks([f["pick"] for f in r["folds"]]),
            "cv_far_bounded": {"f1": round(rc["f1"], 4), "far": round(rc["far"], 2),
                               "mar": round(rc["mar"], 2)},
            "model_seconds": round(model_s, 1), "seconds": round(time.perf_counter() - t0, 1)}
        out[variant] = res
        if progress:
            progress(f"{variant}: in-sample f1 {res['f1']}, cv f1 {res['cv']['f1']}")
    full = out["full"]
    out.update(f1=full["f1"], far=full["far"], mar=full["mar"], cv=full["cv"])
    return out


def _count_picks(picks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Distinct picks with how many folds chose each."""
    seen: dict[str, dict[str, Any]] = {}
    for p in picks:
        key = repr(sorted(p.items()))
        seen.setdefault(key, {"pick": p, "folds": 0})["folds"] += 1
    return sorted(seen.values(), key=lambda d: -int(d["folds"]))
