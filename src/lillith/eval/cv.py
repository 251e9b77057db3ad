"""Leave-one-group-out cross-validation of the scoring settings (NAB and SKAB).

Every tunable scoring constant is chosen on the other groups' streams only:
for each group (a NAB category, a SKAB experiment file) the grid point that
scores best on every other group is applied to the held-out group, and the
held-out outputs of all groups are pooled and scored together. That pooled
score estimates what the selection procedure gives on streams it has not
seen; the in-sample score (one setting for all, chosen or fixed on all
streams) does not.

The model is not re-run: the scoring settings change nothing it learns, so
each stream's :class:`~lillith.eval.record.TermLog` is replayed
(:func:`lillith.eval.record.evidence`, :func:`~lillith.eval.record.decide`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

from lillith.agents.config import ScoreSettings
from lillith.eval import nab, skab
from lillith.eval.record import Decisions, EvidenceLog, TermLog, decide, evidence

F64 = npt.NDArray[np.float64]

# settings that act on the decisions only (lillith.agents.scores.alarm.AlarmState):
# a grid over them replays the evidence once
DECISION_KEYS = frozenset({"alarm", "hold", "suppress", "budget", "budget_period",
                           "range_alarm", "stuck_alarm", "week_context", "shift_alarm",
                           "shift_level", "shift_news"})

NAB_GRID: dict[str, list[Any]] = {
    "alarm": [0.9995, 0.9999, 0.99995],
    "suppress": [100, 200, 300],
    "budget": [0, 8],
}
"""Grid of the NAB protocol, crossed with :func:`switches`."""
SWITCHES = ("range_alarm", "stuck_alarm", "week_context", "shift_news")
"""The sources' switches (ScoreSettings booleans), and ``recurrence_days`` 0 / 3."""


def switches(base: ScoreSettings) -> list[dict[str, Any]]:
    """Grid variants: ``base`` as it is, and each switch of :data:`SWITCHES` (and
    the daily recurrence) turned the other way in turn."""
    out: list[dict[str, Any]] = [{}]
    out.extend({k: not getattr(base, k)} for k in SWITCHES)
    out.append({"recurrence_days": 0 if base.recurrence_days else 3})
    return out

SKAB_GRID: dict[str, list[Any]] = {
    "hold": [0.3, 0.5, 0.7, 0.9],
    "shift_level": [0.99, 0.999, 0.9999],
    "shift_rate": [0.02, 0.05, 0.1],
}
"""Grid of the SKAB protocol (the alarm state's constants)."""
FAR_MAX = 13.55
"""SKAB: Conv-AE's false-alarm rate (%), the bound of the constrained selection."""


def grid(axes: Mapping[str, Sequence[Any]],
         variants: Sequence[Mapping[str, Any]] = ({},)) -> list[dict[str, Any]]:
    """Every combination of ``axes`` (setting name to values), crossed with
    ``variants`` (further settings applied on top)."""
    keys = list(axes)
    out = []
    for vals in itertools.product(*(axes[k] for k in keys)):
        for v in variants:
            out.append({**dict(zip(keys, vals, strict=True)), **v})
    return out


def _split(point: Mapping[str, Any]) -> tuple[tuple[tuple[str, Any], ...], dict[str, Any]]:
    """(evidence-level settings as a key, decision-level settings) of a grid point."""
    ev = {k: v for k, v in point.items() if k not in DECISION_KEYS}
    if ev.get("recurrence_days") == 0:  # a switch: the evidence keeps its recurrence
        del ev["recurrence_days"]
    return tuple(sorted(ev.items())), dict(point)


def replay_grid(logs: Mapping[str, TermLog], base: ScoreSettings,
                points: Sequence[Mapping[str, Any]], *, som: bool,
                progress: Callable[[int, int], None] | None = None
                ) -> list[dict[str, Decisions]]:
    """Decisions of every stream (``logs``: name to term log) under every grid point.

    Points that differ only in :data:`DECISION_KEYS` (and ``recurrence_days``
    0, recurrence off) share one evidence replay per stream.
    """
    by_ev: dict[tuple[tuple[str, Any], ...], list[int]] = {}
    for i, p in enumerate(points):
        by_ev.setdefault(_split(p)[0], []).append(i)
    out: list[dict[str, Decisions]] = [{} for _ in points]
    done = 0
    for ev_key, idx in by_ev.items():
        ev_settings = base.model_copy(update=dict(ev_key))
        floor = min(base.model_copy(update=points[i]).alarm for i in idx)
        evs: dict[str, EvidenceLog] = {
            name: evidence(log, ev_settings, som=som, recurs_floor=floor)
            for name, log in logs.items()}
        for i in idx:
            s = ev_settings.model_copy(update=points[i])
            out[i] = {name: decide(ev, s) for name, ev in evs.items()}
            done += 1
            if progress is not None:
                progress(done, len(points))
    return out


class NabFold(TypedDict):
    """One held-out group of :func:`logo_nab`."""

    group: str
    pick: dict[str, Any]
    train_score: float
    threshold: float
    raw: float
    null: float
    perfect: float


class NabCV(TypedDict):
    """Result of :func:`logo_nab` for one profile."""

    score: float
    strict: float
    folds: list[NabFold]


def logo_nab(streams: Sequence[nab.NabStream], decisions: Sequence[Mapping[str, Decisions]],
             points: Sequence[Mapping[str, Any]], profile: str = "standard") -> NabCV:
    """Leave-one-category-out cross-validation on NAB.

    For each category, the point (``points[i]``, scored by its likelihoods
    ``decisions[i][stream.path]``) with the best NAB score on the other
    categories is applied to it. ``score``: the held-out likelihoods of all
    categories pooled and scored by NAB's rules (one threshold for the pooled
    set, as NAB scores any corpus). ``strict``: each category scored at the
    threshold chosen on the other categories, raw scores summed.
    """
    prof = nab._as_profile(profile)
    cats: dict[str, list[nab.NabStream]] = {}
    for s in streams:
        cats.setdefault(s.category, []).append(s)
    pooled: dict[str, F64] = {}
    folds: list[NabFold] = []
    raw = null = perfect = 0.0
    for g, held in cats.items():
        train = [s for s in streams if s.category != g]
        best_i, best = -1, None
        for i, dec in enumerate(decisions):
            r = nab.score_corpus(train, {s.path: dec[s.path].likelihood for s in train}, prof)
            if best is None or r["score"] > best["score"] + 1e-12:
                best_i, best = i, r
        assert best is not None
        dec = decisions[best_i]
        for s in held:
            pooled[s.path] = dec[s.path].likelihood
        fold = nab.score_at(held, {s.path: dec[s.path].likelihood for s in held},
                            best["threshold"], prof)
        raw += fold["raw"]
        null += fold["null"]
        perfect += fold["perfect"]
        folds.append(NabFold(group=g, pick=dict(points[best_i]), train_score=best["score"],
                             threshold=best["threshold"], raw=fold["raw"], null=fold["null"],
                             perfect=fold["perfect"]))
    total = nab.score_corpus(streams, pooled, prof)
    strict = 100.0 * (raw - null) / (perfect - null) if perfect > null else 0.0
    return NabCV(score=total["score"], strict=strict, folds=folds)


class SkabFold(TypedDict):
    """One held-out file of :func:`logo_skab`."""

    group: str
    pick: dict[str, Any]
    train_f1: float
    train_far: float


class SkabCV(TypedDict):
    """Result of :func:`logo_skab`."""

    f1: float
    far: float
    mar: float
    folds: list[SkabFold]


def skab_objective(s: skab.SkabScore, far_max: float | None = None) -> tuple[int, float]:
    """Order of the SKAB selection: by F1, SKAB's ranking (``far_max`` None); or
    within ``far_max`` first, then by F1 (outside it, by the lower false-alarm rate)."""
    if far_max is None:
        return (1, s["f1"])
    return (1, s["f1"]) if s["far"] <= far_max else (0, -s["far"])


def logo_skab(files: Sequence[skab.SkabFile], decisions: Sequence[Mapping[str, Decisions]],
              points: Sequence[Mapping[str, Any]], *, far_max: float | None = None) -> SkabCV:
    """Leave-one-file-out cross-validation on SKAB: for each file, the point
    with the best :func:`skab_objective` (F1; within ``far_max`` first when
    given) on every other file decides its alarms; the held-out alarms of all
    files are pooled and scored."""
    pooled: dict[str, npt.NDArray[np.bool_]] = {}
    folds: list[SkabFold] = []
    for f in files:
        train = [g for g in files if g.path != f.path]
        best_i, best, best_key = -1, None, (0, -np.inf)
        for i, dec in enumerate(decisions):
            r = skab.score(train, {g.path: dec[g.path].alarm for g in train})
            key = skab_objective(r, far_max)
            if best is None or key > best_key:
                best_i, best, best_key = i, r, key
        assert best is not None
        pooled[f.path] = decisions[best_i][f.path].alarm
        folds.append(SkabFold(group=f.path, pick=dict(points[best_i]), train_f1=best["f1"],
                              train_far=best["far"]))
    total = skab.score(files, pooled)
    return SkabCV(f1=total["f1"], far=total["far"], mar=total["mar"], folds=folds)
