"""The alarm state, the shift detector, the detector's replay and the score sources'
state records (lillith.agents.scores)."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from lillith.agents.agent import Agent
from lillith.agents.config import AgentConfig, ScoreSettings
from lillith.agents.scores._kernels import _shift_stat
from lillith.agents.scores.alarm import REASONS, AlarmState, Evidence
from lillith.agents.scores.detector import Detector
from lillith.agents.scores.normalizer import RobustNormalizer
from lillith.agents.scores.shift import ShiftDetector, chi2_likelihood
from lillith.errors import StateError
from lillith.eval.record import decide, evidence, record


def ev(lik: float = 0.5, **kw: Any) -> Evidence:
    """Evidence of one frame: a raw-score likelihood, nothing else unless given."""
    base: dict[str, Any] = {"raw": 1.0, "likelihood": lik, "source": 0, "recurs": False,
                            "range": False, "stuck": False, "stuck_on": False,
                            "context": 0.5, "shift": 0.5}
    base.update(kw)
    return Evidence(**base)


def test_news_rests_after_an_alarm_and_the_state_lasts_while_the_level_does() -> None:
    a = AlarmState(alarm=0.999, hold=0.9, suppress=30, budget=0)
    d = a.step(ev(0.9995, source=1))
    assert d.likelihood == 0.9995 and d.alarm and d.onset and d.reason == "novelty"
    # what follows is rest: damped news, but the alarm stays on while the level is rare
    held = [a.step(ev(0.99999)) for _ in range(10)]
    assert max(h.likelihood for h in held) <= 0.25
    assert all(h.alarm and not h.onset and h.reason == "novelty" for h in held)
    # the condition ends: the alarm goes off, the rest goes on
    off = a.step(ev(0.6))
    assert not off.alarm and off.reason == "" and a.rest == 19
    # a restored state finishes the same rest, then gives news again
    twin = AlarmState(alarm=0.999, hold=0.9, suppress=30, budget=0)
    twin.set_state(a.get_state())
    for _ in range(19):
        assert a.step(ev(0.9999)).likelihood == twin.step(ev(0.9999)).likelihood <= 0.25
    assert a.step(ev(0.9999)).likelihood == twin.step(ev(0.9999)).likelihood == 0.9999
    # no rest: every rare frame is news
    plain = AlarmState(alarm=0.999, suppress=0, budget=0)
    assert all(plain.step(ev(0.9995)).likelihood == 0.9995 for _ in range(5))


def test_excursions_are_news_outside_a_rest_and_alarms_always() -> None:
    a = AlarmState(alarm=0.999, suppress=30, budget=0, stuck_alarm=True)
    d = a.step(ev(0.3, range=True))
    assert d.likelihood == 1.0 and d.alarm and d.reason == "range" and a.rest == 30
    # a range excursion lasts its frame
    assert not a.step(ev(0.3)).alarm
    # during the rest another excursion is damped news but still an alarm
    d = a.step(ev(0.7, range=True))
    assert d.likelihood <= 0.25 and d.alarm and d.reason == "range" and a.rest == 28
    # an alarm keeps the reason that turned it on: a stuck run right after is 'range'
    assert a.step(ev(0.3, stuck=True, stuck_on=True)).reason == "range"
    assert not a.step(ev(0.3)).alarm
    # a stuck run is an alarm for as long as it goes on
    d = a.step(ev(0.3, stuck=True, stuck_on=True))
    assert d.alarm and d.reason == "stuck"
    assert a.step(ev(0.3, stuck_on=True)).alarm
    assert not a.step(ev(0.3)).alarm
    # switched off, neither is anything
    quiet = AlarmState(range_alarm=False, stuck_alarm=False)
    d = quiet.step(ev(0.3, range=True, stuck=True, stuck_on=True))
    assert not d.alarm and d.likelihood == 0.3


def test_the_budget_limits_news_and_refills() -> None:
    a = AlarmState(alarm=0.999, hold=0.9, suppress=5, budget=2, budget_period=100)

    def burst() -> float:
        out = a.step(ev(0.99999)).likelihood
        for _ in range(5):
            a.step(ev(0.5))
        return out

    assert burst() >= 0.999 and burst() >= 0.999
    # the third finds no token: damped, no rest, no alarm
    d = a.step(ev(0.99999))
    assert d.likelihood <= 0.25 and a.rest == 0 and not d.alarm
    assert a.step(ev(0.5, range=True)).likelihood == 1.0  # excursions need none
    for _ in range(5):
        a.step(ev(0.5))
    assert a.tokens < 1.0
    for _ in range(90):
        a.step(ev(0.5))
    assert a.tokens >= 1.0 and burst() >= 0.999
    free = AlarmState(alarm=0.999, suppress=5, budget=0)
    assert all(free.step(ev(0.99999)).likelihood >= 0.999 for _ in range(30) if not free.rest)
    # snapshots from before the budget, or of the likelihood that held it, restore
    twin = AlarmState(budget=2)
    twin.set_state({k: v for k, v in a.get_state().items() if k != "tokens"})
    assert twin.tokens == 2.0


def test_a_recurring_level_is_not_news_and_spends_nothing() -> None:
    a = AlarmState(alarm=0.999, suppress=10, budget=2, budget_period=100)
    tokens = a.tokens
    d = a.step(ev(0.99999, recurs=True))
    assert d.likelihood <= 0.25 and not d.alarm and a.rest == 0 and a.tokens >= tokens
    # the weekly context still gives news on it, and excursions are untouched
    d = a.step(ev(0.99999, recurs=True, context=0.9995))
    assert d.likelihood >= 0.999 and d.reason == "context" and a.rest == 10
    for _ in range(10):
        a.step(ev(0.5))
    assert a.step(ev(0.5, range=True, recurs=True)).likelihood == 1.0
    # without the recurrence switch the level is news
    b = AlarmState(alarm=0.999, recurrence=False)
    assert b.step(ev(0.99999, recurs=True)).likelihood >= 0.999


def test_a_shift_is_an_alarm_regardless_of_rests_and_news_only_when_asked() -> None:
    a = AlarmState(alarm=0.999, hold=0.5, suppress=50, budget=0, shift_level=0.999)
    a.step(ev(0.9995))  # news: a rest starts
    a.step(ev(0.3))
    d = a.step(ev(0.3, shift=0.9995))
    assert d.alarm and d.onset and d.reason == "shift" and d.likelihood == 0.3
    held = [a.step(ev(0.3, shift=s)) for s in (0.9, 0.7, 0.51)]
    assert all(h.alarm and h.reason == "shift" for h in held)
    assert not a.step(ev(0.3, shift=0.49)).alarm
    # shift_news: a shift outside a rest is news too (its own likelihood), no token
    n = AlarmState(alarm=0.999, suppress=50, budget=1, shift_level=0.999, shift_news=True)
    n.tokens = 0.0
    d = n.step(ev(0.4, shift=0.9995))
    assert d.likelihood == 0.9995 and n.rest == 50
    off = AlarmState(shift_alarm=False)
    assert not off.step(ev(0.3, shift=0.99999)).alarm


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.booleans(), st.booleans(), st.floats(0, 1),
                          st.floats(0, 1), st.integers(0, 2)), min_size=1, max_size=80),
       st.integers(0, 79))
def test_alarm_state_round_trips_and_reasons_are_consistent(
        rows: list[tuple[float, bool, bool, float, float, int]], cut: int) -> None:
    evs = [ev(lik, range=r, stuck=s, stuck_on=s, context=c, shift=sh, source=src)
           for lik, r, s, c, sh, src in rows]
    a = AlarmState(alarm=0.99, hold=0.6, suppress=3, budget=2, budget_period=5,
                   shift_level=0.99)
    ds = []
    twin = None
    for i, e in enumerate(evs):
        if i == cut:
            twin = AlarmState(alarm=0.99, hold=0.6, suppress=3, budget=2, budget_period=5,
                              shift_level=0.99)
            twin.set_state(a.get_state())
        d = a.step(e)
        if twin is not None:
            assert twin.step(e) == d
        ds.append(d)
        assert 0.0 <= d.likelihood <= 1.0
        assert d.reason in REASONS and bool(d.reason) == d.alarm
        assert not d.onset or d.alarm
    # an onset starts every alarm period
    for prev, d in zip([None, *ds], ds, strict=False):
        if d.alarm and (prev is None or not prev.alarm):
            assert d.onset


def test_alarm_state_settings_are_checked_by_the_scoring_settings() -> None:
    for bad in ({"alarm": 0.5}, {"hold": 1.0}, {"shift_level": 0.4}):
        with pytest.raises(ValidationError):
            ScoreSettings(**bad)


def test_chi2_likelihood_is_a_cdf() -> None:
    # the Wilson-Hilferty median and tails, for small and large degrees of freedom
    for k in (1, 8, 64):
        qs = np.linspace(0, 5 * k, 200)
        vals = [chi2_likelihood(float(q), k) for q in qs]
        assert all(b >= a for a, b in itertools.pairwise(vals))
        assert abs(chi2_likelihood(k * (1 - 2 / (9 * k)) ** 3, k) - 0.5) < 1e-12
    # the 0.999 quantile of chi2(8), 26.12, maps to the logistic of the normal's (3.09),
    # the scale of every likelihood of the agent
    assert abs(chi2_likelihood(26.12, 8) - 1 / (1 + np.exp(-1.7 * 3.09))) < 2e-4


def _shift(sd: ShiftDetector, x: np.ndarray) -> float:
    """One frame as the detector takes it: the likelihood, then the frame learned."""
    out = sd.score_one(x)
    before = sd.get_state()
    assert sd.score_one(x) == out  # (side-effect-free)
    assert all(np.array_equal(v, sd.get_state()[k]) for k, v in before.items())
    sd.learn_one(x)
    return out


def test_shift_detector_sees_a_sustained_shift_of_a_quiet_channel_only() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    quiet = 10.0 + 0.1 * rng.standard_normal(n)
    wander = np.cumsum(rng.standard_normal(n)) * 0.5  # a channel that drifts by nature
    x = np.stack([quiet, wander], axis=1)
    x[2000:2400, 0] += 0.4  # four of its usual deviations, for 400 frames
    sd = ShiftDetector(2, rate=0.05, memory=2000, warm=50)
    lik = np.array([_shift(sd, r) for r in x])
    assert lik[:50].tolist() == [0.5] * 50
    assert np.mean(lik[300:2000] >= 0.9999) < 0.01  # the wander is not a shift
    assert lik[2100:2300].min() > 0.999
    assert np.mean(lik[2600:] >= 0.9999) < 0.05  # back to normal
    twin = ShiftDetector(2, rate=0.05, memory=2000, warm=50)
    twin.set_state(sd.get_state())
    probe = x[:10] + 1.0
    assert [_shift(twin, r) for r in probe] == [_shift(sd, r) for r in probe]
    with pytest.raises(StateError):
        ShiftDetector(3).set_state(sd.get_state())


def _stream(n: int, seed: int) -> tuple[np.ndarray, list[float | None]]:
    rng = np.random.default_rng(seed)
    t = 1_600_000_000.0 + 300.0 * np.arange(n)
    day = np.sin(2 * np.pi * np.arange(n) / 288)
    x = np.stack([10 + 3 * day + rng.standard_normal(n), 5 + 0.2 * rng.standard_normal(n)],
                 axis=1)
    x[n // 2:n // 2 + 200, 1] += 1.5
    x[n // 3, 0] += 30.0
    return x, [float(v) for v in t]


def test_recorded_terms_replay_to_the_agents_own_scores_under_any_settings() -> None:
    """The scoring settings change nothing the model learns: replaying the
    recorded terms under other settings gives what an agent run with them gives."""
    x, ts = _stream(1500, 1)
    cfg = AgentConfig(fabric={"shape": (3, 3, 4)})
    ms, log = record(Agent(2, cfg), x, ts)
    dec = decide(evidence(log, cfg.score, som=True), cfg.score)
    assert np.array_equal(dec.likelihood, [m.anomaly_likelihood for m in ms])
    assert np.array_equal(dec.alarm, [m.alarm for m in ms])
    other = cfg.score.model_copy(update={"alarm": 0.999, "suppress": 50, "hold": 0.8,
                                         "shift_rate": 0.1, "range_alarm": False})
    twin = Agent(2, cfg.model_copy(update={"score": other}))
    got = twin.process_many(x, ts)
    dec = decide(evidence(log, other, som=True, recurs_floor=0.99), other)
    assert np.array_equal(dec.likelihood, [m.anomaly_likelihood for m in got])
    assert [REASONS[c] for c in dec.reason] == [m.alarm_reason for m in got]
    assert any(m.alarm for m in got)


def test_detector_state_round_trips_and_tolerates_changed_windows() -> None:
    x, ts = _stream(600, 2)
    sc = ScoreSettings()
    a = Detector(2, sc, som=False)
    from lillith.agents.scores.detector import FrameTerms

    frames = [FrameTerms(x[i], (x[i] - 5) / 3, None if i == 0 else np.abs(x[i] - x[i - 1]),
                         0.0, np.ones(2), ts[i]) for i in range(len(x))]
    for f in frames[:400]:
        a.score(f)
    b = Detector(2, sc, som=False)
    assert b.set_state(a.get_state()) == []
    assert [b.score(f) for f in frames[400:]] == [a.score(f) for f in frames[400:]]
    wider = Detector(2, sc.model_copy(update={"window": 3000}), som=False)
    with pytest.raises(StateError):
        wider.set_state(a.get_state())
    assert wider.set_state(a.get_state(), tolerant=True) == ["lik"]


def _shift_reference(x: np.ndarray, rate: float, memory: int) -> list[float]:
    """The shift statistic in plain numpy, frame by frame (the kernel's reference)."""
    n, c = x.shape
    loc = x[0].copy()
    scale = np.maximum(np.abs(x[0]) * 0.1, 1e-3 * (1.0 + np.abs(x[0])))
    ewma = np.zeros(c)
    var = np.full(c, rate / (2.0 - rate))
    out = []
    for i in range(1, n):
        s = np.maximum(scale, 1e-3 * (1.0 + np.abs(loc)))
        d = np.clip((x[i] - loc) / s, -10.0, 10.0)
        ewma = ewma + rate * (d - ewma)
        e2 = ewma * ewma
        out.append(float(np.sum(e2 / np.maximum(var, 1e-12 * rate / (2.0 - rate)))))
        r = max(1.0 / (i + 1), 1.0 / memory)
        var = var + r * (np.minimum(e2, 9.0 * var) - var)
        dev = np.clip(x[i] - loc, -3.0 * s, 3.0 * s)
        loc = loc + r * dev
        scale = scale + r * (1.25 * np.abs(dev) - scale)
    return out


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(2, 300), st.integers(0, 2**31 - 1),
       st.sampled_from([0.01, 0.05, 0.3, 1.0]), st.integers(1, 500))
def test_shift_kernel_matches_a_numpy_reference(c: int, n: int, seed: int, rate: float,
                                                memory: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c)) * rng.choice([1e-3, 1.0, 1e3], size=c)
    x[rng.random((n, c)) < 0.05] += 50.0  # outliers, clipped
    sd = ShiftDetector(c, rate=rate, memory=memory, warm=0)
    got, pure = [], []
    for row in x:
        if sd.count:  # the side-effect-free statistic, then the one learned
            pure.append(_shift_stat(row, sd.loc, sd.scale, sd.ewma, sd.var, rate))
        sd.learn_one(row)
        got.append(sd.stat)
    assert pure == got[1:]
    np.testing.assert_allclose(got[1:], _shift_reference(x, rate, memory), rtol=1e-9,
                               atol=1e-12)


@pytest.mark.nojit
def test_shift_kernel_without_jit_matches_the_compiled_one() -> None:
    from .nojit import run_python

    script = (
        "import numpy as np\n"
        "from lillith.agents.scores.shift import ShiftDetector\n"
        "x = np.random.default_rng(3).standard_normal((400, 3))\n"
        "x[200:260, 1] += 2.0\n"
        "sd = ShiftDetector(3, rate=0.05, memory=100, warm=10)\n"
        "out = []\n"
        "for r in x:\n"
        "    out.append(sd.score_one(r))\n"
        "    sd.learn_one(r)\n"
        "print(repr(out))\n")
    assert run_python(script, jit=False) == run_python(script, jit=True)


# arrays a source may lack (older snapshots) and may hold in another layout (another
# ``range_days``: the day blocks start over); every other array is required and checked
_MAY_LACK = {"range": {"blk_lo", "blk_hi", "blk_day", "blk_n", "day", "days"},
             "stuck": {"flagged"}}
_MAY_MISFIT = {"range": {"blk_lo", "blk_hi", "blk_day", "blk_n"}}
_SOURCES = {"lik": "likelihood", "range": "range", "stuck": "stuck", "week": "week",
            "wlik": "week_lik", "echo": "echo", "shift": "shift"}


def _trained(n: int = 1300) -> Detector:
    from lillith.agents.scores.detector import FrameTerms

    x, ts = _stream(n, 3)
    d = Detector(2, ScoreSettings(), som=True)
    for i in range(n):
        d.score(FrameTerms(x[i], (x[i] - 5) / 3, None if i == 0 else np.abs(x[i] - x[i - 1]),
                           0.1, np.ones(2), ts[i]))
    return d


def _source(section: str, *, trained: bool) -> Any:
    if section == "norm":
        norm = RobustNormalizer(2)
        for row in _stream(300, 4)[0] if trained else []:
            norm.learn_one(row)
        return norm
    return getattr(_trained() if trained else Detector(2, ScoreSettings(), som=True),
                   _SOURCES[section])


@pytest.mark.parametrize("section", [*sorted(_SOURCES), "norm"])
def test_every_source_refuses_a_state_that_lacks_or_misfits_an_array(section: str) -> None:
    """A source (and the normaliser) restores every array of its state, checked:
    a missing one, one of another shape or one whose values would change kind
    (float to int) is a StateError naming it, and nothing of the source
    changes; the arrays it may lack by design restore without them."""
    state = _source(section, trained=True).get_state()

    def fresh() -> Any:
        return _source(section, trained=False)

    twin = fresh()
    twin.set_state(state)
    assert all(np.array_equal(v, twin.get_state()[k]) for k, v in state.items())
    for key, arr in state.items():
        cases = [("lack", {k: v for k, v in state.items() if k != key},
                  key in _MAY_LACK.get(section, set())),
                 ("shape", dict(state, **{key: np.append(arr, arr.reshape(-1)[:1])}),
                  key in _MAY_MISFIT.get(section, set()))]
        if arr.dtype.kind in "iu":
            cases.append(("kind", dict(state, **{key: arr.astype(np.float64) + 0.5}), False))
        for what, broken, tolerated in cases:
            src = fresh()
            before = src.get_state()
            if tolerated:
                src.set_state(broken)
                continue
            with pytest.raises(StateError) as e:
                src.set_state(broken)
            named = [e.value.fields.get("array"), *e.value.fields.get("missing", [])]
            assert key in named, (what, e.value)
            assert all(np.array_equal(v, src.get_state()[k]) for k, v in before.items())


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 3), st.sampled_from([600.0, 1800.0, 3600.0]))
def test_update_one_is_score_one_then_learn_one(seed: int, c: int, step_s: float) -> None:
    """Every source's one-pass ``update_one`` returns what ``score_one`` says and
    leaves the state ``learn_one`` leaves, bit for bit (the detector uses it)."""
    from lillith.agents.scores.likelihood import AnomalyLikelihood
    from lillith.agents.scores.range_novelty import RangeNovelty
    from lillith.agents.scores.stuck import StuckSensor
    from lillith.agents.scores.week import WeekProfile

    rng = np.random.default_rng(seed)
    n = int(30 * 86400 / step_s)  # a month: the weekly context answers from the third week
    x = np.round(rng.standard_normal((n, c)).cumsum(axis=0) * 0.3, 1)  # repeats: stuck runs
    x[rng.random(n) < 0.2] = 0.0
    x[rng.integers(n // 4, n, 5)] += 100.0  # excursions
    x[n // 2:n // 2 + n // 8] = x[n // 2]  # a stuck stretch
    t = 1_700_000_000.0 + step_s * np.arange(n) - step_s * (rng.random(n) < 0.02)  # steps back
    scale = 0.5 + rng.random(c)
    pairs: list[tuple[Any, Any]] = [
        (lambda: ShiftDetector(c, rate=0.05, memory=500, warm=20), lambda i: (x[i],)),
        (lambda: StuckSensor(c, factor=2.0, min_run=3, warm=20), lambda i: (x[i],)),
        (lambda: RangeNovelty(c, warm=20, days=2), lambda i: (x[i], float(t[i]))),
        (lambda: WeekProfile(c), lambda i: (x[i], scale, float(t[i]))),
        (lambda: RobustNormalizer(c), lambda i: (x[i],)),
        (lambda: AnomalyLikelihood(window=300, short=3, min_history=20),
         lambda i: (float(np.abs(x[i]).sum()),))]
    for make, args in pairs:
        one, two = make(), make()
        said: set[bool | None] = set()
        for i in range(n):
            got = one.update_one(*args(i))
            want = two.score_one(*args(i))
            two.learn_one(*args(i))
            if isinstance(got, np.ndarray):  # (the normaliser's z)
                assert np.array_equal(got, want), (type(one).__name__, i)
                said.add(bool(got.any()))
                continue
            assert got == want, (type(one).__name__, i)
            said.add(got if isinstance(got, bool) or got is None else 0.0 < got != 0.5)
        assert said >= {True, False} or said >= {True, None}, (type(one).__name__, said)
        a, b = one.get_state(), two.get_state()
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
