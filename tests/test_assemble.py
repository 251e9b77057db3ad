"""Per-channel topics assembled into frames: last-value hold, staleness, silence."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lillith.sensors.assemble import Assembler


def test_hold_stale_and_silence() -> None:
    a = Assembler(["temp", "rpm"], stale_s=1.0)
    assert a.frame(0.0) is None  # nothing seen
    a.update("temp", 20.5, 0.0)
    assert a.frame(0.1) is None  # rpm never seen: no partial frame
    a.update("rpm", 900.0, 0.2)
    f = a.frame(0.3)
    assert f is not None and f.values.tolist() == [20.5, 900.0] and f.stale == ()
    a.update("temp", 21.0, 0.9)
    f = a.frame(1.5)  # rpm last updated 1.3 s ago: held, marked stale
    assert f is not None and f.values.tolist() == [21.0, 900.0] and f.stale == ("rpm",)
    assert a.frame(2.5) is None  # both silent past stale_s: no frame
    a.update("rpm", 950.0, 3.0)
    f = a.frame(3.1)
    assert f is not None and f.values.tolist() == [21.0, 950.0] and f.stale == ("temp",)
    assert a.updates == 4


def test_frame_is_a_copy_and_bad_setup_is_refused() -> None:
    a = Assembler(["x"], stale_s=5.0)
    a.update("x", 1.0, 0.0)
    f = a.frame(0.0)
    assert f is not None
    a.update("x", 2.0, 0.1)
    assert f.values.tolist() == [1.0]
    with pytest.raises(ValueError):
        Assembler([], stale_s=1.0)
    with pytest.raises(ValueError):
        Assembler(["x"], stale_s=0.0)
    with pytest.raises(KeyError):
        a.update("y", 1.0, 0.0)


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(-1e6, 1e6),
                          st.floats(0, 0.5)), min_size=1, max_size=60),
       st.floats(0.01, 2.0))
def test_frames_hold_the_latest_value_of_each_channel(
        updates: list[tuple[str, float, float]], stale_s: float) -> None:
    a = Assembler(["a", "b", "c"], stale_s=stale_s)
    now = 0.0
    latest: dict[str, tuple[float, float]] = {}
    for ch, v, dt in updates:
        now += dt
        a.update(ch, v, now)
        latest[ch] = (v, now)
        f = a.frame(now)
        if len(latest) < 3:
            assert f is None
            continue
        assert f is not None
        assert f.values.tolist() == [latest[c][0] for c in "abc"]
        assert f.stale == tuple(c for c in "abc" if now - latest[c][1] > stale_s)
        assert ch not in f.stale and np.all(np.isfinite(f.values))
