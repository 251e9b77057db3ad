"""NeuralFabric3D: equivalence with the numpy reference, properties, state, modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lillith.errors import FabricError, StateError
from lillith.fabric import _fabric_kernels as K
from lillith.fabric.neural_fabric import NeuralFabric3D
from lillith.fabric.params import FabricParams
from lillith.fabric.topology import index_of
from lillith.fabric.wiring import Hierarchical, Local3D, Random

from .fabric_reference import reference_step
from .nojit import run_python

FLOAT_KEYS = ("v", "m_na", "n_k", "c_ca", "vb", "cab", "hot", "ref", "adapt", "theta", "act", "w")


def _drive(rng: np.random.Generator, f: NeuralFabric3D, scale: float = 2.0) -> np.ndarray:
    return (scale * rng.standard_normal(f.n_inputs)).astype(np.float32)


def _assert_state_close(got: dict, want: dict, *, rtol: float = 2e-4, atol: float = 2e-4) -> None:
    for k in FLOAT_KEYS:
        g, w = got[k], want[k]
        if k == "hot":  # stored traces are scaled by a global gain
            g, w = g * float(got["hot_gain"]), w * float(want["hot_gain"])
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.parametrize("mode", ["normal", "random", "intentional", "bidirectional"])
@pytest.mark.parametrize("wiring_name", ["local", "random", "hier"])
def test_numba_step_matches_numpy_reference(mode: str, wiring_name: str) -> None:
    shape = (3, 3, 4)
    wiring = {
        "local": Local3D(shape, seed=1),
        "random": Random(shape, fan_in=7, seed=2),
        "hier": Hierarchical(shape, feedback=True, skip=True, seed=3),
    }[wiring_name]
    f = NeuralFabric3D(shape, n_inputs=3, wiring=wiring, seed=5, parallel=False)
    prm = f.params
    rng = np.random.default_rng(0)
    goal = rng.random(f.n).astype(np.float32)
    active = 0
    for t in range(40):
        x = _drive(rng, f, 3.0)
        if t == 7:
            f.add_synaptic_input((1, 1, 2), 2, 3, 1.5, 0.8)
        before = f.get_state()
        want = reference_step(before, x.astype(np.float64), prm, mode=mode, goal=goal,
                              plasticity=1.5, seed=5)
        f.step(x, mode=mode, goal=goal, plasticity=1.5)  # type: ignore[arg-type]
        _assert_state_close(f.get_state(), want)
        active += int((f.act > 0).sum())
    assert active > 0, "reference comparison never exercised active neurons"


def test_golden_single_neuron_step() -> None:
    """One isolated neuron, one input, one step: hand-written Euler arithmetic."""
    shape = (1, 1, 1)
    f = NeuralFabric3D(shape, n_inputs=1, wiring=Local3D(shape), seed=0, parallel=False)
    f.s_wsigned[:] = 0.5
    p = FabricParams()
    f.step([2.0])

    def sig(z: float) -> float:
        return 0.5 * (1 + z / (1 + abs(z)))

    v0 = p.e_leak
    m1 = min(1.0, p.dt / p.tau_na) * sig((v0 - p.v_na) / p.k_na)
    n1 = p.dt / p.tau_k * sig((v0 - p.v_k) / p.k_k)
    spk = sig((0.0 - p.theta_dend) / p.kappa_dend)
    idend = p.g_dend / 5 * 5 * (0.0 + p.a_dend * spk)
    drive = p.r_in * 0.5 * 2.0
    v1 = v0 + p.dt / 20.0 * (idend + drive + p.g_na * m1 * (p.e_na - v0)
                             + p.g_k * n1 * (p.e_k - v0))
    assert f.v[0] == pytest.approx(v1, rel=1e-5)
    assert f.m_na[0] == pytest.approx(m1, rel=1e-5)
    a1 = np.tanh((v1 - p.v_half) / p.v_scale) if v1 > p.v_half else 0.0
    assert f.act[0] == pytest.approx(a1, rel=1e-5, abs=1e-7)
    # golden literals of the default constants (guards accidental changes)
    assert f.v[0] == pytest.approx(-69.07629, abs=1e-4)


def test_parallel_kernel_matches_serial() -> None:
    shape = (6, 6, 8)
    a = NeuralFabric3D(shape, n_inputs=4, seed=3, parallel=False)
    b = NeuralFabric3D(shape, n_inputs=4, seed=3, parallel=True)
    rng = np.random.default_rng(1)
    for t in range(60):
        x = _drive(rng, a)
        mode = ("normal", "random", "bidirectional")[t % 3]
        a.step(x, mode=mode)  # type: ignore[arg-type]
        b.step(x, mode=mode)  # type: ignore[arg-type]
    # same equations; fastmath lets the two builds round differently (FMA contraction)
    _assert_state_close(a.get_state(), b.get_state(), rtol=1e-3, atol=1e-4)


def test_deterministic_for_a_seed_and_seed_matters() -> None:
    def run(seed: int) -> np.ndarray:
        f = NeuralFabric3D((4, 4, 4), n_inputs=2, seed=seed)
        rng = np.random.default_rng(9)
        for _ in range(50):
            f.step(_drive(rng, f), mode="random")
        return f.act.copy()

    np.testing.assert_array_equal(run(1), run(1))
    assert not np.array_equal(run(1), run(2))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fan_in=st.integers(min_value=0, max_value=12),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
    scale=st.sampled_from([0.0, 1.0, 1e3, 1e6, -1e6, 3.4e38]),
    plasticity=st.sampled_from([0.0, 1.0, 50.0, 1e4]),
    mode=st.sampled_from(["normal", "random", "intentional", "bidirectional"]),
)
def test_property_bounds_hold_and_no_nan(
    fan_in: int, seed: int, scale: float, plasticity: float, mode: str
) -> None:
    shape = (3, 2, 3)
    f = NeuralFabric3D(shape, n_inputs=2, wiring=Random(shape, fan_in=fan_in, seed=seed),
                       seed=seed, parallel=False, noise_scale=50.0)
    rng = np.random.default_rng(seed)
    p = f.params
    goal = rng.random(f.n)
    for _ in range(30):
        x = np.clip(scale * rng.standard_normal(2), -3.4e38, 3.4e38).astype(np.float32)
        f.step(x, mode=mode, goal=goal, plasticity=plasticity)  # type: ignore[arg-type]
        s = f.get_state()
        for k in FLOAT_KEYS:
            assert np.all(np.isfinite(s[k])), k
        assert np.all((s["act"] >= 0) & (s["act"] <= 1))
        assert np.all((s["w"] >= 0) & (s["w"] <= p.w_max))
        assert np.all((s["v"] >= p.v_min) & (s["v"] <= p.v_max))
        assert np.all(np.abs(s["vb"]) <= p.vb_max)
        for k in ("m_na", "n_k", "c_ca", "cab", "ref"):
            assert np.all((s[k] >= 0) & (s[k] <= 1)), k
        assert np.all(s["hot"] >= 0) and np.all(s["adapt"] >= 0)


def test_inputs_do_not_accumulate_across_calls() -> None:
    f = NeuralFabric3D((3, 3, 3), n_inputs=2, seed=0)
    x = np.array([1.0, -1.0])
    for _ in range(20):
        f.step(x)
    np.testing.assert_array_equal(f._x, x.astype(np.float32))
    f.step(None)
    assert np.all(f._x == 0.0)
    # one-shot synaptic input: consumed by exactly one step
    f.add_synaptic_input(0, 1, 2, 2.0, 1.0)
    assert f._pending[0, 1, 2] == pytest.approx(2.0)
    hot_before = float(f.hotspots(0)[1, 2])
    f.step(None)
    assert np.all(f._pending == 0.0) and not f._has_pending
    assert f.hotspots(0)[1, 2] > hot_before * np.exp(-1 / 50)
    sizes = {k: v.nbytes for k, v in f.get_state().items()}
    for _ in range(100):
        f.step(x)
    assert {k: v.nbytes for k, v in f.get_state().items()} == sizes


def test_state_round_trip_continues_bit_identically() -> None:
    a = NeuralFabric3D((4, 3, 5), n_inputs=3, seed=4)
    rng = np.random.default_rng(2)
    for _ in range(30):
        a.step(_drive(rng, a), mode="random")
    b = NeuralFabric3D((4, 3, 5), n_inputs=3, seed=99, noise_scale=0.1)
    b.set_state(a.get_state())
    xs = [_drive(rng, a) for _ in range(40)]
    for t, x in enumerate(xs):
        mode = ("normal", "random", "intentional", "bidirectional")[t % 4]
        a.step(x, mode=mode, goal=np.full(a.n, 0.5))  # type: ignore[arg-type]
        b.step(x, mode=mode, goal=np.full(a.n, 0.5))  # type: ignore[arg-type]
    sa, sb = a.get_state(), b.get_state()
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def test_set_state_rejects_mismatch() -> None:
    a = NeuralFabric3D((3, 3, 3), n_inputs=2)
    b = NeuralFabric3D((3, 3, 4), n_inputs=2)
    with pytest.raises(StateError):
        b.set_state(a.get_state())
    st_ = a.get_state()
    del st_["w"]
    with pytest.raises(StateError):
        a.set_state(st_)
    st_ = a.get_state()
    st_["indices"] = st_["indices"].copy()
    st_["indices"][0] = 10**6
    with pytest.raises(StateError):
        a.set_state(st_)
    # the step kernel divides by time constants without a zero test
    for key, idx, bad in (("tau", 0, 0.0), ("tau", 1, np.nan), ("params", K.P_TAU_B, 0.0),
                          ("params", K.P_K_NA, -1.0), ("params", K.P_DT, np.nan)):
        st_ = a.get_state()
        st_[key] = st_[key].copy()
        st_[key][idx] = bad
        with pytest.raises(StateError):
            a.set_state(st_)
    a.set_state(a.get_state())  # the untouched state still restores


def test_modes_change_dynamics() -> None:
    shape = (4, 4, 6)
    wiring = Hierarchical(shape, feedback=True, seed=0)

    def run(mode: str, **kw: float) -> np.ndarray:
        f = NeuralFabric3D(shape, n_inputs=2, wiring=wiring, seed=0, **kw)  # type: ignore[arg-type]
        rng = np.random.default_rng(0)
        acts = []
        for _ in range(200):
            f.step(_drive(rng, f), mode=mode, goal=np.ones(f.n))  # type: ignore[arg-type]
            acts.append(f.act.copy())
        return np.array(acts)

    normal = run("normal")
    assert not np.allclose(run("random"), normal)
    assert run("intentional").mean() > normal.mean()
    assert not np.allclose(run("bidirectional"), normal)
    # weight 0: feedback synapses silent, forward synapses at full gain = normal mode
    np.testing.assert_allclose(run("bidirectional", bidirectional_weight=0.0), normal, atol=1e-6)


def test_plasticity_multiplier_gates_weights() -> None:
    f = NeuralFabric3D((4, 4, 4), n_inputs=2, seed=0)
    rng = np.random.default_rng(0)
    w0 = f.w.copy()
    for _ in range(100):
        f.step(_drive(rng, f), plasticity=0.0)
    np.testing.assert_array_equal(f.w, w0)
    for _ in range(100):
        f.step(_drive(rng, f), plasticity=5.0)
    assert np.abs(f.w - w0).max() > 1e-4


def test_activation_map_layout_and_pooling() -> None:
    shape = (3, 4, 5)
    f = NeuralFabric3D(shape, n_inputs=2, n_features=5, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(30):
        f.step(_drive(rng, f, 4.0))
    amap = f.activation_map
    assert amap.shape == shape
    for x, y, z in [(0, 0, 0), (2, 3, 4), (1, 2, 3)]:
        assert amap[x, y, z] == f.act[index_of(x, y, z, shape)]
    pooled = f.pooled()
    assert pooled.shape == (5,)
    np.testing.assert_allclose(pooled, amap.mean(axis=(0, 1)), rtol=1e-6)
    out = np.empty(5, dtype=np.float32)
    assert f.pooled(out) is out
    assert f.dendrite_voltage((1, 1, 1)).shape == (5,)
    assert f.hotspots(3).shape == (5, 10)
    assert set(f.ion_channels((0, 0, 0))) == {"Na", "K", "Ca"}
    with pytest.raises(ValueError):
        f.activation[0] = 1.0


def test_input_validation() -> None:
    f = NeuralFabric3D((2, 2, 2), n_inputs=2)
    with pytest.raises(FabricError):
        f.step([1.0, 2.0, 3.0])
    with pytest.raises(FabricError):
        f.step([np.nan, 0.0])
    with pytest.raises(FabricError):
        f.step([0.0, 0.0], mode="sideways")  # type: ignore[arg-type]
    with pytest.raises(FabricError):
        f.step([0.0, 0.0], mode="intentional")
    with pytest.raises(FabricError):
        f.step([0.0, 0.0], plasticity=-1.0)
    with pytest.raises(FabricError):
        f.add_synaptic_input(0, 7, 0, 1.0, 1.0)
    with pytest.raises(FabricError):
        NeuralFabric3D((2, 2, 2), params=FabricParams(tau_branch=0.5))
    with pytest.raises(FabricError):
        NeuralFabric3D((2, 2, 2), wiring=Local3D((2, 2, 3)))


NOJIT_SCRIPT = r"""
import json, sys
import numpy as np
from lillith.fabric.neural_fabric import NeuralFabric3D
f = NeuralFabric3D((3, 2, 3), n_inputs=2, seed=7, parallel=False)
rng = np.random.default_rng(3)
for t in range(12):
    f.step(2 * rng.standard_normal(2), mode=("normal", "random", "bidirectional")[t % 3])
np.savez(sys.argv[1], **{k: v for k, v in f.get_state().items()})
"""


@pytest.mark.nojit
def test_kernels_without_jit_match_compiled(tmp_path: Path) -> None:
    outs = {}
    for jit in ("0", "1"):
        path = tmp_path / f"state_{jit}.npz"
        run_python(NOJIT_SCRIPT, str(path), jit=jit == "0")
        outs[jit] = dict(np.load(path))
    _assert_state_close(outs["1"], outs["0"], rtol=1e-4, atol=1e-4)
    assert json.dumps(sorted(outs["0"])) == json.dumps(sorted(outs["1"]))


def test_wiring_sensory_synapses_and_every_wiring_type_runs() -> None:
    from lillith.fabric.wiring import NCP, MultiScale

    shape = (3, 3, 6)
    for wiring in (NCP(shape, n_inputs=3, seed=1), MultiScale(shape, seed=1),
                   Hierarchical(shape, seed=1), Random(shape, fan_in=5, seed=1),
                   Local3D(shape, radius=2, seed=1)):
        f = NeuralFabric3D(shape, n_inputs=3, wiring=wiring, seed=0)
        rng = np.random.default_rng(0)
        total = 0.0
        for _ in range(50):
            total += float(f.step(3 * rng.standard_normal(3)).sum())
        assert np.isfinite(total) and total > 0, type(wiring).__name__
    with pytest.raises(FabricError):
        NeuralFabric3D(shape, n_inputs=2, wiring=NCP(shape, n_inputs=3))


def test_torch_baseline_computes_the_same_step() -> None:
    from lillith.bench.bench_fabric import equivalence_error

    assert equivalence_error((4, 3, 6), steps=5) < 1e-4


def test_biological_nonlinearity_refractory_adapts_and_recovers() -> None:
    from lillith.fabric import BiologicalNonlinearity

    nl = BiologicalNonlinearity(3)
    v = np.array([-80.0, -60.0, -40.0], dtype=np.float32)
    first = nl(v).copy()
    assert first[0] == 0.0 and 0 < first[1] < first[2] <= 1.0
    for _ in range(300):
        out = nl(v).copy()
    assert out[2] < first[2]  # fatigue under sustained drive
    for _ in range(2000):
        nl(np.full(3, -90.0, dtype=np.float32))
    np.testing.assert_allclose(nl(v), first, rtol=0.05)  # recovered at rest
    with pytest.raises(FabricError):
        nl([0.0])


def test_hotspot_gain_folding_keeps_traces_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    import lillith.fabric.fabric_core as nf

    monkeypatch.setattr(nf, "HOT_GAIN_FLOOR", 0.9)  # fold every few steps
    f = NeuralFabric3D((3, 3, 3), n_inputs=2, seed=1, parallel=False)
    rng = np.random.default_rng(0)
    for _ in range(40):
        x = _drive(rng, f)
        want = reference_step(f.get_state(), x.astype(np.float64), f.params)
        f.step(x)
        _assert_state_close(f.get_state(), want)
    assert 0.9 * np.exp(-1 / 50) <= f.hot_gain <= 1.0


def test_long_branch_blocks_wrap_segments_like_reference() -> None:
    """Branch blocks longer than n_segments take the kernel's general path."""
    shape = (3, 3, 4)
    f = NeuralFabric3D(shape, n_inputs=2, wiring=Local3D(shape, radius=2, seed=0),
                       n_branches=2, n_segments=3, seed=1, parallel=False)
    assert np.diff(f.indptr).max() // 2 > 3
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = _drive(rng, f, 3.0)
        want = reference_step(f.get_state(), x.astype(np.float64), f.params, plasticity=2.0)
        f.step(x, plasticity=2.0)
        _assert_state_close(f.get_state(), want)
