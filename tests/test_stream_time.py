"""Stream time that steps back or repeats, and the untrained forecast."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lillith.agents.agent import MAX_ABS_T, Agent, AgentError
from lillith.agents.config import AgentConfig
from lillith.eval import nab
from lillith.runtime.replay import replay_paths
from lillith.sensors.csvfile import read_csv_stream

T0 = 1_400_000_000.0  # 2014-05-13, as in NAB's machine temperature file
STEP = 300.0
BACK_AT = 2000  # this row's time steps back an hour, as NAB's file has once


def _times(n: int, *, back: bool) -> np.ndarray:
    t = T0 + STEP * np.arange(n)
    if back:
        t[BACK_AT:] -= 3600.0  # the clock went back: 12 rows repeat an hour
    return t


def _values(n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    day = np.sin(2 * np.pi * np.arange(n) / 288.0)
    x = 80 + 5 * day + rng.standard_normal(n)
    x[3500] = 140.0  # beyond any range: an excursion after the step
    return x


def _write(path: Path, t: np.ndarray, x: np.ndarray) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "value"])
        for ti, xi in zip(t, x, strict=True):
            w.writerow([datetime.fromtimestamp(ti, UTC).strftime("%Y-%m-%d %H:%M:%S"),
                        f"{xi:.4f}"])


def test_time_stepping_back_is_processed_in_file_order_and_counted(tmp_path: Path) -> None:
    n = 16 * 288  # two weeks and more: the weekly context and the recurrence are on
    x = _values(n)
    ts_back, ts_mono = _times(n, back=True), _times(n, back=False)
    a = Agent(1, AgentConfig(seed=0))
    got = a.process_many(x.reshape(-1, 1), list(ts_back))
    ref = Agent(1, AgentConfig(seed=0)).process_many(x.reshape(-1, 1), list(ts_mono))
    # one output per row, in file order, the time passed through
    assert [m.t for m in got] == list(ts_back)
    assert all(np.isfinite(m.anomaly_likelihood) and np.isfinite(m.prediction[0]) for m in got)
    # counted: the 12 rows of the repeated hour went back (one of them met the latest time)
    frames = a.get_state()["agent/frames"]
    assert (int(frames[0]), int(frames[1])) == (11, 1)
    # nothing the model learns depends on time
    assert [m.prediction for m in got] == [m.prediction for m in ref]
    # the time-based features stay with the latest time: the range's day, the
    # weekly context's newest hour, and they keep working after the step
    det = a.detector
    assert det.range.day == int(ts_back[-1] // 86400)
    assert det.week.hour == int(ts_back[-1] // 3600)
    assert got[3500].alarm and got[3500].alarm_reason == "range"
    assert ref[3500].alarm_reason == "range"
    # away from the step (a day either side), the decisions are those of a clean clock
    far = [i for i in range(n) if abs(i - BACK_AT) > 288]
    assert [got[i].alarm for i in far] == [ref[i].alarm for i in far]
    # a snapshot taken after the step resumes the same way
    b = Agent(1, AgentConfig(seed=0))
    b.process_many(x[:2500].reshape(-1, 1), list(ts_back[:2500]))
    c = Agent.from_state(b.get_state())
    rest = c.process_many(x[2500:].reshape(-1, 1), list(ts_back[2500:]))
    assert [m.anomaly_likelihood for m in rest] == [m.anomaly_likelihood for m in got[2500:]]


def test_a_file_stepping_back_replays_and_scores_as_nab(tmp_path: Path) -> None:
    n = 4000
    x = _values(n)
    t = _times(n, back=True)
    root = tmp_path / "nab"
    (root / "data" / "realKnownCause").mkdir(parents=True)
    f = root / "data" / "realKnownCause" / "machine.csv"
    _write(f, t, x)
    stamps = [datetime.fromtimestamp(v, UTC).strftime("%Y-%m-%d %H:%M:%S.000000")
              for v in (t[3400], t[3600])]
    (root / "labels_windows.json").write_text(json.dumps({"realKnownCause/machine.csv":
                                                          [stamps]}))
    streams = nab.load_corpus(root)  # (it refused the corpus before)
    assert streams[0].windows == [(3400, 3600)]
    stream = read_csv_stream(f)
    assert np.array_equal(stream.t, t)
    res = replay_paths([f], tmp_path / "out.csv", AgentConfig(), show_progress=False)
    assert res[0].rows == n
    with (tmp_path / "out.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["timestamp"] for r in rows] == stream.timestamps
    assert rows[3500]["alarm"] == "1" and rows[3500]["alarm_reason"] == "range"
    assert all((r["alarm"] == "1") == bool(r["alarm_reason"]) for r in rows)
    assert (res[0].times_back, res[0].times_repeated) == (11, 1)
    scores = {streams[0].path: np.array([float(r["anomaly_likelihood"]) for r in rows])}
    assert nab.score_corpus(streams, scores)["tp"] == 1  # the excursion at row 3500


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.floats(-1e6, 1e6, allow_nan=False),
       st.floats(1e-3, 1e3, allow_nan=False))
def test_the_first_forecast_is_persistence(channels: int, level: float, spread: float) -> None:
    rng = np.random.default_rng(0)
    x = level + spread * rng.standard_normal((3, channels))
    a = Agent(channels, AgentConfig(seed=0, fabric={"shape": (3, 3, 4)}))
    m = a.process(x[0])
    assert m.prediction == pytest.approx(list(x[0]), rel=1e-12, abs=1e-9)
    # (it was 2 x the first value: the first frame normalised against no statistics)


def test_absurd_times_are_refused_before_anything_changes() -> None:
    a = Agent(1, AgentConfig(seed=0, fabric={"shape": (3, 3, 4)}))
    a.process_many(np.ones((5, 1)), [T0 + i for i in range(5)])
    before = a.get_state()
    for bad in (4e22, -MAX_ABS_T * 10, float("nan"), float("inf")):
        with pytest.raises(AgentError):
            a.process_many(np.ones((3, 1)), [T0 + 10, bad, T0 + 20])
    after = a.get_state()
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)
