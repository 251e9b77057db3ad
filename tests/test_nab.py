"""Tests of lillith.eval.nab (NAB v1.1 scoring)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lillith.eval.nab import (
    PROFILES,
    CostProfile,
    NabError,
    NabStream,
    load_corpus,
    probation_length,
    read_scores,
    row_weights,
    scaled_sigmoid,
    score_all_profiles,
    score_corpus,
    window_ids,
)

# the development corpus, where $LILLITH_DATA points (the project does not ship it)
NAB_ROOT = Path(os.environ.get("LILLITH_DATA", "/nonexistent")) / "nab"
REFERENCE = {"standard": 36.71, "reward_low_FP_rate": 21.40, "reward_low_FN_rate": 45.17}


def _tanh_half(x: float) -> float:
    """``2 sigma(x) - 1``."""
    return math.tanh(x / 2.0)


# --------------------------------------------------------------------------
# a literal (slow, per-row) port of NAB's Sweeper, for cross-checking
# --------------------------------------------------------------------------


def _nab_scaled_sigmoid(p: float) -> float:
    if p > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * p)) - 1.0


def _nab_sweep(
    n: int, windows: list[tuple[int, int]], prof: CostProfile
) -> list[tuple[float, str | None]]:
    """(weight, window name or None or 'probationary') per row, as NAB does."""
    max_tp = _nab_scaled_sigmoid(-1.0)
    probation = min(math.floor(0.15 * n), 0.15 * 5000)
    pending = list(windows)
    cur: tuple[int, int] | None = None
    prev_right: int | None = None
    prev_width = 0.0
    out: list[tuple[float, str | None]] = []
    for i in range(n):
        if pending and i == pending[0][0]:
            cur = pending.pop(0)
        name: str | None
        if cur is not None:
            width = float(cur[1] - cur[0] + 1)
            weight = _nab_scaled_sigmoid(-(cur[1] - i + 1) / width) * prof.tp / max_tp
            name = f"w{cur[0]}"
        else:
            if prev_right is None:
                unweighted = -1.0
            else:
                denom = prev_width - 1.0
                p = abs(prev_right - i) / denom if denom > 0 else math.inf
                unweighted = _nab_scaled_sigmoid(p)
            weight = unweighted * prof.fp
            name = None
        out.append((weight, name if i >= probation else "probationary"))
        if cur is not None and i == cur[1]:
            prev_right = i
            prev_width = float(cur[1] - cur[0] + 1)
            cur = None
    return out


def _nab_raw_at(
    sweep: list[tuple[float, str | None]],
    scores: npt.NDArray[np.float64],
    th: float,
    prof: CostProfile,
) -> float:
    parts: dict[str, float] = {"fp": 0.0}
    for _, name in sweep:
        if name not in ("probationary", None):
            parts[name] = -prof.fn
    for (weight, name), s in zip(sweep, scores, strict=True):
        if name == "probationary" or not s >= th:
            continue
        if name is None:
            parts["fp"] += weight
        else:
            parts[name] = max(parts[name], weight)
    return sum(parts.values())


def _stream(path: str, n: int, windows: list[tuple[int, int]]) -> NabStream:
    ts = np.datetime64("2020-01-01T00:00:00", "ns") + np.arange(n) * np.timedelta64(5, "m")
    return NabStream(path=path, timestamps=ts, values=np.zeros(n), windows=windows)


def _spikes(n: int, rows: list[int]) -> npt.NDArray[np.float64]:
    s = np.zeros(n)
    s[rows] = 1.0
    return s


# --------------------------------------------------------------------------
# reference corpus
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus() -> list[NabStream]:
    if not (NAB_ROOT / "labels_windows.json").is_file():
        pytest.skip(f"NAB data not found at {NAB_ROOT} (set LILLITH_DATA)")
    return load_corpus(NAB_ROOT)


def test_load_corpus(corpus: list[NabStream]) -> None:
    assert len(corpus) == 31
    by_path = {s.path: s for s in corpus}
    taxi = by_path["realKnownCause/nyc_taxi.csv"]
    assert taxi.n == 10320
    assert taxi.timestamps.dtype == np.dtype("datetime64[ns]")
    assert taxi.values.dtype == np.float64
    assert taxi.values[:2].tolist() == [10844.0, 8127.0]
    assert taxi.windows[0] == (5839, 6045)
    assert taxi.timestamps[5839] == np.datetime64("2014-10-30T15:30:00")
    assert taxi.probation == 750
    assert by_path["artificialNoAnomaly/art_noisy.csv"].windows == []
    assert sum(len(s.windows) for s in corpus) == 57


def test_reference_scores(corpus: list[NabStream]) -> None:
    ref_dir = NAB_ROOT / "reference_results" / "windowedGaussian"
    if not ref_dir.is_dir():
        pytest.skip(f"reference results not found at {ref_dir}")
    scores = read_scores(ref_dir, corpus)
    result = score_all_profiles(corpus, scores)
    assert set(result) == set(REFERENCE)
    for name, expected in REFERENCE.items():
        assert result[name] == pytest.approx(expected, abs=0.01), name
    detail = score_corpus(corpus, scores, "standard")
    assert detail["score"] == result["standard"]
    assert detail["tp"] + detail["fn"] == detail["n_windows"] == 57
    assert detail["raw"] == pytest.approx(sum(detail["per_file_raw"].values()))


# --------------------------------------------------------------------------
# read_scores naming
# --------------------------------------------------------------------------


def test_read_scores_prefixed_and_named_column(tmp_path: Path) -> None:
    stream = _stream("cat/a_b.csv", 4, [])
    (tmp_path / "cat").mkdir()
    lines = ["timestamp,anomaly_score,anomaly_likelihood"]
    for i, t in enumerate(stream.timestamps):
        ts = str(t.astype("datetime64[s]")).replace("T", " ")
        lines.append(f"{ts},{i / 10},{1 - i / 10}")
    (tmp_path / "cat" / "det_a_b.csv").write_text("\n".join(lines) + "\n")
    got = read_scores(tmp_path, [stream])
    np.testing.assert_allclose(got["cat/a_b.csv"], [0.0, 0.1, 0.2, 0.3])
    got = read_scores(tmp_path, [stream], column="anomaly_likelihood")
    np.testing.assert_allclose(got["cat/a_b.csv"], [1.0, 0.9, 0.8, 0.7])
    (tmp_path / "cat" / "other_a_b.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(NabError, match="ambiguous"):
        read_scores(tmp_path, [stream])
    (tmp_path / "cat" / "a_b.csv").write_text("\n".join(lines[:3]) + "\n")
    with pytest.raises(NabError, match="row count"):
        read_scores(tmp_path, [stream])  # exact name wins, but it is too short
    with pytest.raises(NabError, match="column"):
        read_scores(tmp_path, [stream], column="nope")


# --------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------


def test_probation_length() -> None:
    assert probation_length(100) == 15
    assert probation_length(4032) == 604
    assert probation_length(5000) == 750
    assert probation_length(15902) == 750


def test_scaled_sigmoid() -> None:
    assert float(scaled_sigmoid(0.0)) == 0.0
    assert float(scaled_sigmoid(-1.0)) == pytest.approx(math.tanh(2.5))
    assert float(scaled_sigmoid(3.0)) == pytest.approx(-math.tanh(7.5))
    assert float(scaled_sigmoid(3.0001)) == -1.0


def test_row_weights_match_formulas() -> None:
    n, windows = 100, [(30, 39), (60, 64)]
    prof = PROFILES["reward_low_FP_rate"]
    w = row_weights(n, windows, prof)
    assert w[:30].tolist() == [-prof.fp] * 30  # before the first window
    assert w[30] == pytest.approx(prof.tp)  # first row of a window: exactly tp
    assert w[39] == pytest.approx(_tanh_half(5 / 10) / _tanh_half(5))
    assert np.all(np.diff(w[30:40]) < 0)
    # between windows the first window's geometry applies: p = (i - 39) / 9
    assert w[40] == pytest.approx(-prof.fp * _tanh_half(5 / 9))
    assert w[59] == pytest.approx(-prof.fp * _tanh_half(5 * 20 / 9))
    # after the second window (width 5): p = (i - 64) / 4
    assert w[65] == pytest.approx(-prof.fp * _tanh_half(5 / 4))
    assert w[77] == -prof.fp  # p = 13 / 4 > 3
    ids = window_ids(n, windows)
    assert ids[29] == -1 and ids[30] == 0 and ids[64] == 1 and ids[65] == -1
    sweep = _nab_sweep(n, windows, prof)
    np.testing.assert_allclose(w, [x for x, _ in sweep], rtol=1e-12)


# --------------------------------------------------------------------------
# tiny hand-built files (n = 100, probation = 15 rows)
# --------------------------------------------------------------------------


def test_detection_at_window_start_earns_tp() -> None:
    s = _stream("c/f.csv", 100, [(40, 49)])
    r = score_corpus([s], {s.path: _spikes(100, [40])}, "standard")
    assert r["per_file_raw"][s.path] == pytest.approx(1.0)
    assert r["threshold"] == 1.0
    assert (r["tp"], r["fn"], r["fp"]) == (1, 0, 0)
    assert r["score"] == pytest.approx(100.0)


def test_detection_at_window_end_earns_less() -> None:
    s = _stream("c/f.csv", 100, [(40, 49)])
    r = score_corpus([s], {s.path: _spikes(100, [49])}, "standard")
    expected = _tanh_half(5 / 10) / _tanh_half(5)  # S(-1/10) / S(-1)
    assert expected == pytest.approx(0.2482415, abs=1e-6)
    assert r["raw"] == pytest.approx(expected)
    assert r["score"] == pytest.approx(100 * (expected + 1) / 2)
    mid = score_corpus([s], {s.path: _spikes(100, [44])}, "standard")
    assert expected < mid["raw"] < 1.0


def test_no_detections_scores_zero() -> None:
    streams = [_stream("c/f.csv", 100, [(40, 49)]), _stream("c/g.csv", 100, [])]
    zeros = {st_.path: np.zeros(100) for st_ in streams}
    for name in PROFILES:
        r = score_corpus(streams, zeros, name)
        assert r["score"] == 0.0
        assert r["threshold"] == math.inf
        assert (r["tp"], r["fn"], r["fp"]) == (0, 1, 0)
    # a constant detector is no better than never firing
    half = {st_.path: np.full(100, 0.5) for st_ in streams}
    assert score_corpus(streams, half)["score"] == 0.0


def test_perfect_detector() -> None:
    # S(-1) * tp / S(-1) = tp at a window's first row, so one detection at each
    # window start (and nowhere else) scores exactly 100 in every profile.
    streams = [
        _stream("c/f.csv", 100, [(30, 39), (60, 79)]),
        _stream("c/g.csv", 200, [(100, 129)]),
        _stream("c/h.csv", 100, []),
    ]
    scores = {
        "c/f.csv": _spikes(100, [30, 60]),
        "c/g.csv": _spikes(200, [100]),
        "c/h.csv": np.zeros(100),
    }
    for name, val in score_all_profiles(streams, scores).items():
        assert val == pytest.approx(100.0, abs=1e-9), name
    # one row late on every window: hand-computed S(-(W-1)/W) / S(-1)
    late = {
        "c/f.csv": _spikes(100, [31, 61]),
        "c/g.csv": _spikes(200, [101]),
        "c/h.csv": np.zeros(100),
    }
    raw = sum(_tanh_half(5 * (w - 1) / w) / _tanh_half(5) for w in (10, 20, 30))
    r = score_corpus(streams, late, "standard")
    assert r["raw"] == pytest.approx(raw)
    assert r["score"] == pytest.approx(100 * (raw + 3) / 6)


def test_false_positive_far_from_window_costs_fp() -> None:
    s = _stream("c/f.csv", 100, [(20, 29)])
    scores = {s.path: _spikes(100, [20, 90])}  # p = 61 / 9 > 3
    for name, prof in PROFILES.items():
        r = score_corpus([s], scores, name)
        assert r["raw"] == pytest.approx(prof.tp - prof.fp), name
        assert (r["tp"], r["fp"]) == (1, 1)
    # before the first window: -fp too
    s2 = _stream("c/f.csv", 100, [(60, 69)])
    r = score_corpus([s2], {s2.path: _spikes(100, [16, 60])}, "standard")
    assert r["raw"] == pytest.approx(1.0 - 0.11)
    # just after the window costs little: p = 1 / 9
    r = score_corpus([s], {s.path: _spikes(100, [20, 30])}, "standard")
    assert r["raw"] == pytest.approx(1.0 - 0.11 * _tanh_half(5 / 9))


def test_probation_rows_ignored() -> None:
    s = _stream("c/f.csv", 100, [(40, 49)])
    r = score_corpus([s], {s.path: _spikes(100, [3, 14, 40])}, "standard")
    assert r["raw"] == pytest.approx(1.0)
    assert r["fp"] == 0
    # a window entirely inside probation is not scored (no -fn, not counted)
    s2 = _stream("c/g.csv", 100, [(2, 8), (40, 49)])
    r = score_corpus([s2], {s2.path: _spikes(100, [2, 40])}, "standard")
    assert r["n_windows"] == 1
    assert r["raw"] == pytest.approx(1.0)
    assert r["score"] == pytest.approx(100.0)
    # a window straddling the end of probation counts; rows 10..14 are ignored
    # and the best it can earn is the weight of row 15: S(-5/10) / S(-1)
    s3 = _stream("c/h.csv", 100, [(10, 19)])
    r = score_corpus([s3], {s3.path: _spikes(100, [10])}, "standard")
    assert (r["raw"], r["tp"], r["fn"]) == (-1.0, 0, 1)
    r = score_corpus([s3], {s3.path: _spikes(100, [10, 15])}, "standard")
    assert r["raw"] == pytest.approx(_tanh_half(2.5) / _tanh_half(5))


def test_nan_scores_never_detect_and_errors() -> None:
    s = _stream("c/f.csv", 100, [(40, 49)])
    scores = np.full(100, np.nan)
    scores[40] = 0.7
    r = score_corpus([s], {s.path: scores})
    assert r["raw"] == pytest.approx(1.0)
    assert r["threshold"] == 0.7
    with pytest.raises(NabError, match="no scores"):
        score_corpus([s], {})
    with pytest.raises(NabError, match="shape"):
        score_corpus([s], {s.path: np.zeros(99)})
    with pytest.raises(NabError, match="unknown profile"):
        score_corpus([s], {s.path: np.zeros(100)}, "nope")


# --------------------------------------------------------------------------
# exact threshold search vs brute force
# --------------------------------------------------------------------------


@st.composite
def _files(draw: st.DrawFn) -> tuple[list[NabStream], dict[str, npt.NDArray[np.float64]]]:
    streams: list[NabStream] = []
    scores: dict[str, npt.NDArray[np.float64]] = {}
    for k in range(draw(st.integers(1, 3))):
        n = draw(st.integers(8, 70))
        cuts = sorted(draw(st.lists(st.integers(0, n - 1), max_size=6, unique=True)))
        windows = [(cuts[j], cuts[j + 1]) for j in range(0, len(cuts) - 1, 2)]
        if draw(st.booleans()) and windows:  # windows of width one too
            windows[0] = (windows[0][0], windows[0][0])
        levels = draw(st.integers(2, 12))
        vals = draw(st.lists(st.integers(-1, levels), min_size=n, max_size=n))
        s = np.array([math.nan if v < 0 else v / levels for v in vals])
        path = f"c/f{k}.csv"
        streams.append(_stream(path, n, windows))
        scores[path] = s
    return streams, scores


@settings(max_examples=300, deadline=None)
@given(files=_files(), profile=st.sampled_from(sorted(PROFILES)))
def test_threshold_search_matches_brute_force(
    files: tuple[list[NabStream], dict[str, npt.NDArray[np.float64]]], profile: str
) -> None:
    streams, scores = files
    prof = PROFILES[profile]
    sweeps = {s.path: _nab_sweep(s.n, s.windows, prof) for s in streams}
    candidates = {math.inf}
    for s in scores.values():
        candidates.update(float(v) for v in s if not math.isnan(v))
    totals = {
        th: sum(_nab_raw_at(sweeps[p], scores[p], th, prof) for p in scores) for th in candidates
    }
    best = max(totals.values())
    r = score_corpus(streams, scores, profile)
    assert r["raw"] == pytest.approx(best, abs=1e-9)
    assert totals[r["threshold"]] == pytest.approx(best, abs=1e-9)
    n_windows = sum(1 for s in streams for _, right in s.windows if right >= probation_length(s.n))
    assert r["n_windows"] == n_windows
    if n_windows:
        expected = 100 * (best + prof.fn * n_windows) / ((prof.tp + prof.fn) * n_windows)
        assert r["score"] == pytest.approx(expected, abs=1e-7)
    assert score_all_profiles(streams, scores)[profile] == pytest.approx(r["score"])
