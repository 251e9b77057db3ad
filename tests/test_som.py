"""Tests of lillith.fabric.som (online SOM, numba kernels)."""

from __future__ import annotations

import itertools
import json
import math
import textwrap

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lillith.errors import FabricError, StateError
from lillith.fabric import _som_kernels as som_mod
from lillith.fabric.som import NEIGHBOURHOOD_CUTOFF, SelfOrganizingMap

from .nojit import run_python

# --------------------------------------------------------------------------
# plain-numpy reference of one online step (same formulas, written directly)
# --------------------------------------------------------------------------


class ReferenceSOM:
    """Direct implementation of the documented update (no tables, no boxes)."""

    def __init__(
        self,
        weights: npt.NDArray[np.float32],
        map_shape: tuple[int, ...],
        *,
        sigma0: float,
        sigma_min: float,
        lr0: float,
        lr_min: float,
        decay_steps: float,
    ) -> None:
        self.W = weights.astype(np.float32).copy()
        self.grid = np.indices(map_shape).reshape(len(map_shape), -1).T.astype(np.float64)
        self.sigma0, self.sigma_min = sigma0, sigma_min
        self.lr0, self.lr_min = lr0, lr_min
        self.tau = decay_steps
        self.t = 0

    def step(self, x: npt.NDArray[np.float32]) -> int:
        x = x.astype(np.float32)
        d2 = ((x.astype(np.float64) - self.W.astype(np.float64)) ** 2).sum(axis=1)
        b = int(np.argmin(d2))
        e = math.exp(-self.t / self.tau)
        sigma = self.sigma_min + (self.sigma0 - self.sigma_min) * e
        lr = self.lr_min + (self.lr0 - self.lr_min) * e
        dg2 = ((self.grid - self.grid[b]) ** 2).sum(axis=1)
        h = np.exp(-dg2 / (2.0 * sigma * sigma))
        keep = h >= NEIGHBOURHOOD_CUTOFF
        c = (lr * h[keep]).astype(np.float32)
        self.W[keep] += c[:, None] * (x[None, :] - self.W[keep])
        self.t += 1
        return b


def _clusters(
    rng: np.random.Generator, n: int, dim: int, k: int = 6, spread: float = 0.5
) -> npt.NDArray[np.float32]:
    centres = rng.uniform(-3.0, 3.0, size=(k, dim))
    labels = rng.integers(0, k, size=n)
    return (centres[labels] + rng.normal(0.0, spread, size=(n, dim))).astype(np.float32)


def _states_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a
    )


# --------------------------------------------------------------------------
# correctness against the reference
# --------------------------------------------------------------------------


@pytest.mark.parametrize("map_shape", [(5, 6), (3, 4, 2)])
def test_golden_steps_match_numpy_reference(map_shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(7)
    dim = 7
    params = {"sigma0": 2.5, "sigma_min": 0.5, "lr0": 0.5, "lr_min": 0.01, "decay_steps": 15.0}
    som = SelfOrganizingMap(map_shape, dim, seed=3, **params)  # type: ignore[arg-type]
    ref = ReferenceSOM(som.get_state()["weights"], map_shape, **params)
    X = rng.normal(0.0, 2.0, size=(40, dim)).astype(np.float32)

    first = som.update(X[0])
    assert first == ref.step(X[0])
    np.testing.assert_allclose(som.get_state()["weights"], ref.W, rtol=0, atol=1e-6)

    bmus = som.update_batch(X[1:])
    ref_bmus = [ref.step(x) for x in X[1:]]
    assert bmus.tolist() == ref_bmus
    np.testing.assert_allclose(som.get_state()["weights"], ref.W, rtol=0, atol=1e-5)
    assert som.step == ref.t == 40


def test_update_batch_equals_per_sample_updates() -> None:
    rng = np.random.default_rng(1)
    X = _clusters(rng, 300, 5)
    a = SelfOrganizingMap((6, 6), 5, decay_steps=100, seed=2)
    b = SelfOrganizingMap((6, 6), 5, decay_steps=100, seed=2)
    bmus_a = a.update_batch(X)
    bmus_b = [b.learn_one(x) for x in X]
    assert bmus_a.dtype == np.int64
    assert bmus_a.tolist() == bmus_b
    assert _states_equal(a.get_state(), b.get_state())


def test_bmu_and_quantization_error_match_brute_force() -> None:
    rng = np.random.default_rng(4)
    X = _clusters(rng, 500, 4)
    som = SelfOrganizingMap((7, 5), 4, decay_steps=200)
    som.update_batch(X)
    W = som.get_state()["weights"].astype(np.float64)
    d = np.sqrt(((X[:, None, :].astype(np.float64) - W[None]) ** 2).sum(-1))
    assert [som.bmu(x) for x in X[:50]] == d[:50].argmin(1).tolist()
    assert som.bmus(X).tolist() == d.argmin(1).tolist()
    assert som.quantization_error(X) == pytest.approx(d.min(1).mean(), rel=1e-5)
    b = som.bmu(X[0])
    assert som.bmu_coords(X[0]) == tuple(int(i) for i in np.unravel_index(b, (7, 5)))


# --------------------------------------------------------------------------
# robustness
# --------------------------------------------------------------------------


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    data=st.data(),
    dim=st.integers(min_value=1, max_value=9),
    map_shape=st.sampled_from([(2, 3), (4, 4), (3, 2, 2)]),
)
def test_random_finite_inputs_never_produce_nan_or_inf(
    data: st.DataObject, dim: int, map_shape: tuple[int, ...]
) -> None:
    X = data.draw(
        hnp.arrays(
            np.float64,
            st.tuples(st.integers(1, 25), st.just(dim)),
            elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
        )
    )
    som = SelfOrganizingMap(map_shape, dim, decay_steps=5)
    bmus = som.update_batch(X)
    bmus = np.concatenate([bmus, [som.update(x) for x in X[:3]]])
    n_units = int(np.prod(map_shape))
    assert np.all((bmus >= 0) & (bmus < n_units))
    state = som.get_state()
    assert np.all(np.isfinite(state["weights"]))
    assert np.all(np.isfinite(state["ring_qe"]))
    assert 0 <= som.bmu(X[0]) < n_units
    assert math.isfinite(som.quantization_error(X))
    assert 0.0 <= som.topographic_error(X) <= 1.0
    act = som.get_activation_map(X[-1])
    assert act.shape == map_shape and act.dtype == np.float32
    assert np.all(np.isfinite(act)) and np.all((act >= 0) & (act <= 1))
    assert np.all(np.isfinite(som.u_matrix()))
    status = som.get_training_status()
    assert math.isfinite(status["recent_quant_error"])


def test_bad_input_raises_fabric_error() -> None:
    som = SelfOrganizingMap((4, 4), 3)
    before = som.get_state()
    bad_samples: list[object] = [
        [1.0, 2.0],  # wrong dim
        [[1.0, 2.0, 3.0]],  # 2-D where a sample is expected
        [np.nan, 0.0, 0.0],
        [np.inf, 0.0, 0.0],
        [1e300, 0.0, 0.0],  # overflows float32
        [1e16, 0.0, 0.0],  # beyond MAX_ABS_INPUT
        ["a", "b", "c"],
        [1 + 1j, 0.0, 0.0],
    ]
    for x in bad_samples:
        for fn in (som.update, som.bmu, som.bmu_coords, som.get_activation_map):
            with pytest.raises(FabricError):
                fn(x)  # type: ignore[arg-type]
    with pytest.raises(FabricError) as info:
        som.update_batch(np.array([[0.0, 0.0, 0.0], [0.0, np.nan, 0.0]]))
    assert info.value.fields["row"] == 1
    with pytest.raises(FabricError):
        som.update_batch(np.zeros((5, 4)))
    with pytest.raises(FabricError):
        som.quantization_error(np.zeros((0, 3)))
    with pytest.raises(FabricError):
        som.topographic_error([[0.0, np.nan, 1.0]])
    # a rejected batch learned nothing
    assert _states_equal(before, som.get_state())


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(map_shape=(1, 1), dim=3),
        dict(map_shape=(4,), dim=3),
        dict(map_shape=(2, 2, 2, 2), dim=3),
        dict(map_shape=(4, 0), dim=3),
        dict(map_shape=(4, 4), dim=0),
        dict(map_shape=(4, 4)),
        dict(map_shape=(4, 4), dim=3, sigma0="big"),
        dict(map_shape=(4, 4), dim=3, lr0=True),
        dict(map_shape=(4, 4), dim=3, lr0=1.5),
        dict(map_shape=(4, 4), dim=3, lr_min=0.0),
        dict(map_shape=(4, 4), dim=3, lr0=0.005, lr_min=0.01),
        dict(map_shape=(4, 4), dim=3, sigma0=0.3, sigma_min=0.5),
        dict(map_shape=(4, 4), dim=3, sigma_min=0.0),
        dict(map_shape=(4, 4), dim=3, decay_steps=0),
        dict(map_shape=(4, 4), dim=3, decay_steps=float("nan")),
        dict(map_shape=(4, 4), dim=3, qe_window=1),
        dict(map_shape=(4, 4), dim=3, init="pca"),
        dict(map_shape=(4, 4), dim=3, seed=-1),
    ],
)
def test_bad_parameters_raise_fabric_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(FabricError):
        SelfOrganizingMap(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# schedule, collapse, learning quality
# --------------------------------------------------------------------------


def test_annealing_reaches_and_respects_floors() -> None:
    som = SelfOrganizingMap((10, 10), 2, sigma0=5.0, sigma_min=0.5, lr0=0.5, lr_min=0.01)
    steps = [0, 1, 10, 1_000, 10_000, 100_000, 1_000_000, 10**12]
    sched = [som.schedule(t) for t in steps]
    sigmas = [s for s, _ in sched]
    lrs = [lr for _, lr in sched]
    assert sigmas[0] == 5.0 and lrs[0] == 0.5
    assert all(a >= b for a, b in itertools.pairwise(sigmas))
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    assert all(s >= 0.5 for s in sigmas) and all(lr >= 0.01 for lr in lrs)
    assert sigmas[-2] == pytest.approx(0.5, abs=1e-12)
    assert lrs[-2] == pytest.approx(0.01, abs=1e-12)

    # jump the clock to one million steps: the floors hold and learning goes on
    rng = np.random.default_rng(0)
    som.update_batch(rng.normal(0.0, 1.0, size=(600, 2)).astype(np.float32))
    state = som.get_state()
    state["step"] = np.array([1_000_000], dtype=np.int64)
    som.set_state(state)
    status = som.get_training_status()
    assert status["sigma"] == pytest.approx(0.5, abs=1e-12)
    assert status["lr"] == pytest.approx(0.01, abs=1e-12)
    new_region = rng.normal(0.0, 0.3, size=(3000, 2)).astype(np.float32) + np.float32(40.0)
    qe_before = som.quantization_error(new_region[:500])
    som.update_batch(new_region)
    assert som.step == 1_003_000
    assert som.quantization_error(new_region[:500]) < 0.1 * qe_before


def test_first_sample_does_not_collapse_the_map() -> None:
    som = SelfOrganizingMap((17, 17), 8)  # defaults: sigma0 = 8.5, lr0 = 0.5
    assert som.schedule(0) == (8.5, 0.5)
    w0 = som.get_state()["weights"]
    x = np.full(8, 5.0, dtype=np.float32)
    b = som.update(x)
    w1 = som.get_state()["weights"]
    assert len(np.unique(w1, axis=0)) == som.n_units
    spread = np.linalg.norm(w1 - w1.mean(axis=0), axis=1).max()
    assert spread > 0.5
    # the BMU moved exactly half-way (lr0 = 0.5, h = 1)
    np.testing.assert_allclose(w1[b], w0[b] + 0.5 * (x - w0[b]), rtol=1e-6)
    # the far corner moved less than the BMU
    far = int(np.argmax(np.abs(np.indices((17, 17)).reshape(2, -1).T - [b // 17, b % 17]).sum(1)))
    assert np.linalg.norm(w1[far] - w0[far]) < np.linalg.norm(w1[b] - w0[b])

    # same with a data-scaled initialisation
    som2 = SelfOrganizingMap((17, 17), 8)
    som2.init_from_data(np.random.default_rng(0).normal(size=(100, 8)))
    som2.update(x)
    assert len(np.unique(som2.get_state()["weights"], axis=0)) == som2.n_units


def test_training_on_clustered_3d_data_uses_the_map() -> None:
    rng = np.random.default_rng(0)
    X = _clusters(rng, 4000, 3)
    held = _clusters(np.random.default_rng(0), 1000, 3)  # same centres
    som = SelfOrganizingMap((8, 8), 3, decay_steps=500, seed=1)
    assert som.get_training_status()["trained"] is False
    assert math.isnan(som.get_training_status()["recent_quant_error"])
    qe0 = som.quantization_error(held)
    som.update_batch(X)
    qe1 = som.quantization_error(held)
    assert qe1 < 0.3 * qe0
    assert som.utilization_fraction() > 0.5
    status = som.get_training_status()
    assert set(status) >= {"trained", "utilization_fraction", "recent_quant_error", "step"}
    assert status["trained"] is True
    assert status["step"] == 4000
    assert status["utilization_fraction"] == som.utilization_fraction()
    # recent qe (measured during learning) tracks held-out qe
    assert status["recent_quant_error"] == pytest.approx(qe1, rel=0.3)
    assert som.topographic_error(held) < 0.2
    assert int(som.hit_map().sum()) == 4000
    assert som.hit_map().shape == (8, 8)


def test_utilization_uses_the_recent_window_only() -> None:
    som = SelfOrganizingMap((4, 4), 2, qe_window=10, decay_steps=1)
    som.update_batch(np.random.default_rng(0).uniform(-1, 1, size=(200, 2)))
    assert som.utilization_fraction() > 0.2
    x = np.array([0.3, 0.3], dtype=np.float32)
    som.update_batch(np.repeat(x[None], 10, axis=0))
    assert som.utilization_fraction() <= 2 / 16  # at most two units won the last 10
    assert int(som.hit_map().sum()) == 210


# --------------------------------------------------------------------------
# topographic error, u-matrix, activation
# --------------------------------------------------------------------------


def _with_weights(map_shape: tuple[int, ...], weights: npt.ArrayLike) -> SelfOrganizingMap:
    w = np.asarray(weights, dtype=np.float32)
    som = SelfOrganizingMap(map_shape, w.shape[1])
    state = som.get_state()
    state["weights"] = w
    som.set_state(state)
    return som


def test_topographic_error_hand_built() -> None:
    # 3x3 map, units u = 3 i + j; all units far away except the ones named
    w = np.array([[100.0 + 10 * u, 100.0] for u in range(9)])
    w[0] = (0.0, 0.0)  # grid (0, 0)
    w[4] = (1.0, 0.0)  # grid (1, 1): diagonal neighbour of 0
    w[8] = (-1.5, 0.0)  # grid (2, 2): not a neighbour of 0
    som = _with_weights((3, 3), w)
    x_ok = [0.4, 0.0]  # 1st 0, 2nd 4 -> neighbours
    x_bad = [-0.6, 0.0]  # 1st 0, 2nd 8 -> Chebyshev distance 2
    x_ok2 = [1.2, 0.0]  # 1st 4, 2nd 0 -> neighbours
    assert som.topographic_error([x_ok]) == 0.0
    assert som.topographic_error([x_bad]) == 1.0
    assert som.topographic_error([x_ok, x_bad, x_ok2, x_bad]) == 0.5
    assert som.topographic_error(np.array(x_ok)) == 0.0  # a single sample

    # 3-D map: (0,0,0) and (1,1,1) are neighbours, (0,0,0) and (0,0,2) are not
    w3 = np.array([[100.0 + 10 * u, 100.0] for u in range(27)])
    w3[0] = (0.0, 0.0)
    w3[13] = (1.0, 0.0)  # (1, 1, 1)
    w3[2] = (-1.5, 0.0)  # (0, 0, 2)
    som3 = _with_weights((3, 3, 3), w3)
    assert som3.topographic_error([x_ok, x_bad]) == 0.5


def test_u_matrix_hand_built() -> None:
    # 2x2 map in 1-D input space: every unit neighbours every other one
    som = _with_weights((2, 2), [[0.0], [1.0], [3.0], [6.0]])
    u = som.u_matrix()
    assert u.shape == (2, 2)
    expected = [(1 + 3 + 6) / 3, (1 + 2 + 5) / 3, (3 + 2 + 3) / 3, (6 + 5 + 3) / 3]
    np.testing.assert_allclose(u.ravel(), expected, rtol=1e-6)


def test_activation_map_does_not_mutate_state() -> None:
    rng = np.random.default_rng(3)
    som = SelfOrganizingMap((6, 5), 4, decay_steps=50)
    som.update_batch(_clusters(rng, 200, 4))
    before = som.get_state()
    status_before = som.get_training_status()
    x = rng.normal(size=4).astype(np.float32)
    act = som.get_activation_map(x)
    for _ in range(3):
        som.get_activation_map(x)
        som.bmu(x)
        som.quantization_error(x)
        som.topographic_error(x)
        som.u_matrix()
        som.hit_map()
    assert _states_equal(before, som.get_state())
    assert som.get_training_status() == status_before
    assert act.shape == (6, 5) and act.dtype == np.float32
    assert np.all((act >= 0) & (act <= 1))
    assert int(np.argmax(act)) == som.bmu(x)


# --------------------------------------------------------------------------
# state
# --------------------------------------------------------------------------


def test_state_round_trip_continues_bit_identically() -> None:
    rng = np.random.default_rng(11)
    X = _clusters(rng, 1500, 6)
    a = SelfOrganizingMap((7, 6), 6, decay_steps=300, qe_window=97, seed=5)
    a.update_batch(X[:900])  # the ring has wrapped several times
    state = a.get_state()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert state["weights"].dtype == np.float32 and state["weights"].flags.c_contiguous
    assert state["step"].dtype == np.int64 and int(state["step"][0]) == 900

    b = SelfOrganizingMap((7, 6), 6, qe_window=97, seed=99, decay_steps=1)
    b.set_state(state)
    c = SelfOrganizingMap.from_state(state)
    assert _states_equal(a.get_state(), b.get_state())
    state["weights"][:] = 0.0  # the dict holds copies
    assert not np.all(a.get_state()["weights"] == 0.0)

    for som in (a, b, c):
        som.update_batch(X[900:1300])
        for x in X[1300:]:
            som.update(x)
    sa, sb, sc = a.get_state(), b.get_state(), c.get_state()
    assert np.array_equal(sa["weights"], sb["weights"])
    assert np.array_equal(sa["weights"], sc["weights"])
    assert _states_equal(sa, sb)
    assert a.get_training_status() == b.get_training_status()
    assert a.utilization_fraction() == c.utilization_fraction()


def test_set_state_validates() -> None:
    som = SelfOrganizingMap((4, 4), 3, qe_window=8)
    good = som.get_state()

    def broken(**changes: np.ndarray) -> dict[str, np.ndarray]:
        return {**good, **changes}

    cases = [
        {k: v for k, v in good.items() if k != "weights"},
        broken(weights=np.zeros((16, 4), dtype=np.float32)),
        broken(weights=np.full((16, 3), np.nan, dtype=np.float32)),
        broken(map_shape=np.array([2, 8])),
        broken(ring_bmu=np.zeros(9, dtype=np.int64)),
        broken(step=np.array([-1])),
        broken(ring_len=np.array([3]), ring_pos=np.array([3])),  # more samples than steps
        broken(lr0=np.array([2.0])),
        broken(hits=np.zeros(16, dtype=np.float64)),
    ]
    for bad in cases:
        with pytest.raises(StateError):
            som.set_state(bad)
    assert _states_equal(good, som.get_state())
    with pytest.raises(StateError):
        SelfOrganizingMap((4, 4), 2).set_state(good)


# --------------------------------------------------------------------------
# 3-D maps, kernel options, no-JIT equivalence
# --------------------------------------------------------------------------


def test_three_dimensional_map() -> None:
    rng = np.random.default_rng(5)
    X = _clusters(rng, 2000, 5)
    som = SelfOrganizingMap((4, 3, 5), 5, decay_steps=300)
    assert som.coords.shape == (60, 3) and som.coords.dtype == np.float32
    bmus = som.update_batch(X)
    assert bmus.min() >= 0 and bmus.max() < 60
    coords = som.bmu_coords(X[0])
    assert len(coords) == 3 and all(0 <= c < s for c, s in zip(coords, (4, 3, 5), strict=True))
    assert som.hit_map().shape == (4, 3, 5)
    assert som.u_matrix().shape == (4, 3, 5)
    assert som.get_activation_map(X[0]).shape == (4, 3, 5)
    assert som.utilization_fraction() > 0.5
    assert som.topographic_error(X[:500]) < 0.3


def test_kernels_are_compiled_with_fabric_options() -> None:
    for name in ("_train", "_dist_range", "_apply", "_bmu_batch", "_top2_batch", "_u_matrix"):
        kernel = getattr(som_mod, name)
        opts = kernel.targetoptions
        assert opts.get("nogil") is True, name
        assert not opts.get("fastmath"), name
        assert type(kernel._cache).__name__ == "FunctionCache", name  # cache=True


_NOJIT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from lillith.fabric.som import SelfOrganizingMap

    rng = np.random.default_rng(0)
    X = rng.normal(0.0, 1.0, size=(24, 5)).astype(np.float32)
    som = SelfOrganizingMap((4, 3), 5, decay_steps=10.0, qe_window=6, seed=3)
    bmus = som.update_batch(X[:20]).tolist()
    bmus += [som.update(x) for x in X[20:]]
    out = {
        "bmus": bmus,
        "weights": som.get_state()["weights"].tolist(),
        "qe": som.quantization_error(X),
        "te": som.topographic_error(X),
        "u": som.u_matrix().ravel().tolist(),
        "status": som.get_training_status(),
    }
    json.dump(out, sys.stdout)
    """
)


@pytest.mark.nojit
def test_pure_python_kernels_match_jitted() -> None:
    nojit = json.loads(run_python(_NOJIT_SCRIPT))

    rng = np.random.default_rng(0)
    X = rng.normal(0.0, 1.0, size=(24, 5)).astype(np.float32)
    som = SelfOrganizingMap((4, 3), 5, decay_steps=10.0, qe_window=6, seed=3)
    bmus = som.update_batch(X[:20]).tolist()
    bmus += [som.update(x) for x in X[20:]]
    assert nojit["bmus"] == bmus
    np.testing.assert_allclose(
        np.array(nojit["weights"], dtype=np.float32),
        som.get_state()["weights"],
        rtol=0,
        atol=1e-6,
    )
    assert nojit["qe"] == pytest.approx(som.quantization_error(X), rel=1e-6)
    assert nojit["te"] == som.topographic_error(X)
    np.testing.assert_allclose(nojit["u"], som.u_matrix().ravel(), rtol=1e-6)
    status = som.get_training_status()
    assert nojit["status"]["step"] == status["step"]
    assert nojit["status"]["recent_quant_error"] == pytest.approx(
        status["recent_quant_error"], rel=1e-6
    )


# --------------------------------------------------------------------------
# the BMU search by partial distance elimination equals the full pass
# --------------------------------------------------------------------------


def _clustered(rng: np.random.Generator, centres: npt.NDArray[np.float64],
               n: int) -> npt.NDArray[np.float32]:
    k, dim = centres.shape
    return (centres[rng.integers(0, k, n)] + rng.normal(0.0, 0.3, (n, dim))).astype(np.float32)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dim=st.sampled_from([127, 128, 130, 131, 192, 257, 515]),
    n_units=st.integers(2, 60),
    clustered=st.booleans(),
    duplicates=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_pruned_bmu_search_equals_the_full_pass(
    dim: int, n_units: int, clustered: bool, duplicates: bool, seed: int
) -> None:
    """Index and squared distance bit for bit, ties (duplicate units) included,
    whether most units are pruned (clustered data, prototypes on the clusters) or
    none (isotropic noise)."""
    rng = np.random.default_rng(seed)
    if clustered:  # units and samples on the same clusters: most units are pruned
        centres = rng.normal(0.0, 1.0, size=(4, dim))
        W = _clustered(rng, centres, n_units)
        X = _clustered(rng, centres, 30)
    else:
        W = rng.normal(0.0, 1.0, (n_units, dim)).astype(np.float32)
        X = rng.normal(0.0, 1.0, (30, dim)).astype(np.float32)
    if duplicates:
        W[n_units // 2:] = W[: n_units - n_units // 2]
        X[:10] = W[rng.integers(0, n_units, 10)]  # exact hits: distance 0, tied
    WT = np.ascontiguousarray(W.T)
    dist = np.zeros(n_units, np.float32)
    full = np.zeros(n_units, np.float32)
    alive = np.zeros(n_units, np.int64)
    for x in X:
        som_mod._dist_all(x, WT, full)
        want = som_mod._argmin(full)
        got = som_mod._bmu_pruned(x, WT, dist, alive)
        assert (int(got[0]), float(got[1])) == (int(want[0]), float(want[1]))


def test_pruned_bmu_search_prunes_on_clustered_data() -> None:
    """The point of it: on a map whose units sit on clusters, few units survive the
    first block (the rest of their distance is never summed)."""
    rng = np.random.default_rng(1)
    dim = 512
    W = _clustered(rng, rng.normal(0.0, 1.0, size=(10, dim)), 100)
    WT = np.ascontiguousarray(W.T)
    dist = np.zeros(100, np.float32)
    alive = np.zeros(100, np.int64)
    x = W[7] + rng.normal(0.0, 0.3, dim).astype(np.float32)
    b, _ = som_mod._bmu_pruned(x, WT, dist, alive)
    assert b == 7
    # survivors keep exact sums, the pruned keep a partial sum of the first block
    full = np.zeros(100, np.float32)
    som_mod._dist_all(x, WT, full)
    partial_only = dist < full
    assert partial_only.sum() >= 50


_NOJIT_PRUNED = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from lillith.fabric import _som_kernels as S

    rng = np.random.default_rng(5)
    c = rng.normal(0.0, 1.0, size=(3, 131))
    W = (c[rng.integers(0, 3, 12)] + rng.normal(0.0, 0.3, (12, 131))).astype(np.float32)
    X = (c[rng.integers(0, 3, 20)] + rng.normal(0.0, 0.3, (20, 131))).astype(np.float32)
    WT = np.ascontiguousarray(W.T)
    dist = np.zeros(12, np.float32)
    alive = np.zeros(12, np.int64)
    out = [[int(b), float(d)] for b, d in (S._bmu_pruned(x, WT, dist, alive) for x in X)]
    json.dump(out, sys.stdout)
    """
)


@pytest.mark.nojit
def test_pruned_bmu_search_pure_python_matches_jitted() -> None:
    nojit = json.loads(run_python(_NOJIT_PRUNED))
    jit = json.loads(run_python(_NOJIT_PRUNED, jit=True))
    assert nojit == jit
