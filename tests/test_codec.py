"""Payload decoding: every accepted shape, and a malformed corpus rejected for the right reason."""

from __future__ import annotations

import json
import math
import struct
import warnings

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lillith.sensors.codec import REASONS, Frame, RejectError, Schema, decode, excerpt

POS = Schema(width=3)
NAMED = Schema(channels=("a", "b"))


def test_accepted_shapes() -> None:
    f = decode(b'{"t": 12.5, "values": [1, 2.5, -3]}', POS)
    assert isinstance(f, Frame) and f.t == 12.5
    np.testing.assert_array_equal(f.values, [1.0, 2.5, -3.0])
    assert decode(b'{"values": [1, 2, 3]}', POS).t is None
    assert decode(b"4.25", Schema(width=1)).values.tolist() == [4.25]
    f = decode(b'{"values": {"b": 2, "a": 1}}', NAMED)
    assert f.values.tolist() == [1.0, 2.0]  # configured order, not payload order
    packed = msgpack.packb({"t": 1, "values": [1.0, 2.0, 3.0]})
    assert decode(packed, POS, content_type="application/msgpack").values.tolist() == [1, 2, 3]
    raw = struct.pack("<3f", 1.5, -2.0, 3.25)
    f = decode(raw, POS, content_type="application/octet-stream")
    assert f.values.tolist() == [1.5, -2.0, 3.25]
    # width unknown yet: any positive width passes (the runtime then fixes it)
    assert decode(b'{"values": [1, 2, 3, 4]}', Schema()).values.size == 4


CORPUS = [
    (b'{"values": [1, 2', POS, None, "malformed_json"),  # truncated
    (b"\xff\xfe\x00junk", POS, None, "malformed_json"),  # binary junk
    (b'"hello"', POS, None, "wrong_type"),
    (b"true", Schema(width=1), None, "wrong_type"),
    (b'{"values": [1, "2", 3]}', POS, None, "wrong_type"),
    (b'{"values": [1, true, 3]}', POS, None, "wrong_type"),
    (b'{"values": 3}', POS, None, "wrong_type"),
    (b'{"v": [1, 2, 3]}', POS, None, "wrong_type"),
    (b'{"values": [1, 2]}', POS, None, "wrong_length"),
    (b'{"values": []}', Schema(), None, "wrong_length"),
    (b'{"values": [1, NaN, 3]}', POS, None, "non_finite"),
    (b'{"values": [1, Infinity, 3]}', POS, None, "non_finite"),
    (b'{"values": [1, 1e400, 3]}', POS, None, "non_finite"),
    (b'{"values": [1, 2e12, 3]}', POS, None, "out_of_bounds"),
    (b'{"values": {"a": 1, "c": 2}}', NAMED, None, "unknown_channel"),
    (b'{"values": {"a": 1}}', NAMED, None, "missing_channel"),
    (b'{"values": {"a": 1, "b": 2}}', POS, None, "unknown_channel"),
    (b'{"t": "noon", "values": [1, 2, 3]}', POS, None, "bad_time"),
    # integer literals beyond float64 (float() would raise OverflowError)
    (b'{"values": [1, 1' + b"0" * 400 + b', 3]}', POS, None, "out_of_bounds"),
    (b"1" + b"0" * 400, Schema(width=1), None, "out_of_bounds"),
    (b'{"values": {"a": 1, "b": 1' + b"0" * 400 + b'}}', NAMED, None, "out_of_bounds"),
    (b'{"t": 1' + b"0" * 400 + b', "values": [1, 2, 3]}', POS, None, "bad_time"),
    (b'{"t": NaN, "values": [1, 2, 3]}', POS, None, "bad_time"),
    (b'{"values": [1, -Infinity, 3]}', Schema(width=3, low=-math.inf, high=math.inf), None,
     "non_finite"),
    (b"[" * 50_000 + b"]" * 50_000, Schema(max_bytes=10**6), None, "too_deep"),
    (json.dumps({"values": [[[[[[[[[[1]]]]]]]]]]}).encode(), POS, None, "too_deep"),
    (b"x" * (10 * 2**20), POS, None, "oversized"),  # 10 MB
    (b"\x93\x01", POS, "application/msgpack", "malformed_msgpack"),
    (b"\x00\x00\x80", POS, "application/octet-stream", "malformed_binary"),
    (struct.pack("<2f", 1, 2), POS, "application/octet-stream", "wrong_length"),
    (struct.pack("<3f", 1, float("nan"), 2), POS, "application/octet-stream", "non_finite"),
]


@pytest.mark.parametrize(("payload", "schema", "ctype", "reason"), CORPUS)
def test_malformed_corpus_rejected_with_reason(
    payload: bytes, schema: Schema, ctype: str | None, reason: str
) -> None:
    assert reason in REASONS
    with pytest.raises(RejectError) as e:
        decode(payload, schema, content_type=ctype)
    assert e.value.reason == reason, (e.value.reason, e.value.fields)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=512),
       ctype=st.sampled_from([None, "application/msgpack", "application/octet-stream"]))
def test_any_bytes_give_a_frame_or_a_reject(payload: bytes, ctype: str | None) -> None:
    try:
        f = decode(payload, Schema(max_bytes=256), content_type=ctype)
    except RejectError as e:
        assert e.reason in REASONS
    else:
        assert np.all(np.isfinite(f.values)) and f.values.size >= 1


def test_a_signalling_nan_in_float32_is_rejected_without_a_warning() -> None:
    # 0x7f800001: a signalling NaN; its cast to float64 sets the invalid flag
    payload = b"\x01\x00\x80\x7f" + b"\x00\x00\x80\x3f"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RejectError) as e:
            decode(payload, Schema(), content_type="application/x-float32le")
    assert e.value.reason == "non_finite"


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c, max_size=4),
                    max_leaves=20))
def test_any_json_value_gives_a_frame_or_a_reject(obj: object) -> None:
    payload = json.dumps(obj).encode()
    try:
        decode(payload, POS)
    except RejectError as e:
        assert e.reason in REASONS


def test_excerpt_is_bounded() -> None:
    assert excerpt(b"a" * 1000, 10) == "a" * 10 + "…"
    assert excerpt(b"\xff\x00ok") == "\\xff\x00ok"
