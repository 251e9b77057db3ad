"""Property-based fuzzing of the intake: arbitrary payloads through the codec into an agent.

Payloads of every shape the daemon may receive (JSON, msgpack, raw float32),
with arbitrary times (finite, huge, NaN, infinite, of the wrong type),
widths and nestings, go through :func:`lillith.sensors.codec.decode` with
the schema the daemon keeps (the first valid frame fixes the width) and then
through an :class:`~lillith.runtime.worker.AgentWorker` on its thread, as in
the daemon. Whatever the sequence: nothing raises, every payload is either
scored or dead-lettered with a reason, and the agent's state survives
``get_state`` / ``set_state`` unchanged.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import replace
from typing import Any

import msgpack
import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lillith.agents.agent import Agent
from lillith.agents.config import AgentConfig
from lillith.runtime.worker import AgentWorker, Result
from lillith.sensors.codec import REASONS, RejectError, Schema, decode

CONFIG = AgentConfig.model_validate({"fabric": {"shape": [2, 2, 2], "n_features": 8},
                                     "som": {"map_shape": [4, 4]},
                                     "predictor": {"batch_size": 4}})
SCHEMA = Schema(max_bytes=1 << 16, max_width=16)

times = st.one_of(
    st.none(), st.floats(), st.floats(min_value=-2e11, max_value=2e11),
    st.integers(min_value=-(10**30), max_value=10**30), st.sampled_from(
        [4e22, 1e300, -1e300, 1e11, -1e11, 8.64e5, math.nan, math.inf, 0.0]),
    st.text(max_size=3), st.booleans())
numbers = st.one_of(st.floats(), st.floats(min_value=-1e6, max_value=1e6),
                    st.integers(min_value=-(10**20), max_value=10**20))
nested = st.recursive(st.none() | st.booleans() | numbers | st.text(max_size=4),
                      lambda c: st.lists(c, max_size=3) | st.dictionaries(
                          st.text(max_size=3), c, max_size=3), max_leaves=12)


@st.composite
def deep(draw: st.DrawFn) -> Any:
    """A value nested ``depth`` lists deep (0 to 40)."""
    v: Any = draw(numbers)
    for _ in range(draw(st.integers(0, 40))):
        v = [v]
    return v


@st.composite
def good(draw: st.DrawFn, stream_width: int) -> tuple[bytes, str | None]:
    """A valid frame of ``stream_width`` values: any time within the bound (or
    none), values of any size within the default bounds."""
    frame: dict[str, Any] = {"values": draw(st.lists(
        st.one_of(st.floats(min_value=-10, max_value=10), st.floats(-1e12, 1e12),
                  st.integers(-(10**12), 10**12)),
        min_size=stream_width, max_size=stream_width))}
    if draw(st.booleans()):
        frame["t"] = draw(st.one_of(st.floats(min_value=-1e11, max_value=1e11),
                                    st.integers(min_value=-10**11, max_value=10**11)))
    if draw(st.booleans()):
        return msgpack.packb(frame), "application/msgpack"
    return json.dumps(frame).encode(), None


@st.composite
def payloads(draw: st.DrawFn, stream_width: int) -> tuple[bytes, str | None]:
    """A payload of a stream of ``stream_width`` channels: most often a valid
    frame, else anything (any time, width, nesting, encoding)."""
    if draw(st.integers(0, 9)) < 6:
        return draw(good(stream_width))
    width = draw(st.sampled_from([stream_width, 1, 2, 3, 0, 17, 300]))
    values: Any = draw(st.one_of(
        st.lists(numbers, min_size=width, max_size=width),
        st.lists(st.floats(min_value=-100, max_value=100), min_size=width, max_size=width),
        nested, deep()))
    obj: Any = {"values": values}
    if draw(st.booleans()):
        obj["t"] = draw(times)
    if draw(st.integers(0, 4)) == 0:
        obj[draw(st.text(max_size=3))] = draw(st.one_of(nested, deep()))
    if draw(st.integers(0, 6)) == 0:
        obj = draw(st.one_of(numbers, nested))
    kind = draw(st.sampled_from(["json", "json", "msgpack", "float32"]))
    if kind == "float32":
        vals = draw(st.lists(st.floats(width=32), min_size=0, max_size=20))
        return struct.pack(f"<{len(vals)}f", *vals), "application/octet-stream"
    if kind == "msgpack":
        try:
            return msgpack.packb(obj), "application/msgpack"
        except (OverflowError, ValueError):  # integers beyond msgpack's 64 bits
            return json.dumps(obj).encode(), None
    return json.dumps(obj).encode(), None


def _check_round_trip(agent: Agent) -> None:
    state = agent.get_state()
    other = Agent(agent.n_channels, CONFIG, name=agent.name)
    other.set_state(state)
    again = other.get_state()
    assert state.keys() == again.keys()
    for k in state:
        np.testing.assert_array_equal(state[k], again[k], err_msg=k)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batch=st.integers(1, 4).flatmap(lambda w: st.tuples(good(w), st.lists(
    payloads(w), min_size=24, max_size=64)).map(lambda g: [g[0], *g[1]])))
def test_every_payload_is_scored_or_dead_lettered_and_the_state_round_trips(
        batch: list[tuple[bytes, str | None]]) -> None:
    got: list[Result] = []
    worker = AgentWorker("fuzz", CONFIG, queue_size=64, policy="backpressure", width=None,
                         on_results=got.extend)
    schema = SCHEMA
    rejected: dict[int, str] = {}
    queued: list[int] = []
    for seq, (payload, ctype) in enumerate(batch):
        try:
            frame = decode(payload, schema, content_type=ctype)
        except RejectError as e:
            assert e.reason in REASONS, e.reason
            rejected[seq] = e.reason
            continue
        assert np.all(np.isfinite(frame.values)) and 1 <= frame.values.size <= 16
        assert frame.t is None or abs(frame.t) <= schema.max_abs_t
        if schema.expected_width is None:  # as the daemon: the first frame fixes it
            schema = replace(schema, width=int(frame.values.size))
        assert worker.offer(seq, frame) == (True, None)
        queued.append(seq)
    event(f"frames scored: {min(len(queued) // 10 * 10, 30)}+")
    for reason in set(rejected.values()):
        event(f"rejected: {reason}")
    worker.start()
    worker.stop()
    assert worker.join(120)
    by_seq = {r.seq: r for r in got}
    assert sorted(by_seq) == queued  # every accepted frame has exactly one result
    assert not set(by_seq) & set(rejected)
    # scored; a frame failing inside the agent would be dead-lettered with a
    # reason, but the edge's bounds leave the agent nothing to fail on
    failed = {s: (r.reason, r.error) for s, r in by_seq.items() if r.metrics is None}
    assert not failed, failed
    for r in by_seq.values():
        assert r.metrics is not None and 0.0 <= r.metrics.anomaly_likelihood <= 1.0
        assert all(math.isfinite(p) for p in r.metrics.prediction)
    if worker.agent is not None:
        _check_round_trip(worker.agent)
