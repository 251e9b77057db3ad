"""Evolution of the fabric: fitness, apoptosis and regrowth, lineage, gated skips."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lillith.errors import FabricError, StateError
from lillith.fabric import _fabric_kernels as K
from lillith.fabric import evolution as E
from lillith.fabric import rewire as W
from lillith.fabric.evolution import FitnessWeights, LayerStrategy
from lillith.fabric.neural_fabric import NeuralFabric3D
from lillith.fabric.wiring import Hierarchical, Local3D, Random, Wiring

from .fabric_reference import reference_step

FLOAT_KEYS = ("v", "m_na", "n_k", "c_ca", "vb", "cab", "hot", "ref", "adapt", "theta", "act", "w")


def _fabric(kind: str = "hier", shape: tuple[int, int, int] = (4, 4, 6), **kw: Any
            ) -> NeuralFabric3D:
    wiring = {
        "local": lambda: Local3D(shape, seed=1),
        "hier": lambda: Hierarchical(shape, seed=2),
        "gated": lambda: Hierarchical(shape, seed=2, skip_gates=True),
        "random": lambda: Random(shape, fan_in=6, seed=3),
    }[kind]()
    kw.setdefault("n_features", shape[2])
    return NeuralFabric3D(shape, n_inputs=3, wiring=wiring, seed=1, parallel=False, **kw)


def _warm(f: NeuralFabric3D, steps: int = 40, seed: int = 0, plasticity: float = 1.0) -> None:
    """Drive the fabric and feed it random loss gradients (fitness)."""
    rng = np.random.default_rng(seed)
    for t in range(steps):
        mode = "bidirectional" if t % 3 == 2 else "normal"
        f.step(3.0 * rng.standard_normal(f.n_inputs), mode=mode,  # type: ignore[arg-type]
               plasticity=plasticity)
        f.observe_importance(rng.standard_normal(f.n_features))


def _clone(f: NeuralFabric3D, kind: str = "hier", **kw: Any) -> NeuralFabric3D:
    g = _fabric(kind, f.shape, **kw)
    g.set_state(f.get_state())
    return g


def _index_of_id(f: NeuralFabric3D, ids: np.ndarray) -> np.ndarray:
    pos = {int(i): k for k, i in enumerate(f.neuron_id)}
    return np.array([pos[int(i)] for i in ids], dtype=np.int64)


def _slots(report: dict[str, Any]) -> np.ndarray:
    return np.array([s for lay in report["layers"] for s in lay["slots"]], dtype=np.int64)


def _silence(f: NeuralFabric3D, slots: np.ndarray) -> None:
    """Prune without regrowth: the dead are silent, send nothing, read out nothing."""
    f.act[slots] = 0.0
    f.w[np.isin(f.indices, slots)] = 0.0
    f.readout[slots] = 0.0


def _check_csr(f: NeuralFabric3D) -> None:
    W.check_topology(f._topology_of(vars(f)), f.n, f.n_branches, f.n_inputs, f.n_gates)
    rows = np.repeat(np.arange(f.n), np.diff(f.indptr))
    assert np.all(np.diff(f.indptr) >= 0)
    assert np.all(f.indices != rows), "self-loop"
    pairs = rows.astype(np.int64) * f.n + f.indices
    assert np.unique(pairs).size == pairs.size, "duplicate synapse"
    # feedback last in every row, fb_start where they begin
    for i in range(f.n):
        fb = f.feedback[f.indptr[i]:f.indptr[i + 1]]
        assert np.all(np.diff(fb.astype(int)) >= 0)
        assert f.fb_start[i] == f.indptr[i] + int((fb == 0).sum())
    # feedback flag matches the layers
    XY = f.shape[0] * f.shape[1]
    np.testing.assert_array_equal(f.feedback, (f.indices // XY > rows // XY).astype(np.uint8))


# ---------------------------------------------------------------------------
# readout and fitness
# ---------------------------------------------------------------------------
def test_pooled_with_unit_readout_is_bit_identical_to_plain_mean() -> None:
    f = _fabric("local", (3, 4, 5), n_features=5)
    _warm(f, 20)
    want = np.zeros(5, dtype=np.float32)
    K._pool(f.act, 5, want)
    np.testing.assert_array_equal(f.pooled(), want)
    f7 = _fabric("local", (3, 4, 5), n_features=7)  # slabs straddling layers
    _warm(f7, 20)
    want7 = np.zeros(7, dtype=np.float32)
    K._pool(f7.act, 7, want7)
    np.testing.assert_array_equal(f7.pooled(), want7)
    f.readout[:12] = 0.5
    assert f.pooled()[0] == pytest.approx(0.5 * f.act[:12].mean(), rel=1e-6)


def test_observe_importance_is_an_ema_of_activation_times_gradient() -> None:
    f = _fabric("local", (3, 3, 4), n_features=4, fitness_decay=0.9)
    _warm(f, 10)
    f.readout[:] = np.linspace(0.5, 1.5, f.n).astype(np.float32)
    before = f.importance.copy()
    grad = np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32)
    f.observe_importance(grad)
    slab = np.repeat(np.arange(4), 9)
    sample = np.abs(f.act * f.readout * grad[slab] / 9.0)
    np.testing.assert_allclose(f.importance, 0.9 * before + 0.1 * sample, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(f.fitness, f.importance)  # importance only: the EMA itself
    with pytest.raises(FabricError):
        f.observe_importance(np.zeros(3))
    with pytest.raises(FabricError):
        f.observe_importance([np.nan, 0, 0, 0])
    with pytest.raises(FabricError):
        f.observe_importance(grad, decay=1.0)


def test_multi_objective_fitness_combines_normalised_objectives() -> None:
    weights = FitnessWeights(importance=0.4, diversity=0.3, stability=0.2, energy=0.1)
    f = _fabric("hier", fitness_weights=weights)
    _warm(f, 60)
    assert np.all(np.isfinite(f.fitness)) and np.all(f.fitness >= 0)
    assert f.fitness.mean() == pytest.approx(1.0, rel=1e-3)  # each objective has mean 1
    g = _fabric("hier", fitness_weights={"energy": 1.0, "importance": 0.0})
    _warm(g, 5)
    m = np.add.reduceat(np.abs(g.w), g.indptr[:-1]) / np.maximum(np.diff(g.indptr), 1)
    eff = 1.0 / (1.0 + m / m.mean())
    np.testing.assert_allclose(g.fitness, eff / eff.mean(), rtol=1e-4)
    with pytest.raises(FabricError):
        FitnessWeights(stability=-1.0)
    with pytest.raises(FabricError):
        FitnessWeights.coerce({"beauty": 1.0})


# ---------------------------------------------------------------------------
# apoptosis: preservation
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["hier", "gated", "local"])
@pytest.mark.parametrize("allow_sensory", [False, True])
@pytest.mark.parametrize("mode", ["normal", "bidirectional"])
def test_preserving_split_equals_pruning_alone(kind: str, allow_sensory: bool, mode: str) -> None:
    a = _fabric(kind)
    _warm(a, 50)
    b = _clone(a, kind)
    report = b.apoptosis(strategies=LayerStrategy(prune_rate=0.25), step=50, seed=7,
                         allow_sensory=allow_sensory)
    slots = _slots(report)
    assert slots.size >= 5 * 4  # every non-sensory layer turned over
    sensory_layer = set(range(16))
    assert allow_sensory == bool(sensory_layer & set(slots.tolist()))
    assert b.nnz != a.nnz  # rows changed length
    _silence(a, slots)
    keep = np.ones(a.n, dtype=bool)
    keep[slots] = False
    rng = np.random.default_rng(5)
    for t in range(3):
        x = 3.0 * rng.standard_normal(3)
        a.step(x, mode=mode, plasticity=0.0)  # type: ignore[arg-type]
        b.step(x, mode=mode, plasticity=0.0)  # type: ignore[arg-type]
        tol = 1e-5 if t == 0 else 1e-4
        assert np.abs(a.act - b.act)[keep].max() < tol
        assert np.abs(a.pooled() - b.pooled()).max() < tol
    parents = _index_of_id(b, b.parent_ids[slots, 0])
    np.testing.assert_array_equal(b.act[slots], b.act[parents])
    np.testing.assert_array_equal(b.v[slots], b.v[parents])
    assert np.any(b.act[slots] > 0)


def test_preserving_split_copies_rows_and_shares_outgoing_weights() -> None:
    a = _fabric("hier")
    _warm(a, 30)
    b = _clone(a)
    report = b.apoptosis(strategies={3: {"prune_rate": 1 / 16}}, step=30, seed=1)
    (c,) = _slots(report)
    (p,) = _index_of_id(b, b.parent_ids[[c], 0])
    row = slice(b.indptr[c], b.indptr[c + 1])
    prow = slice(b.indptr[p], b.indptr[p + 1])
    for key in ("indices", "w", "polarity", "feedback", "gate"):
        np.testing.assert_array_equal(getattr(b, key)[row], getattr(b, key)[prow], err_msg=key)
    np.testing.assert_array_equal(np.diff(b.bptr[c * 5:(c + 1) * 5 + 1]),
                                  np.diff(b.bptr[p * 5:(p + 1) * 5 + 1]))
    for key in ("hot", "cab", "theta", "vb", "tau", "population"):
        np.testing.assert_array_equal(getattr(b, key)[c], getattr(b, key)[p], err_msg=key)
    # outgoing: every target of the parent hears parent and child at half weight
    p_out = np.nonzero(a.indices == p)[0]
    old_rows = np.repeat(np.arange(a.n), np.diff(a.indptr))
    new_rows = np.repeat(np.arange(b.n), np.diff(b.indptr))
    for j in p_out:
        t = old_rows[j]
        if t == c:
            continue
        jp = np.nonzero((new_rows == t) & (b.indices == p))[0]
        jc = np.nonzero((new_rows == t) & (b.indices == c))[0]
        assert jp.size == 1 and jc.size == 1 and jc[0] == jp[0] + 1
        assert b.w[jp[0]] == b.w[jc[0]] == np.float32(a.w[j] / 2)
    assert not np.any(np.isin(b.indices[b.indptr[c]:b.indptr[c + 1]], [c]))
    assert b.readout[c] == b.readout[p] == 0.5
    assert report["layers"][0]["strategy"] == "preservation"


def test_preservation_skips_slots_without_a_parent_in_their_pooling_slab() -> None:
    f = _fabric("hier", n_features=96)  # one neuron per slab: nothing can be preserved
    _warm(f, 10)
    report = f.apoptosis(strategies=LayerStrategy(prune_rate=0.25), step=1, seed=0)
    assert report["born"] == 0
    assert all(lay["skipped"] == 4 for lay in report["layers"][1:])


# ---------------------------------------------------------------------------
# apoptosis: mutation and crossover
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("regrowth", ["mutation", "crossover"])
def test_mutation_and_crossover_give_bounded_fresh_neurons(regrowth: str) -> None:
    f = _fabric("gated")
    _warm(f, 40)
    before = f.get_state()
    report = f.apoptosis(strategies={"prune_rate": 0.5, "mutation_strength": 2.0,
                                     "regrowth": regrowth}, step=40, seed=3, allow_sensory=True)
    slots = _slots(report)
    assert slots.size == 6 * 8
    assert np.all(np.isfinite(f.w)) and f.w.min() >= 0 and f.w.max() <= f.params.w_max
    assert np.all(np.isfinite(f.s_wsigned))
    assert np.all(f.v[slots] == np.float32(f.params.e_leak))
    for key in ("act", "theta", "cab", "hot", "vb", "adapt", "ref"):
        assert not np.any(getattr(f, key)[slots]), key
    assert np.all(f.readout[slots] == 1.0)
    _check_csr(f)
    rows = np.repeat(np.arange(f.n), np.diff(f.indptr))
    p1 = _index_of_id(f, f.parent_ids[slots, 0])
    old_rows = np.repeat(np.arange(f.n), np.diff(before["indptr"]))
    changed = 0
    for c, p in zip(slots, p1, strict=True):
        # the child's row has the parent's layout (minus a self-loop)
        pre_c = f.indices[rows == c]
        pre_p = f.indices[rows == p]
        np.testing.assert_array_equal(pre_c, pre_p[pre_p != c])
        changed += int(not np.array_equal(f.w[rows == c], f.w[rows == p][pre_p != c]))
        # the dead neuron's outgoing synapses stay (targets that did not die)
        out_old = set(old_rows[before["indices"] == c].tolist()) - set(slots.tolist())
        out_new = set(rows[f.indices == c].tolist())
        assert out_old <= out_new
    assert changed > slots.size // 2
    alphas = [a for lay in report["layers"] for a in lay["alpha"]]
    if regrowth == "crossover":
        assert len(alphas) == slots.size
        assert all(0.3 <= a <= 0.7 for a in alphas)
        assert np.all(f.parent_ids[slots, 1] >= 0)
        assert np.all(f.parent_ids[slots, 0] != f.parent_ids[slots, 1])
    else:
        assert alphas == [] and np.all(f.parent_ids[slots, 1] == -1)
    rng = np.random.default_rng(0)
    for _ in range(30):
        f.step(3 * rng.standard_normal(3), plasticity=2.0)
    assert np.all(np.isfinite(f.act))


def test_crossover_blends_weights_matched_by_presynaptic_neuron() -> None:
    f = _fabric("local")
    _warm(f, 30)
    before = {k: v.copy() for k, v in f.get_state().items()}
    report = f.apoptosis(strategies={2: LayerStrategy(0.0625, 0.0, "crossover")}, step=3, seed=2)
    (c,) = _slots(report)
    (alpha,) = report["layers"][0]["alpha"]
    p1, p2 = _index_of_id(f, f.parent_ids[[c], :].ravel())
    ptr, ind, w = before["indptr"], before["indices"], before["w"]
    w2 = dict(zip(ind[ptr[p2]:ptr[p2 + 1]].tolist(), w[ptr[p2]:ptr[p2 + 1]].tolist(),
                  strict=True))
    pre1 = ind[ptr[p1]:ptr[p1 + 1]]
    w1 = w[ptr[p1]:ptr[p1 + 1]]
    ok = pre1 != c
    want = alpha * w1[ok] + (1 - alpha) * np.array([w2.get(int(q), 0.0) for q in pre1[ok]])
    got = f.w[f.indptr[c]:f.indptr[c + 1]]
    np.testing.assert_allclose(got, np.clip(want, 0, f.params.w_max), rtol=1e-6)  # strength 0


# ---------------------------------------------------------------------------
# lineage, caps, many rounds
# ---------------------------------------------------------------------------
def test_ids_unique_and_lineage_consistent_over_many_rounds() -> None:
    f = _fabric("gated", (3, 3, 5), n_features=5)
    record: dict[int, tuple[int, int]] = {i: (0, 0) for i in range(f.n)}  # id -> (gen, birth)
    rng = np.random.default_rng(1)
    step = 0
    for rnd in range(25):
        _warm(f, 5, seed=rnd)
        step += 5
        strategies = [LayerStrategy(float(rng.choice([0.0, 0.2, 0.5])), 0.5,
                                    str(rng.choice(E.REGROWTH)))  # type: ignore[arg-type]
                      for _ in range(5)]
        alive_before = set(f.neuron_id.tolist())
        report = f.apoptosis(strategies=strategies, step=step, seed=9, allow_sensory=rnd % 2 == 0)
        for lay in report["layers"]:
            assert lay["turnover"] <= int(np.floor(strategies[lay["layer"]].prune_rate * 9))
            assert len(lay["died"]) == len(lay["born"]) == lay["turnover"]
            assert set(lay["died"]) <= alive_before
            for born, parents in zip(lay["born"], lay["parents"], strict=True):
                assert born not in record
                living = [p for p in parents if p >= 0]
                assert living and set(living) <= alive_before
                assert not set(living) & set(lay["died"])
                gen = max(record[p][0] for p in living) + 1
                record[born] = (gen, step)
        ids = f.neuron_id
        assert np.unique(ids).size == f.n and f.next_id > ids.max()
        for k, i in enumerate(ids.tolist()):
            assert (int(f.generation[k]), int(f.birth_step[k])) == record[i]
        _check_csr(f)
    assert f.generation.max() >= 2
    assert f.next_id == f.n + sum(1 for i in record if i >= f.n)


def test_prune_rate_is_capped_and_strategies_validated() -> None:
    with pytest.raises(FabricError):
        LayerStrategy(prune_rate=E.MAX_PRUNE_RATE + 0.01)
    with pytest.raises(FabricError):
        LayerStrategy(regrowth="cloning")  # type: ignore[arg-type]
    with pytest.raises(FabricError):
        LayerStrategy(mutation_strength=-1)
    f = _fabric("hier")
    with pytest.raises(FabricError):
        f.apoptosis(strategies=[LayerStrategy()] * 5)
    with pytest.raises(FabricError):
        f.apoptosis(strategies={9: LayerStrategy()})
    with pytest.raises(FabricError):
        f.apoptosis(strategies={"prune_rate": 0.1, "speed": 3})
    report = f.apoptosis(strategies={"prune_rate": 0.5}, allow_sensory=True)
    assert [lay["turnover"] for lay in report["layers"]] == [8] * 6
    report = f.apoptosis(strategies={"prune_rate": 0.1})
    assert [lay["turnover"] for lay in report["layers"]] == [0] + [1] * 5


def test_newborns_inherit_fitness_so_they_are_not_culled_at_once() -> None:
    f = _fabric("hier")
    _warm(f, 30)
    report = f.apoptosis(strategies={"prune_rate": 0.25, "regrowth": "mutation"}, seed=1)
    slots = _slots(report)
    p1 = _index_of_id(f, f.parent_ids[slots, 0])
    np.testing.assert_array_equal(f.fitness[slots], f.fitness[p1])
    again = f.apoptosis(strategies={"prune_rate": 0.25, "regrowth": "mutation"}, seed=2)
    assert not set(_slots(again).tolist()) & set(slots.tolist())


# ---------------------------------------------------------------------------
# state
# ---------------------------------------------------------------------------
def test_state_round_trip_after_apoptosis_is_bit_exact_and_continues_identically() -> None:
    a = _fabric("gated")
    _warm(a, 30)
    a.apoptosis(strategies=[LayerStrategy(0.25, 0.3, r) for r in
                            ("preservation", "mutation", "crossover") * 2], step=30, seed=4,
                allow_sensory=True)
    _warm(a, 10, seed=1)
    b = _fabric("gated")
    b.set_state(a.get_state())
    sa, sb = a.get_state(), b.get_state()
    assert sa.keys() == sb.keys()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    for f in (a, b):
        _warm(f, 15, seed=2)
        f.apoptosis(strategies={"prune_rate": 0.2, "regrowth": "crossover"}, step=55, seed=4)
        _warm(f, 15, seed=3)
    sa, sb = a.get_state(), b.get_state()
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)
    np.testing.assert_array_equal(a.pooled(), b.pooled())
    assert a.n_gates == 4 and np.any(sa["generation"] > 0) and sa["next_id"] > a.n


def test_legacy_state_without_evolution_arrays_restores_with_defaults() -> None:
    a = _fabric("hier")
    _warm(a, 10)
    state = a.get_state()
    for key in ("bptr", "gate", "gate_pairs", "gate_logit", "gate_val", "readout", "fitness",
                "importance", "act_mean", "act_sq", "diversity", "parent_ids", "generation",
                "birth_step", "next_id"):
        del state[key]
    b = _fabric("hier")
    b.set_state(state)
    np.testing.assert_array_equal(b.bptr, a.bptr)
    assert b.next_id == a.n and np.all(b.readout == 1) and np.all(b.parent_ids == -1)
    c = _fabric("hier")
    c.set_state(a.get_state())
    for f in (b, c):
        f.step(np.ones(3))
    np.testing.assert_array_equal(b.act, c.act)


def test_set_state_rejects_broken_evolution_arrays() -> None:
    a = _fabric("hier")
    st_ = a.get_state()
    st_["bptr"] = st_["bptr"].copy()
    st_["bptr"][7] = st_["bptr"][9] + 1
    with pytest.raises(StateError):
        a.set_state(st_)
    st_ = a.get_state()
    st_["neuron_id"] = np.zeros(a.n, dtype=np.int64)
    with pytest.raises(StateError):
        a.set_state(st_)
    st_ = a.get_state()
    del st_["gate_pairs"]
    with pytest.raises(StateError):
        a.set_state(st_)


# ---------------------------------------------------------------------------
# kernel against the reference on evolved layouts and with gates
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gated", "hier", "local"])
def test_kernel_matches_reference_after_apoptosis_and_with_gates(kind: str) -> None:
    f = _fabric(kind, (3, 3, 6), n_features=6, n_branches=2, n_segments=3)
    _warm(f, 20, plasticity=3.0)
    f.apoptosis(strategies=[LayerStrategy(0.4, 0.5, r) for r in E.REGROWTH * 2], step=20,
                seed=5, allow_sensory=True)
    assert not np.array_equal(f.bptr, W.default_branch_ptr(f.indptr, 2))
    rng = np.random.default_rng(2)
    prm = f.params
    for t in range(25):
        x = 3.0 * rng.standard_normal(3)
        mode = ("normal", "bidirectional", "random")[t % 3]
        want = reference_step(f.get_state(), x, prm, mode=mode, plasticity=3.0, seed=1)
        f.step(x, mode=mode, plasticity=3.0)  # type: ignore[arg-type]
        got = f.get_state()
        for k in FLOAT_KEYS:
            g, w = got[k], want[k]
            if k == "hot":
                g, w = g * float(got["hot_gain"]), w * float(want["hot_gain"])
            np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-4, err_msg=k)
        if f.n_gates:
            np.testing.assert_allclose(got["gate_logit"], want["gate_logit"], rtol=1e-5,
                                       atol=1e-7)
            np.testing.assert_allclose(got["gate_val"], want["gate_val"], rtol=1e-6)


# ---------------------------------------------------------------------------
# gated skip connections
# ---------------------------------------------------------------------------
def test_skip_gates_open_under_plasticity_and_stay_in_unit_interval() -> None:
    f = _fabric("gated")
    assert f.n_gates == 4
    np.testing.assert_array_equal(f.skip_gate_pairs(), [[0, 2], [1, 3], [2, 4], [3, 5]])
    g0 = f.skip_gates()
    np.testing.assert_allclose(g0, 0.5)
    skip = f.gate >= 0
    rows = np.repeat(np.arange(f.n), np.diff(f.indptr))
    layer = rows // 16
    np.testing.assert_array_equal(f.gate[skip], layer[skip] - 2)
    np.testing.assert_array_equal(f.indices[skip] // 16, layer[skip] - 2)
    rng = np.random.default_rng(0)
    for _ in range(100):
        f.step(3 * rng.standard_normal(3), plasticity=0.0)
    np.testing.assert_array_equal(f.skip_gates(), g0)  # plasticity 0 freezes the gates
    for _ in range(300):
        f.step(3 * rng.standard_normal(3), plasticity=20.0)
    g1 = f.skip_gates()
    assert np.all((g1 > 0) & (g1 < 1)) and np.all(g1 > g0)
    # saturating rates keep them in (0, 1)
    for _ in range(50):
        f.step(3 * rng.standard_normal(3), plasticity=1e6)
    g2 = f.skip_gates()
    assert np.all((g2 > 0) & (g2 < 1)) and np.all(np.isfinite(g2))


def test_gate_scales_skip_current() -> None:
    f = _fabric("gated")
    _warm(f, 20)
    g = _clone(f, "gated")
    g.gate_val[:] = 1e-30  # gates shut: skip synapses silent
    h = _clone(f, "gated")
    sel = h.gate >= 0
    h.w[sel] = 0.0  # the same, by removing the skip weights
    for fab in (g, h):
        fab.step(np.ones(3), plasticity=0.0)
    np.testing.assert_allclose(g.act, h.act, atol=1e-6)


def test_no_gates_without_gated_skips_and_config_round_trip() -> None:
    shape = (3, 3, 6)
    assert _fabric("hier", shape).n_gates == 0
    assert _fabric("hier", shape).skip_gates().shape == (0,)
    no_skip = NeuralFabric3D(shape, n_inputs=2, wiring=Hierarchical(shape, skip=False,
                                                                     skip_gates=True))
    assert no_skip.n_gates == 0
    w = Hierarchical(shape, layers=3, skip_distance=2, skip_gates=True, seed=4)
    cfg = w.to_config()
    assert cfg["skip_gates"] is True
    w2 = Wiring.from_config(cfg)
    c1, c2 = w.build(), w2.build()
    assert c1.gate is not None and c2.gate is not None and c1.gate_pairs is not None
    np.testing.assert_array_equal(c1.gate, c2.gate)
    np.testing.assert_array_equal(c1.gate_pairs, [[0, 2]])
    assert "skip_gates" in Hierarchical(shape).to_config()
    assert Wiring.from_config({k: v for k, v in Hierarchical(shape).to_config().items()
                               if k != "skip_gates"}).build().gate is None


# ---------------------------------------------------------------------------
# property: random fitness and strategies keep the fabric valid
# ---------------------------------------------------------------------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(min_value=0, max_value=2**31 - 1),
    kind=st.sampled_from(["gated", "local", "random"]),
    rounds=st.integers(min_value=1, max_value=4),
    rates=st.lists(st.sampled_from([0.0, 0.1, 0.25, 0.5]), min_size=4, max_size=4),
    regrowth=st.lists(st.sampled_from(E.REGROWTH), min_size=4, max_size=4),
    strength=st.sampled_from([0.0, 0.3, 5.0]),
    allow_sensory=st.booleans(),
    fitness=st.sampled_from(["random", "zeros", "ties", "huge"]),
)
def test_property_apoptosis_keeps_fabric_valid(
    seed: int, kind: str, rounds: int, rates: list[float], regrowth: list[str],
    strength: float, allow_sensory: bool, fitness: str,
) -> None:
    shape = (3, 3, 4)
    f = _fabric(kind, shape, n_features=4, n_branches=3, n_segments=2)
    rng = np.random.default_rng(seed)
    strategies = [LayerStrategy(r, strength, g)  # type: ignore[arg-type]
                  for r, g in zip(rates, regrowth, strict=True)]
    for rnd in range(rounds):
        for _ in range(5):
            f.step(3 * rng.standard_normal(3), plasticity=2.0)
        f.fitness[:] = {
            "random": lambda: rng.random(f.n),
            "zeros": lambda: np.zeros(f.n),
            "ties": lambda: rng.integers(0, 2, f.n),
            "huge": lambda: rng.random(f.n) * 1e30,
        }[fitness]()
        report = f.apoptosis(strategies=strategies, step=rnd, seed=seed,
                             allow_sensory=allow_sensory)
        for lay in report["layers"]:
            assert lay["turnover"] <= int(np.floor(rates[lay["layer"]] * 9))
        _check_csr(f)
        assert np.unique(f.neuron_id).size == f.n
        s = f.get_state()
        for k in (*FLOAT_KEYS, "readout", "fitness", "s_wsigned", "gate_val"):
            assert np.all(np.isfinite(s[k])), k
        assert s["w"].min() >= 0 and s["w"].max() <= f.params.w_max
    for _ in range(5):
        f.step(3 * rng.standard_normal(3), plasticity=2.0)
    assert np.all(np.isfinite(f.act)) and np.all((f.act >= 0) & (f.act <= 1))


NOJIT_SCRIPT = r"""
import sys
import numpy as np
from lillith.fabric.evolution import LayerStrategy
from lillith.fabric.neural_fabric import NeuralFabric3D
from lillith.fabric.wiring import Hierarchical
shape = (3, 2, 5)
f = NeuralFabric3D(shape, n_inputs=2, wiring=Hierarchical(shape, seed=1, skip_gates=True),
                   n_features=5, seed=7, parallel=False)
rng = np.random.default_rng(3)
for t in range(12):
    f.step(2 * rng.standard_normal(2), mode=("normal", "bidirectional")[t % 2], plasticity=5.0)
    f.observe_importance(rng.standard_normal(5))
f.fitness[:] = np.random.default_rng(0).permutation(f.n)  # no ties decided by rounding
f.apoptosis(strategies=[LayerStrategy(0.5, 0.5, r) for r in
                        ("preservation", "mutation", "crossover", "mutation", "preservation")],
            step=12, seed=1, allow_sensory=True)
for t in range(6):
    f.step(2 * rng.standard_normal(2), plasticity=5.0)
np.savez(sys.argv[1], **f.get_state())
"""


@pytest.mark.nojit
def test_gated_kernel_and_evolution_without_jit_match_compiled(tmp_path: Any) -> None:
    from .nojit import run_python

    outs = {}
    for jit in (False, True):
        path = tmp_path / f"state_{int(jit)}.npz"
        run_python(NOJIT_SCRIPT, str(path), jit=jit)
        outs[jit] = dict(np.load(path))
    a, b = outs[True], outs[False]
    assert a.keys() == b.keys()
    for k in a:
        if a[k].dtype.kind == "f":
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-4, err_msg=k)
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert a["next_id"] > 30
