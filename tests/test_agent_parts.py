"""Normaliser, likelihood, BioSystem, mode cycler, synthetic signal, CSV replay."""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydantic import ValidationError

from lillith.agents.bio import BioSystem, ModeCycler
from lillith.agents.config import BioSettings, ModeSettings, ScoreSettings
from lillith.agents.scores.likelihood import AnomalyLikelihood
from lillith.agents.scores.normalizer import RobustNormalizer
from lillith.agents.scores.range_novelty import RangeNovelty
from lillith.agents.scores.recurrence import DailyRecurrence
from lillith.agents.scores.stuck import StuckSensor
from lillith.agents.scores.week import WeekProfile
from lillith.errors import StateError
from lillith.sensors.csvfile import CsvError, read_csv_stream
from lillith.sensors.synthetic import SyntheticSignal


def step(source: Any, *args: Any) -> Any:
    """One frame through a source of evidence as the detector takes it: its
    side-effect-free ``score_one``, then ``learn_one``."""
    out = source.score_one(*args)
    source.learn_one(*args)
    return out


def test_normalizer_robust_to_outliers_and_tracks_drift() -> None:
    rng = np.random.default_rng(0)
    norm = RobustNormalizer(1, alpha=0.01)
    for _ in range(2000):
        norm.learn_one(np.array([5.0 + rng.standard_normal()]))
    m0, s0 = norm.mean[0], norm.scale[0]
    assert abs(m0 - 5.0) < 0.2 and 0.7 < s0 < 1.4
    norm.learn_one(np.array([1e6]))  # one huge outlier barely moves it
    assert abs(norm.mean[0] - m0) < 0.1 and norm.scale[0] < 2 * s0
    for _ in range(3000):  # a sustained level shift is followed
        norm.learn_one(np.array([50.0 + rng.standard_normal()]))
    assert abs(norm.mean[0] - 50.0) < 1.0
    z = norm.score_one(np.array([norm.mean[0]]))
    assert abs(z[0]) < 1e-9
    np.testing.assert_allclose(norm.inverse(norm.score_one(np.array([51.0]))), [51.0])
    st = norm.get_state()
    other = RobustNormalizer(1)
    other.set_state(st)
    assert other.mean[0] == norm.mean[0]
    with pytest.raises(StateError):
        RobustNormalizer(2).set_state(st)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_every_source_scores_without_changing_and_learns_after() -> None:
    """The interface of the sources of evidence: ``score_one`` changes nothing
    (asked twice, it answers the same and the state is as before), ``learn_one``
    folds the frame in; over a stream with repeats, day changes and a restart of
    the times, the state round-trips through ``get_state`` / ``set_state``."""
    rng = np.random.default_rng(11)
    t0 = 1704067200.0
    frames = []
    for i in range(3000):
        x = np.array([np.sin(i / 30.0) + 0.1 * rng.standard_normal(), 5.0 if 800 < i < 900
                      else rng.standard_normal()])
        frames.append((x, t0 + 1800.0 * i - (86400.0 if i == 2000 else 0.0)))
    scale = np.ones(2)
    sources: list[tuple[Any, Any]] = [
        (RobustNormalizer(2), lambda x, t: (x,)),
        (AnomalyLikelihood(window=200, short=3, min_history=20, expected=1.0),
         lambda x, t: (float(abs(x[0])),)),
        (RangeNovelty(2, tol=0.1, warm=20, days=3), lambda x, t: (x, t)),
        (RangeNovelty(2, tol=0.1, warm=20, days=0), lambda x, t: (x, None)),
        (StuckSensor(2, warm=20), lambda x, t: (x,)),
        (WeekProfile(2), lambda x, t: (x, scale, t)),
    ]
    for source, args in sources:
        for i, (x, t) in enumerate(frames):
            a = args(x, t)
            before = source.get_state()
            first, second = source.score_one(*a), source.score_one(*a)
            assert _same(before, source.get_state()), (type(source).__name__, i)
            assert np.array_equal(first, second) if isinstance(first, np.ndarray) \
                else first == second
            source.learn_one(*a)
        restored = copy.deepcopy(source)
        restored.set_state(source.get_state())
        assert _same(restored.get_state(), source.get_state())
    dr = DailyRecurrence(days=2, slack=1, tol=3600.0, n_terms=2, short=2)
    for x, t in frames:
        before = dr.get_state()
        dr.score_one(t, 1.0, np.ones(2))
        assert _same(before, dr.get_state())
        dr.learn_one(t, np.abs(x))


def test_likelihood_high_only_for_unusual_levels() -> None:
    rng = np.random.default_rng(1)
    lik = AnomalyLikelihood(window=500, short=5, min_history=50)
    vals = [step(lik, float(abs(rng.standard_normal()))) for _ in range(1000)]
    assert vals[0] == 0.5 and all(0 <= v <= 1 for v in vals)
    assert np.mean(vals[100:]) < 0.7
    spike = max(step(lik, 20.0) for _ in range(3))
    assert spike > 0.999 and spike > max(vals[100:])


def test_range_novelty_flags_values_beyond_everything_seen() -> None:
    rn = RangeNovelty(2, tol=0.2, warm=5)
    frames = [[0.0, 10.0], [1.0, 12.0], [0.5, 11.0], [0.2, 10.5], [0.9, 11.5]]
    # nothing is flagged while warming up, however wide the swings
    assert not any(step(rn, np.array(f)) for f in frames)
    assert rn.lo.tolist() == [0.0, 10.0] and rn.hi.tolist() == [1.0, 12.0]
    # within the margin (20% of the range) is not news, on either side
    assert not step(rn, np.array([1.2, 9.6]))
    assert not step(rn, np.array([-0.2, 12.4]))
    # beyond it on one channel is; the range widens to include it
    assert step(rn, np.array([0.5, 13.5]))
    assert rn.hi[1] == 13.5
    assert not step(rn, np.array([0.5, 13.9]))  # within the widened margin
    assert step(rn, np.array([-1.0, 11.0]))  # below, on the other channel
    # a restored range flags exactly what the original does
    twin = RangeNovelty(2, tol=0.2, warm=5)
    twin.set_state(rn.get_state())
    probe = [np.array([2.0, 11.0]), np.array([0.0, 11.0]), np.array([2.5, 20.0])]
    assert [step(twin, f) for f in probe] == [step(rn, f) for f in probe]
    with pytest.raises(StateError):
        RangeNovelty(3).set_state(rn.get_state())
    # a constant channel has no range, so nothing is beyond it by a fraction of it
    flat = RangeNovelty(1, tol=0.2, warm=2)
    assert not any(step(flat, np.array([5.0])) for _ in range(10))


def test_range_forgets_a_glitch_after_its_days() -> None:
    """With ``days``, one glitch masks later excursions only while its day is
    within the range's horizon; without, for ever."""
    rng = np.random.default_rng(5)
    hour = 3600.0

    def stream(rn: RangeNovelty, start: int, hours: int) -> list[bool]:
        return [step(rn, np.array([rng.standard_normal()]), (start + h) * hour)
                for h in range(hours)]

    forgets, keeps = RangeNovelty(1, tol=0.2, warm=10, days=3), RangeNovelty(1, tol=0.2, warm=10)
    for rn in (forgets, keeps):
        stream(rn, 0, 30)
        assert step(rn, np.array([100.0]), 30 * hour)  # the glitch is an excursion
        stream(rn, 31, 24 * 5)  # five ordinary days after it
    # 8.0: far beyond the last days' values, well within the glitch's range
    assert step(forgets, np.array([8.0]), 151 * hour)
    assert not step(keeps, np.array([8.0]), 151 * hour)
    # a restored range flags exactly what the original does (blocks, cache, day)
    twin = RangeNovelty(1, tol=0.2, warm=10, days=3)
    twin.set_state(forgets.get_state())
    probe = [(np.array([v]), (152 + i) * hour) for i, v in enumerate([9.0, 0.5, -12.0, 13.0])]
    assert [step(twin, x, t) for x, t in probe] == [step(forgets, x, t) for x, t in probe]
    # an older snapshot (no day blocks): its whole range stands for the first day,
    # so the glitch still masks 8.0 there, and is forgotten three days later
    old = {k: v for k, v in keeps.get_state().items() if not k.startswith(("blk_", "day"))}
    seeded = RangeNovelty(1, tol=0.2, warm=10, days=3)
    seeded.set_state(old)
    assert not step(seeded, np.array([8.0]), 151 * hour)
    stream(seeded, 152, 24 * 3)
    assert step(seeded, np.array([8.0]), 224 * hour)
    # after a gap longer than the horizon, nothing is flagged until warm frames are in range
    gap = RangeNovelty(1, tol=0.2, warm=10, days=3)
    stream(gap, 0, 48)
    assert not any(step(gap, np.array([v]), (500 + i) * hour)
                   for i, v in enumerate([0.0, 50.0, -50.0, 200.0, 0.0, 400.0, 1.0, 2.0, 3.0, 4.0]))
    assert step(gap, np.array([3000.0]), 510 * hour)
    # frames without a time fold into the current day (and count towards warm)
    assert not step(gap, np.array([3100.0])) and gap.blk_hi.max() == 3100.0
    # only whole days matter: times shifted by whole days (before 1970 too) flag the same
    x = rng.standard_normal(24 * 12) * np.repeat([1.0, 3.0, 1.0, 0.5, 4.0, 1.0], 48)
    flags = []
    for shift in (0.0, -400 * 86400.0, 20_000 * 86400.0):
        rn = RangeNovelty(1, tol=0.2, warm=10, days=2)
        flags.append([step(rn, np.array([v]), shift + 1800.0 * i) for i, v in enumerate(x)])
    assert flags[0] == flags[1] == flags[2] and any(flags[0])


def test_stuck_sensor_flags_a_run_longer_than_any_before() -> None:
    rng = np.random.default_rng(2)
    ss = StuckSensor(2, factor=2.0, min_run=5, warm=10)
    noisy = rng.standard_normal((40, 2))
    assert not any(step(ss, f) for f in noisy)  # nothing repeats
    # channel 1 sticks: flagged once, when its run reaches min_run (5 repeats)
    flags = [step(ss, np.array([rng.standard_normal(), 7.0])) for _ in range(12)]
    assert flags == [False] * 5 + [True] + [False] * 6
    assert ss.longest[1] == 0 and ss.run[1] == 11
    # it moves again: the longest run is now 11, so the next alarm needs 22 repeats
    step(ss, np.array([0.0, 1.0]))
    assert ss.longest[1] == 11
    flags = [step(ss, np.array([rng.standard_normal(), 3.0])) for _ in range(30)]
    assert flags.index(True) == 22 and sum(flags) == 1
    # a restored detector goes on as the original
    twin = StuckSensor(2, factor=2.0, min_run=5, warm=10)
    twin.set_state(ss.get_state())
    probe = [np.array([0.5, 3.0])] * 3 + [np.array([0.5, 4.0])]
    assert [step(twin, f) for f in probe] == [step(ss, f) for f in probe]
    with pytest.raises(StateError):
        StuckSensor(3).set_state(ss.get_state())
    # nothing before warm-up
    early = StuckSensor(1, min_run=2, warm=100)
    assert not any(step(early, np.array([1.0])) for _ in range(50))


def test_stuck_sensor_tells_the_channels_that_never_changed() -> None:
    ss = StuckSensor(3)
    assert ss.unchanged().all()  # (nothing seen yet)
    for k in range(30):  # channel 1 never changes, channel 2 from frame 20 on
        step(ss, np.array([float(k % 4), 5.0, 0.0 if k < 20 else 1.0]))
    assert ss.unchanged().tolist() == [False, True, False]
    # a change that comes back to the first value does not undo it
    step(ss, np.array([0.0, 5.0, 0.0]))
    assert ss.unchanged().tolist() == [False, True, False]
    twin = StuckSensor(3)
    twin.set_state(ss.get_state())  # (from the runs: nothing new in the state)
    assert twin.unchanged().tolist() == [False, True, False]


def test_likelihood_spread_is_floored_at_a_tenth_of_the_expected_level() -> None:
    # raw scores far below their expected mean (terms that contribute nothing),
    # then a jump that stays below it: news only without the floor
    def after(window: npt.NDArray[np.float64], x: float, expected: float) -> float:
        lik = AnomalyLikelihood(window=500, short=1, min_history=50, expected=expected)
        for v in window:
            step(lik, float(v))
        return step(lik, x)

    quiet = 0.2 + 0.001 * np.random.default_rng(4).standard_normal(300)
    assert after(quiet, 1.2, 0.0) > 0.9999 and after(quiet, 1.2, 3.5) < 0.999
    # around the expected mean, a very steady window counts as varying by
    # 0.35: a rise of 2.0 (5.7 of that) still alarms, one of 1.0 no longer does
    steady = 3.5 + 0.01 * np.random.default_rng(5).standard_normal(300)
    for rise, alarms in ((2.0, (True, True)), (1.0, (True, False))):
        got = tuple(after(steady, 3.5 + rise, expected) >= 0.9999 for expected in (0.0, 3.5))
        assert got == alarms, rise


def test_daily_recurrence_needs_the_level_on_most_of_the_last_days() -> None:
    t0 = 1704067200.0  # Monday 2024-01-01 00:00 UTC
    day, noon = 86400.0, 12 * 3600.0

    def history(peaks: dict[int, float], *, slack: int = 1, short: int = 1
                ) -> DailyRecurrence:
        """Two terms every 5 minutes over four days: (0.1, 0.05), and (1.0, 0.5)
        at the seconds after midnight given per day in ``peaks``."""
        dr = DailyRecurrence(days=3, slack=slack, tol=3600.0, ratio=0.8, bin_s=600.0,
                             n_terms=2, short=short)
        for k in range(4 * 288):
            t = t0 + 300.0 * k
            d = k // 288
            at = peaks.get(d)
            hit = at is not None and t - t0 - d * day == at
            dr.learn_one(t, np.array([1.0, 0.5]) if hit else np.array([0.1, 0.05]))
        return dr

    every = {0: noon, 1: noon, 2: noon, 3: noon}
    dr = history(every)
    now = t0 + 4 * day + noon
    first = np.array([1.0, 0.0])  # the first term alone, at weight 1
    assert dr.score_one(now, 1.0, first) and dr.score_one(now, 1.25, first)
    assert not dr.score_one(now, 1.3, first)  # 0.8 * 1.3 above every earlier peak
    # earlier peaks are re-measured by the weights of now: when the running
    # means have halved, the same inputs are twice the level
    assert dr.score_one(now, 2.5, 2 * first) and not dr.score_one(now, 2.6, 2 * first)
    assert dr.score_one(now, 1.25, np.array([0.0, 2.0]))  # every term counts
    assert not dr.score_one(now, 1.0, np.array([0.0, 1.0]))
    assert not dr.score_one(now + 3 * 3600.0, 1.0, first)  # another time of day
    assert dr.score_one(now + 3000.0, 1.0, first)  # within the tolerance (and its bin)
    # three of the last four days must have had it: one may lack it ...
    assert history({0: noon, 1: noon, 3: noon}).score_one(now, 1.0, first)
    assert history({1: noon, 2: noon, 3: noon}).score_one(now, 1.0, first)
    # ... two may not
    assert not history({1: noon, 3: noon}).score_one(now, 1.0, first)
    assert not history({0: noon, 1: noon}).score_one(now, 1.0, first)
    # without slack, each of the last three days
    assert not history({0: noon, 1: noon, 3: noon}, slack=0).score_one(now, 1.0, first)
    assert history({1: noon, 2: noon, 3: noon}, slack=0).score_one(now, 1.0, first)
    # a peak an hour and a half off is outside the tolerance
    assert history({0: noon, 1: noon, 2: noon, 3: noon + 5400.0}).score_one(now, 1.0, first)
    assert not history({0: noon, 1: noon + 5400.0, 2: noon, 3: noon + 5400.0}).score_one(
        now, 1.0, first)
    # the peaks are of short means: a one-step peak in a mean of three steps
    three = history(every, short=3)
    assert three.score_one(now, 0.5, first) and not three.score_one(now, 0.51, first)
    # restored bins answer as the original
    twin = DailyRecurrence(days=3, slack=1, tol=3600.0, ratio=0.8, bin_s=600.0, n_terms=2,
                           short=1)
    twin.set_state(dr.get_state())
    assert twin.score_one(now, 1.0, first) and not twin.score_one(now, 1.3, first)
    # other days, slack or terms: the bins do not fit (the agent starts them over)
    with pytest.raises(StateError):
        DailyRecurrence(days=2, tol=3600.0, n_terms=2, short=1).set_state(dr.get_state())
    with pytest.raises(StateError):
        DailyRecurrence(days=3, slack=2, tol=3600.0, n_terms=2, short=1).set_state(
            dr.get_state())
    with pytest.raises(StateError):
        DailyRecurrence(days=3, slack=1, tol=3600.0, short=1).set_state(dr.get_state())
    old = {"ids": dr.ids, "peak": dr.peak[:, 0]}  # (a snapshot from before the terms)
    with pytest.raises(StateError):
        DailyRecurrence(days=3, slack=1, tol=3600.0, n_terms=2, short=1).set_state(old)
    for bad in ({"recurrence_days": -1}, {"recurrence_tol": 43200.0},
                {"recurrence_slack": -1}, {"recurrence_ratio": 0.0}):
        with pytest.raises(ValidationError):  # (the settings the detector builds it from)
            ScoreSettings(**bad)

def weekly_traffic(weeks: int, *, holiday_day: int | None = None, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Stream times (5-minute steps from Monday 2024-01-01 00:00 UTC) and a
    traffic-like value: a daily hump on weekdays, flat and low at weekends; on
    ``holiday_day`` (days since the start) a weekday looks like a Sunday."""
    rng = np.random.default_rng(seed)
    t = 1704067200.0 + 300.0 * np.arange(weeks * 7 * 288)
    day = ((t - t[0]) // 86400).astype(int)
    hour = ((t - t[0]) % 86400) / 3600.0
    weekday = (day % 7) < 5
    if holiday_day is not None:
        weekday &= day != holiday_day
    hump = np.exp(-0.5 * ((hour - 14.0) / 3.0) ** 2)
    x = 1.0 + np.where(weekday, 3.0 * hump, 0.5 * hump) + 0.1 * rng.standard_normal(t.size)
    return t, x


def test_week_profile_finds_a_day_unlike_the_same_day_of_other_weeks() -> None:
    t, x = weekly_traffic(5, holiday_day=23)  # the Wednesday of week 4
    wp = WeekProfile(1)
    one = np.ones(1)
    dev = [step(wp, np.array([v]), one, float(tt)) for v, tt in zip(x, t, strict=True)]
    usual = WeekProfile.WEEKS * 7 * 288  # an hour of the week is usual from then on
    assert all(d is None for d in dev[:usual]) and all(d is not None for d in dev[usual:])
    week = 7 * 288
    d = np.array([v if v is not None else 0.0 for v in dev])
    holiday = slice(23 * 288, 24 * 288)
    ordinary = np.r_[d[2 * week:23 * 288], d[25 * 288:]]  # a day after it, the buckets are clear
    assert d[holiday].max() > 3 * ordinary.max()
    # a restored profile goes on exactly as the original
    wp2 = WeekProfile(1)
    for v, tt in zip(x[:3000], t[:3000], strict=True):
        step(wp2, np.array([v]), one, float(tt))
    twin = WeekProfile(1)
    twin.set_state(wp2.get_state())
    for v, tt in zip(x[3000:3100], t[3000:3100], strict=True):
        assert step(twin, np.array([v]), one, float(tt)) == \
            step(wp2, np.array([v]), one, float(tt))
    with pytest.raises(StateError):
        WeekProfile(2).set_state(wp2.get_state())
    # after a gap of more than a day, the last day's buckets hold only what came after it
    after_gap = step(wp2, np.array([x[3100]]), one, float(t[3100]) + 4 * 86400.0)
    assert wp2.bcount.sum() == 1.0 and after_gap is not None
    # only the time of the week matters: shifted by whole weeks (before 1970 too),
    # the deviations are the same
    n = 9 * 288
    for weeks in (-3000, 2):
        shifted = WeekProfile(1)
        assert [step(shifted, np.array([v]), one, float(tt) + weeks * 7 * 86400.0)
                for v, tt in zip(x[:n], t[:n], strict=True)] == dev[:n]


def test_bio_gate_hysteresis_and_drive() -> None:
    bio = BioSystem(BioSettings(cost=0.05, recovery=0.001, rest_boost=10.0))
    steps = 0
    while bio.can_learn():
        bio.step(1.0)
        steps += 1
        assert steps < 10_000
    assert bio.energy < bio.config.gate_threshold and bio.gated
    bio.step(0.0)
    assert not bio.can_learn()  # hysteresis: not back until resume_threshold
    while not bio.can_learn():
        bio.step(0.0)
    assert bio.energy >= bio.config.resume_threshold
    for loss in [1.0] * 200:
        bio.observe_loss(loss)
    base = bio.learning_drive
    for loss in [5.0] * 10:
        bio.observe_loss(loss)
    assert bio.learning_drive > base and bio.mood < 0
    mods = bio.modulators()
    assert {"energy_gate", "learning_drive", "mood", "fatigue"} <= set(mods)
    for bad in ({"gate_threshold": 0.5, "resume_threshold": 0.2},
                {"drive_min": 2.0, "drive_max": 1.0}, {"cost": float("nan")}):
        with pytest.raises(ValidationError):
            BioSettings(**bad)


def test_mode_cycler_shares() -> None:
    mc = ModeCycler(ModeSettings(shares=(2, 1, 1), period=40))
    modes = [mc.mode_at(i) for i in range(80)]
    assert modes.count("normal") == 40 and modes.count("random") == 20
    assert modes[:20] == ["normal"] * 20
    for bad in ((0, 0, 0), (1, -1, 1)):
        with pytest.raises(ValidationError):
            ModeSettings(shares=bad)


def test_synthetic_signal_chunking_and_labels() -> None:
    s = SyntheticSignal(3, anomaly_every=1000, seed=4)
    a, la = s.generate(0, 5000)
    b1, lb1 = s.generate(0, 1234)
    b2, lb2 = s.generate(1234, 5000 - 1234)
    np.testing.assert_array_equal(a, np.concatenate([b1, b2]))
    np.testing.assert_array_equal(la, np.concatenate([lb1, lb2]))
    assert la.any() and np.all(np.isfinite(a))


def test_csv_reader_errors(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text("timestamp,a,b\n2020-01-01 00:00:00,1,2\n2020-01-01 00:05:00,3,x\n")
    with pytest.raises(CsvError) as e:
        read_csv_stream(p)
    assert e.value.fields["line"] == 3
    p.write_text("timestamp,a,b\n2020-01-01 00:00:00,1,2\n2020-01-01 00:05:00,3,4\n")
    s = read_csv_stream(p)
    assert s.columns == ["a", "b"] and s.t[1] - s.t[0] == 300.0
    with pytest.raises(CsvError):
        read_csv_stream(p, value_columns=["c"])


def test_replay_cli_writes_one_row_per_input_row(tmp_path: Path) -> None:
    src = tmp_path / "in" / "cat"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.csv", "b.csv"):
        with (src / name).open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["timestamp", "value"])
            for i in range(300):
                w.writerow([f"2020-01-01 {i // 60:02d}:{i % 60:02d}:00",
                            f"{np.sin(i / 5) + 0.1 * rng.standard_normal():.5f}"])
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "lillith.runtime.cli", "replay",
                          str(tmp_path / "in"), "--out", str(out), "--quiet"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(lines) == 2 and all(x["rows"] == 300 for x in lines)
    with (out / "cat" / "a.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 300
    assert set(rows[0]) >= {"timestamp", "value", "anomaly_score", "anomaly_likelihood",
                            "prediction", "loss", "bmu", "mode", "energy", "skipped"}
    preds = np.array([float(r["prediction"]) for r in rows[100:-1]])
    vals = np.array([float(r["value"]) for r in rows[101:]])
    assert np.mean(np.abs(preds - vals)) < 0.5  # forecasts are in the input's units


def test_csv_reader_detects_the_delimiter_and_never_reads_labels(tmp_path: Path) -> None:
    """A SKAB file as published: ``;``-separated, a ``datetime`` column and the
    label columns ``anomaly`` and ``changepoint``, which are never input."""
    f = tmp_path / "0.csv"
    rows = ["datetime;Accelerometer1RMS;Current;Volume Flow RateRMS;anomaly;changepoint"]
    for i in range(60):
        rows.append(f"2020-03-09 10:{14 + i // 60:02d}:{i % 60:02d};0.026{i % 7};1.3{i % 5};"
                    f"32.0;{int(i >= 40)}.0;{int(i == 40)}.0")
    f.write_text("\n".join(rows) + "\n")
    s = read_csv_stream(f, timestamp_column="datetime")
    assert s.columns == ["Accelerometer1RMS", "Current", "Volume Flow RateRMS"]
    assert s.values.shape == (60, 3) and s.t[1] - s.t[0] == 1.0
    # named explicitly, a label column is read (the caller's choice)
    assert read_csv_stream(f, timestamp_column="datetime",
                           value_columns=["anomaly"]).values[:, 0].sum() == 20
    # and an excluded column is left out
    assert read_csv_stream(f, timestamp_column="datetime",
                           exclude=("anomaly", "changepoint", "Current")).columns == [
        "Accelerometer1RMS", "Volume Flow RateRMS"]
    out = tmp_path / "out.csv"
    done = subprocess.run([sys.executable, "-m", "lillith.runtime.cli", "replay", str(f),
                           "--out", str(out), "--timestamp-column", "datetime", "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    with out.open() as fh:
        got = list(csv.DictReader(fh))
    assert len(got) == 60 and "anomaly" not in got[0] and "alarm" in got[0]
    assert {k for k in got[0] if k.startswith("prediction_")} == {
        "prediction_Accelerometer1RMS", "prediction_Current", "prediction_Volume Flow RateRMS"}
    done = subprocess.run([sys.executable, "-m", "lillith.runtime.cli", "replay", str(f),
                           "--out", str(out), "--timestamp-column", "datetime", "--quiet",
                           "--columns", "Current,Volume Flow RateRMS"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    with out.open() as fh:
        assert next(csv.reader(fh))[1:3] == ["Current", "Volume Flow RateRMS"]
