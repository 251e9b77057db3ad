"""Tests of lillith.fabric.wiring: CSR invariants, geometry, determinism, config."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lillith.errors import LillithError, WiringError
from lillith.fabric.topology import Connectivity, index_of, layer_of
from lillith.fabric.wiring import (
    NCP,
    Hierarchical,
    Local3D,
    MultiScale,
    Random,
    Wiring,
    wiring_types,
)

ARRAYS = (
    "indptr", "indices", "weight", "polarity", "feedback",
    "s_indptr", "s_indices", "s_weight", "s_polarity", "tau", "population",
)
SHAPES = [(1, 1, 1), (2, 2, 2), (3, 4, 5), (2, 2, 4), (1, 1, 7), (5, 1, 3)]
BUILTINS: list[Callable[..., Wiring]] = [Wiring, Local3D, MultiScale, Hierarchical, Random, NCP]


def rows_of(conn: Connectivity) -> np.ndarray:
    """Postsynaptic neuron of every synapse."""
    return np.repeat(np.arange(conn.n), np.diff(conn.indptr))


def same(a: Connectivity, b: Connectivity) -> bool:
    return a.shape == b.shape and a.n_inputs == b.n_inputs and all(
        np.array_equal(getattr(a, f), getattr(b, f)) for f in ARRAYS
    )


def check_invariants(w: Wiring, conn: Connectivity) -> None:
    conn.validate()
    n = conn.n
    assert conn.shape == w.shape and n == w.n_neurons
    assert conn.n_inputs == w.n_inputs
    dst = rows_of(conn)
    src = conn.indices.astype(np.int64)
    # sorted by (dst, src), strictly: no duplicates
    key = dst * n + src
    assert np.all(np.diff(key) > 0)
    assert not np.any(src == dst)
    # feedback flag from z-layers
    z = layer_of(conn.shape)
    np.testing.assert_array_equal(conn.feedback, (z[src] > z[dst]).astype(np.uint8))
    # sensory CSR
    s_dst = np.repeat(np.arange(n), np.diff(conn.s_indptr))
    s_key = s_dst * max(conn.n_inputs, 1) + conn.s_indices
    assert np.all(np.diff(s_key) > 0)
    assert np.all(conn.tau > 0)
    assert w.synapse_count() == conn.nnz


def check_dale(w: Wiring, conn: Connectivity) -> None:
    np.testing.assert_array_equal(conn.polarity, w.neuron_polarity[conn.indices])


def make(cls: Callable[..., Wiring], shape: tuple[int, int, int], **kw: Any) -> Wiring:
    return cls(shape, **kw)


# --------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("cls", BUILTINS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("n_inputs", [0, 3])
def test_csr_invariants(cls: Callable[..., Wiring], shape: tuple[int, int, int],
                        n_inputs: int) -> None:
    w = make(cls, shape, n_inputs=n_inputs, seed=3)
    conn = w.build()
    check_invariants(w, conn)
    check_dale(w, conn)
    if n_inputs:
        assert conn.s_indices.size > 0
        assert conn.s_indices.max() < n_inputs
    else:
        assert conn.s_indices.size == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cls=st.sampled_from(BUILTINS[1:]),
    shape=st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 6)),
    seed=st.integers(0, 2**32 - 1),
    n_inputs=st.integers(0, 4),
    inhibitory_fraction=st.floats(0.0, 1.0),
)
def test_invariants_property(cls: Callable[..., Wiring], shape: tuple[int, int, int], seed: int,
                             n_inputs: int, inhibitory_fraction: float) -> None:
    w = make(cls, shape, seed=seed, n_inputs=n_inputs, inhibitory_fraction=inhibitory_fraction)
    conn = w.build()
    check_invariants(w, conn)
    check_dale(w, conn)


def test_inhibitory_fraction_extremes() -> None:
    assert np.all(Local3D((3, 3, 3), inhibitory_fraction=0.0).build().polarity == 1)
    assert np.all(Local3D((3, 3, 3), inhibitory_fraction=1.0).build().polarity == -1)
    frac = float(np.mean(Local3D((10, 10, 10), seed=1).neuron_polarity < 0))
    assert 0.15 < frac < 0.25


# --------------------------------------------------------------------------- Local3D
def test_local3d_neighbourhood_counts() -> None:
    shape = (4, 5, 6)
    conn = Local3D(shape).build()
    fan_in = np.diff(conn.indptr)
    assert fan_in[index_of(1, 2, 3, shape)] == 26
    assert fan_in[index_of(0, 0, 0, shape)] == 7
    assert fan_in[index_of(3, 4, 5, shape)] == 7
    assert fan_in[index_of(0, 2, 3, shape)] == 17  # face
    assert fan_in[index_of(0, 0, 3, shape)] == 11  # edge
    wide = np.diff(Local3D((5, 5, 5), radius=2).build().indptr)
    assert wide[index_of(2, 2, 2, (5, 5, 5))] == 124


def test_local3d_matches_brute_force() -> None:
    shape = (3, 4, 5)
    for radius in (0, 1, 2):
        conn = Local3D(shape, radius=radius).build()
        got = set(zip(conn.indices.tolist(), rows_of(conn).tolist(), strict=True))
        coords = np.array(np.unravel_index(np.arange(60), (5, 3, 4))).T  # z, x, y
        want = set()
        for a in range(60):
            for b in range(60):
                if a != b and np.abs(coords[a] - coords[b]).max() <= radius:
                    want.add((a, b))
        assert got == want


def test_local3d_large_shape_count() -> None:
    shape = (17, 17, 128)
    conn = Local3D(shape).build()
    per_axis = [3 * s - 2 for s in shape]  # sum over positions of the clipped window width
    assert conn.nnz == int(np.prod(per_axis)) - conn.n
    assert conn.indices.dtype == np.int32


# --------------------------------------------------------------------------- MultiScale
def test_multiscale_populations_and_tau() -> None:
    shape = (6, 6, 10)
    taus = (2.0, 15.0, 90.0)
    w = MultiScale(shape, fractions=(0.6, 0.25, 0.15), taus=taus, long_range=5, seed=4)
    conn = w.build()
    counts = np.bincount(conn.population, minlength=3)
    assert counts.tolist() == [216, 90, 54]
    for p, tau in enumerate(taus):
        assert np.all(conn.tau[conn.population == p] == np.float32(tau))
    local = Local3D(shape).build()
    extra = np.diff(conn.indptr) - np.diff(local.indptr)
    np.testing.assert_array_equal(extra[conn.population != 2], 0)
    np.testing.assert_array_equal(extra[conn.population == 2], 5)
    # fast and medium neurons only hear their local neighbourhood
    dst = rows_of(conn)
    zz, xx, yy = np.unravel_index(np.arange(conn.n), (10, 6, 6))  # idx = z*X*Y + x*Y + y
    dist = np.maximum.reduce([
        np.abs(zz[conn.indices] - zz[dst]),
        np.abs(xx[conn.indices] - xx[dst]),
        np.abs(yy[conn.indices] - yy[dst]),
    ])
    slow_row = conn.population[dst] == 2
    assert np.all(dist[~slow_row] <= 1)
    assert np.all(np.bincount(dst[dist > 1], minlength=conn.n)[conn.population == 2] == 5)


def test_multiscale_tiny_long_range_capped() -> None:
    w = MultiScale((2, 2, 2), fractions=(0, 0, 1), long_range=10)
    conn = w.build()
    assert np.all(conn.population == 2)
    assert np.all(np.diff(conn.indptr) == 7)


# --------------------------------------------------------------------------- Hierarchical
def test_hierarchical_no_feedback() -> None:
    conn = Hierarchical((4, 4, 6), feedback=False).build()
    assert conn.nnz > 0
    assert not conn.feedback.any()


def test_hierarchical_feedback_from_next_layer() -> None:
    w = Hierarchical((4, 4, 6), feedback=True, feedback_fan_in=2, lateral=False, skip=False)
    conn = w.build()
    lay = w.layer_ids
    src, dst = conn.indices, rows_of(conn)
    fb = conn.feedback.astype(bool)
    assert fb.any()
    assert np.all(lay[src[fb]] == lay[dst[fb]] + 1)
    assert np.all(lay[src[~fb]] == lay[dst[~fb]] - 1)
    # every neuron below the top layer gets exactly feedback_fan_in feedback synapses
    fb_in = np.bincount(dst[fb], minlength=conn.n)
    assert np.all(fb_in[lay < w.n_layers - 1] == 2)
    ff_in = np.bincount(dst[~fb], minlength=conn.n)
    assert np.all(ff_in[lay > 0] == 9)
    assert np.all(ff_in[lay == 0] == 0)


def test_hierarchical_skip_spans_distance() -> None:
    w = Hierarchical((3, 3, 8), skip=True, skip_distance=3, feedback=False, lateral=False)
    conn = w.build()
    lay = w.layer_ids
    span = lay[rows_of(conn)] - lay[conn.indices]
    assert set(np.unique(span).tolist()) == {1, 3}
    no_skip = Hierarchical((3, 3, 8), skip=False, feedback=False, lateral=False).build()
    span = lay[rows_of(no_skip)] - lay[no_skip.indices]
    assert set(np.unique(span).tolist()) == {1}


def test_hierarchical_prefers_near_sources() -> None:
    shape = (8, 8, 3)
    w = Hierarchical(shape, fan_in=9, skip=False, feedback=False, lateral=False)
    conn = w.build()
    dst = rows_of(conn)
    x = (np.arange(conn.n) % 64) // 8
    y = np.arange(conn.n) % 8
    near = np.maximum(np.abs(x[conn.indices] - x[dst]), np.abs(y[conn.indices] - y[dst])) <= 1
    interior = (x[dst] > 0) & (x[dst] < 7) & (y[dst] > 0) & (y[dst] < 7)
    assert np.all(near[interior])  # 3x3 window holds exactly fan_in candidates
    assert np.all(np.diff(conn.indptr)[64:] == 9)  # border rows topped up at random


def test_hierarchical_layer_groups() -> None:
    w = Hierarchical((2, 2, 10), layers=[0, 3, 7])
    assert w.layer_bounds == (0, 3, 7, 10)
    assert w.n_layers == 3
    assert Hierarchical((2, 2, 10), layers=[3, 7]).layer_bounds == (0, 3, 7, 10)
    assert Hierarchical((2, 2, 10), layers=2).layer_bounds == (0, 5, 10)
    conn = Hierarchical((3, 3, 10), layers=[0, 3, 7], feedback=False).build()
    assert not conn.feedback.any()  # lateral is in-plane, feed-forward goes up
    check_invariants(w, w.build())
    with pytest.raises(WiringError):
        Hierarchical((2, 2, 10), layers=[0, 5, 3])
    with pytest.raises(WiringError):
        Hierarchical((2, 2, 10), layers=[0, 12])
    with pytest.raises(WiringError):
        Hierarchical((2, 2, 10), layers=11)
    with pytest.raises(WiringError):
        Hierarchical((2, 2, 10), skip_distance=1)


def test_hierarchical_large_shallow_layers() -> None:
    # thick layers exercise the candidate-window path with depth > 1
    w = Hierarchical((5, 5, 12), layers=3, fan_in=6, skip_distance=2)
    conn = w.build()
    check_invariants(w, conn)
    lay = w.layer_ids
    dst = rows_of(conn)
    ff = lay[conn.indices] == lay[dst] - 1
    assert np.all(np.bincount(dst[ff], minlength=conn.n)[lay > 0] == 6)


# --------------------------------------------------------------------------- Random
@settings(max_examples=30, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
    fan_in=st.integers(0, 40),
    seed=st.integers(0, 1000),
)
def test_random_exact_fan_in(shape: tuple[int, int, int], fan_in: int, seed: int) -> None:
    w = Random(shape, fan_in=fan_in, seed=seed)
    conn = w.build()
    check_invariants(w, conn)
    assert np.all(np.diff(conn.indptr) == min(fan_in, conn.n - 1))


def test_random_large() -> None:
    conn = Random((17, 17, 128), fan_in=16).build()
    assert np.all(np.diff(conn.indptr) == 16)


# --------------------------------------------------------------------------- NCP
def test_ncp_groups_and_flow() -> None:
    shape = (3, 3, 8)
    w = NCP(shape, n_inputs=4, seed=2)
    conn = w.build()
    g = w.groups
    assert g["sensory"] == range(0, 9)  # the z = 0 face
    assert g["motor"].stop == conn.n
    assert list(g) == ["sensory", "inter", "command", "motor"]
    for p, name in enumerate(NCP.GROUPS):
        r = g[name]
        assert len(r) > 0
        assert np.all(conn.population[r.start:r.stop] == p)
    pop = conn.population.astype(np.int64)
    pairs = set(zip(pop[conn.indices].tolist(), pop[rows_of(conn)].tolist(), strict=True))
    assert pairs <= {(0, 1), (1, 2), (2, 2), (2, 3)}
    assert {(0, 1), (1, 2), (2, 3)} <= pairs
    # every non-sensory neuron is reachable, every non-motor neuron has an output
    fan_in = np.diff(conn.indptr)
    assert np.all(fan_in[g["sensory"].stop:] > 0)
    fan_out = np.bincount(conn.indices, minlength=conn.n)
    assert np.all(fan_out[: g["motor"].start] > 0)
    # motor neurons hear motor_fanin command neurons
    assert np.all(fan_in[g["motor"].start:] >= min(8, len(g["command"])))
    # inputs land on the sensory group only, densely by default
    s_dst = rows_of_sensory(conn)
    assert set(s_dst.tolist()) == set(g["sensory"])
    assert conn.s_indices.size == 4 * 9


def rows_of_sensory(conn: Connectivity) -> np.ndarray:
    return np.repeat(np.arange(conn.n), np.diff(conn.s_indptr))


def test_ncp_input_fanout_and_recurrence() -> None:
    w = NCP((4, 4, 6), n_inputs=5, input_fanout=3, recurrent_command_synapses=7)
    conn = w.build()
    g = w.groups
    s_dst = rows_of_sensory(conn)
    assert set(s_dst.tolist()) == set(g["sensory"])  # unreachable ones fed too
    assert np.all(np.bincount(conn.s_indices, minlength=5) >= 3)
    pop = conn.population
    rec = (pop[conn.indices] == 2) & (pop[rows_of(conn)] == 2)
    assert int(rec.sum()) == 7


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 2), (1, 1, 3), (2, 2, 1), (2, 2, 4)])
def test_ncp_tiny(shape: tuple[int, int, int]) -> None:
    w = NCP(shape, n_inputs=2)
    conn = w.build()
    check_invariants(w, conn)
    assert sum(len(r) for r in w.groups.values()) == conn.n
    assert conn.s_indices.size > 0


def test_ncp_sensory_fraction() -> None:
    w = NCP((4, 4, 4), sensory_fraction=0.5)
    assert len(w.sensory_neurons) == 32
    assert len(w.motor_neurons) >= 1


# --------------------------------------------------------------------------- sensory
def test_dense_face_projection() -> None:
    conn = Local3D((3, 2, 4), n_inputs=5).build()
    s_dst = rows_of_sensory(conn)
    assert conn.s_indices.size == 5 * 6
    assert set(s_dst.tolist()) == set(range(6))
    assert np.all(np.diff(conn.s_indptr)[:6] == 5)
    assert np.all((conn.s_weight >= 0.5) & (conn.s_weight <= 1.5))


# --------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("cls", BUILTINS[1:], ids=lambda c: c.__name__)
def test_determinism(cls: Callable[..., Wiring]) -> None:
    shape = (4, 4, 6)
    a = make(cls, shape, seed=11, n_inputs=2).build()
    b = make(cls, shape, seed=11, n_inputs=2).build()
    c = make(cls, shape, seed=12, n_inputs=2).build()
    assert same(a, b)
    assert not same(a, c)


def test_build_is_idempotent() -> None:
    calls = []

    class Counting(Local3D):
        def _connect(self) -> None:
            calls.append(1)
            super()._connect()

    w = Counting((3, 3, 3), seed=5)
    first = w.build()
    first.weight[:] = 0  # callers own their copy
    second = w.build()
    assert calls == [1]
    assert same(second, Local3D((3, 3, 3), seed=5).build())


def test_weights_default_range() -> None:
    conn = Random((4, 4, 4), fan_in=8).build()
    assert np.all((conn.weight >= 0.5) & (conn.weight <= 1.5))
    assert len(np.unique(conn.weight)) > 100


# --------------------------------------------------------------------------- config
CONFIGS: list[tuple[Callable[..., Wiring], dict[str, Any]]] = [
    (Local3D, {"radius": 2, "n_inputs": 2, "seed": 9, "tau_m": 12.5}),
    (MultiScale, {"fractions": (0.2, 0.3, 0.5), "taus": (1.0, 2.0, 3.0), "long_range": 2}),
    (Hierarchical, {"layers": [0, 2, 4], "fan_in": 4, "skip_distance": 2, "lateral": False}),
    (Hierarchical, {"layers": 3, "feedback": False, "inhibitory_fraction": 0.5}),
    (Random, {"fan_in": 5, "seed": 123}),
    (NCP, {"n_inputs": 3, "sensory_fanout": 2, "recurrent_command_synapses": 4,
           "input_fanout": 2, "motor_fanin": 3}),
    (Wiring, {"n_inputs": 1}),
]


@pytest.mark.parametrize(("cls", "kwargs"), CONFIGS, ids=lambda v: getattr(v, "__name__", ""))
def test_config_round_trip(cls: Callable[..., Wiring], kwargs: dict[str, Any]) -> None:
    w = cls((3, 3, 6), **kwargs)
    cfg = w.to_config()
    assert cfg["type"] == type(w).__name__
    text = json.dumps(cfg)
    for restored in (Wiring.from_config(cfg), Wiring.from_config(json.loads(text))):
        assert type(restored) is type(w)
        assert same(restored.build(), w.build())
        assert restored.to_config() == json.loads(text)


def test_config_round_trip_with_extras() -> None:
    w = Local3D((2, 2, 3), seed=1, n_inputs=2)
    w.build()
    w.add_synapse(0, 11, polarity=-1)  # long-range, added after a build
    w.add_synapse(0, 1, polarity=-1, weight=0.25)  # duplicate of a local one: explicit wins
    w.add_sensory_synapse(1, 7, weight=2.0)
    w.set_tau([3, 4], 7.0)
    w.set_population(5, 2)
    conn = w.build()
    row1 = conn.indices[conn.indptr[1]:conn.indptr[2]].tolist()
    k = row1.index(0)
    assert conn.weight[conn.indptr[1] + k] == np.float32(0.25)
    assert conn.polarity[conn.indptr[1] + k] == -1
    assert conn.tau[3] == 7.0 and conn.tau[0] == 20.0
    assert conn.population[5] == 2
    # explicit sensory synapses replace the dense face projection
    assert conn.s_indices.tolist() == [1]
    restored = Wiring.from_config(json.loads(json.dumps(w.to_config())))
    assert same(restored.build(), conn)


def test_from_config_errors() -> None:
    with pytest.raises(WiringError):
        Wiring.from_config({"type": "NoSuchWiring", "shape": [1, 1, 1]})
    with pytest.raises(WiringError):
        Wiring.from_config({"shape": [1, 1, 1]})
    with pytest.raises(WiringError):
        Local3D.from_config(Random((2, 2, 2)).to_config())
    with pytest.raises(WiringError):
        Wiring.from_config({"type": "Local3D", "shape": [2, 2, 2], "bogus": 1})
    assert set(wiring_types()) >= {"Wiring", "Local3D", "MultiScale", "Hierarchical",
                                   "Random", "NCP"}


# --------------------------------------------------------------------------- user wirings
class Chain(Wiring):
    """A user wiring: a chain through all neurons, with a custom parameter."""

    def __init__(self, shape: Any, *, step: int = 1, **kwargs: Any) -> None:
        super().__init__(shape, **kwargs)
        self.step = step

    def _connect(self) -> None:
        for i in range(0, self.n_neurons - self.step):
            self.add_synapse(i, i + self.step, polarity=-1 if i % 2 else 1)


class SeedStyle(Wiring):
    """The ncps style: synapses added in the constructor."""

    def __init__(self, units: int, ring: bool = True) -> None:
        super().__init__(units)
        self.units = units
        self.ring = ring
        for i in range(units):
            self.add_synapse(i, (i + 1) % units if ring else min(i + 1, units - 1), 1)


def test_user_subclass_connect() -> None:
    w = Chain((2, 2, 3), step=2, seed=7, n_inputs=1)
    conn = w.build()
    check_invariants(w, conn)
    assert conn.nnz == 10
    assert "Chain" in wiring_types()
    cfg = w.to_config()
    assert cfg["step"] == 2 and cfg["seed"] == 7 and cfg["shape"] == [2, 2, 3]
    restored = Wiring.from_config(json.loads(json.dumps(cfg)))
    assert isinstance(restored, Chain)
    assert same(restored.build(), conn)


def test_seed_style_subclass() -> None:
    w = SeedStyle(6)
    assert w.shape == (1, 1, 6)
    conn = w.build()
    assert conn.nnz == 6
    # the wrap-around synapse 5 -> 0 comes from a higher layer
    assert conn.feedback.sum() == 1
    restored = Wiring.from_config(json.loads(json.dumps(w.to_config())))
    assert same(restored.build(), conn)
    assert restored.to_config() == w.to_config()


def test_plain_wiring_add_synapse() -> None:
    w = Wiring((2, 2, 2), seed=3)
    w.add_synapse(0, 4)
    w.add_synapse(4, 0, polarity=-1, weight=0.7)
    w.add_synapse(2, 2)  # self-loop: dropped
    w.add_synapse(0, 4, polarity=-1)  # duplicate: the first is kept
    conn = w.build()
    assert conn.nnz == 2
    assert conn.polarity.tolist() == [-1.0, 1.0]  # rows 0 then 4
    assert conn.weight[0] == np.float32(0.7)
    assert conn.feedback.tolist() == [1, 0]
    cfg = w.to_config()
    assert cfg["synapses"]["src"] == [0, 4, 2, 0]
    assert same(Wiring.from_config(cfg).build(), conn)


def test_builtin_name_cannot_be_reused() -> None:
    with pytest.raises(WiringError):
        type("Local3D", (Wiring,), {})


def test_unserialisable_subclass_reports() -> None:
    class Hidden(Wiring):
        def __init__(self, shape: Any, *, secret: int = 1) -> None:
            super().__init__(shape)
            self._secret = secret

    with pytest.raises(WiringError) as info:
        Hidden((1, 1, 2)).to_config()
    assert info.value.fields["parameter"] == "secret"


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((-1, 0), {}),
        ((0, 8), {}),
        ((0, 1.5), {}),
        ((True, 1), {}),
        ((0, 1), {"polarity": 0}),
        ((0, 1), {"polarity": 2}),
        ((0, 1), {"weight": -0.1}),
        ((0, 1), {"weight": float("nan")}),
    ],
)
def test_add_synapse_errors(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    w = Wiring((2, 2, 2))
    with pytest.raises(WiringError) as info:
        w.add_synapse(*args, **kwargs)
    assert isinstance(info.value, LillithError)
    assert info.value.fields


def test_add_sensory_synapse_errors() -> None:
    w = Wiring((2, 2, 2), n_inputs=2)
    w.add_sensory_synapse(1, 3)
    with pytest.raises(WiringError) as info:
        w.add_sensory_synapse(2, 0)
    assert info.value.fields["n_inputs"] == 2
    with pytest.raises(WiringError):
        w.add_sensory_synapse(0, 8)
    with pytest.raises(WiringError):
        w.add_sensory_synapse(0, 0, polarity=0)
    with pytest.raises(WiringError):
        Wiring((2, 2, 2)).add_sensory_synapse(0, 0)


def test_vector_add_errors() -> None:
    w = Wiring((2, 2, 2))
    with pytest.raises(WiringError):
        w._add_synapses([0, 1], [1])
    with pytest.raises(WiringError):
        w._add_synapses([0, 9], [1, 2])
    with pytest.raises(WiringError):
        w._add_synapses([0, 1], [1, 2], polarity_array=[1, 0])
    with pytest.raises(WiringError):
        w._add_synapses([0, 1], [1, 2], weight_array=-1.0)
    with pytest.raises(WiringError):
        w.set_tau([0], 0.0)
    with pytest.raises(WiringError):
        w.set_tau([8], 1.0)
    with pytest.raises(WiringError):
        w.set_population([0], 200)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (Wiring, {"shape": (0, 1, 1)}),
        (Wiring, {"shape": (1, 1)}),
        (Wiring, {"shape": "abc"}),
        (Wiring, {"shape": (1, 1, 1), "seed": -1}),
        (Wiring, {"shape": (1, 1, 1), "tau_m": 0}),
        (Wiring, {"shape": (1, 1, 1), "inhibitory_fraction": 1.5}),
        (Wiring, {"shape": (1, 1, 1), "n_inputs": -2}),
        (Local3D, {"shape": (1, 1, 1), "radius": -1}),
        (MultiScale, {"shape": (1, 1, 1), "fractions": (1, 1)}),
        (MultiScale, {"shape": (1, 1, 1), "taus": (1, 0, 1)}),
        (MultiScale, {"shape": (1, 1, 1), "fractions": (0, 0, 0)}),
        (Random, {"shape": (1, 1, 1), "fan_in": -3}),
        (NCP, {"shape": (1, 1, 1), "sensory_fraction": 0.0}),
        (NCP, {"shape": (1, 1, 1), "motor_fanin": 0}),
    ],
)
def test_bad_parameters(cls: Callable[..., Wiring], kwargs: dict[str, Any]) -> None:
    with pytest.raises(WiringError):
        cls(**kwargs)


def test_repr() -> None:
    assert repr(Local3D((2, 2, 2), radius=1)).startswith("Local3D(shape=[2, 2, 2]")
