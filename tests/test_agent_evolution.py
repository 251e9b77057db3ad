"""Agent evolution: off by default, rounds on schedule, bit-exact resume, preservation,
mutation and crossover, specialization profile, fitness, configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lillith.agents.agent import Agent, AgentError
from lillith.agents.config import AgentConfig
from lillith.agents.metrics import Metrics
from lillith.runtime.resume import resume_agent
from lillith.state import SnapshotStore

torch.set_num_threads(1)

FABRIC, TILE = 0, 1  # kinds of the birth / death records


def small_config(evolution: dict[str, Any] | None = None, **top: Any) -> AgentConfig:
    """A small agent; ``n_features = 4`` makes each z-layer one pooling slab, so a
    preserving split always finds a parent in the dying neuron's slab."""
    return AgentConfig.model_validate({
        "fabric": {"shape": [3, 3, 4], "n_features": 4},
        "som": {"map_shape": [5, 5]},
        "predictor": {"batch_size": 8, "d_model": 16, "num_tiles": 8, "tiles_per_cluster": 4},
        "evolution": evolution or {},
        "seed": 0,
        **top,
    })


def evolving(every: int = 16, warmup: int = 0, regrowth: str = "preservation",
             **kw: Any) -> dict[str, Any]:
    """Evolution settings that turn something over in the small agent every round
    (2 of the 9 neurons of each non-sensory layer, 2 of the 4 units of each tile)."""
    return {"every": every, "warmup": warmup,
            "fabric": {"prune_rate": 0.25, "regrowth": regrowth},
            "tiles": {"prune_rate": 0.5, "regrowth": regrowth},
            "tile_min_observations": 1, **kw}


def periodic(n: int, *, seed: int = 0, width: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    return 10 + 3 * np.sin(2 * np.pi * t / (40 + 7 * np.arange(width))) + \
        0.3 * rng.standard_normal((n, width))


def run(agent: Agent, X: np.ndarray, chunk: int | None = None
        ) -> tuple[list[Metrics], list[dict[str, Any]]]:
    """Frames through ``agent`` in calls of ``chunk`` frames (None: one call); the
    agent runs its evolution rounds where they fall due and reports them."""
    out: list[Metrics] = []
    reports: list[dict[str, Any]] = []
    n = chunk or X.shape[0]
    for i in range(0, X.shape[0], n):
        out += agent.process_many(X[i:i + n], on_evolution=reports.append)
    return out, reports


def assert_states_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def with_meta(state: dict[str, np.ndarray], meta: dict[str, Any]) -> dict[str, np.ndarray]:
    out = dict(state)
    out["agent/meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8).copy()
    return out


def assert_finite(ms: list[Metrics]) -> None:
    for m in ms:
        vals = [m.loss, m.anomaly_score, m.anomaly_likelihood, m.energy, m.learning_drive,
                m.mood, *m.prediction]
        assert np.all(np.isfinite(vals)), m
        assert 0.0 <= m.anomaly_likelihood <= 1.0


# ---------------------------------------------------------------------------
# (a) off by default
# ---------------------------------------------------------------------------
def test_evolution_is_off_by_default_and_leaves_no_trace() -> None:
    assert not AgentConfig().evolution.enabled
    agent = Agent(2, small_config())
    assert not agent.evolving
    agent.process_many(periodic(96))
    assert agent.total_updates > 0  # it trained, so fitness could have been recorded
    state = agent.get_state()
    assert not [k for k in state if k.startswith(("evo/", "surgery/"))]
    with pytest.raises(AgentError):
        agent.evolve()
    assert agent.steps_to_evolution() is None
    assert not agent.evolution_due()
    ffn = agent.predictor.ffn
    assert not ffn.track_fitness
    assert int(ffn.unit_fitness_obs.sum()) == 0
    assert float(ffn.unit_importance.abs().max()) == 0.0
    assert agent.fabric is not None
    assert float(np.abs(agent.fabric.importance).max()) == 0.0
    assert float(np.abs(agent.fabric.fitness).max()) == 0.0
    hist = agent.lineage_history()
    assert hist["births"].shape == (0, 6) and hist["deaths"].shape == (0, 3)
    spec = agent.specialization()
    assert spec["profile"].shape[0] == 0 and spec["neuron_id"].shape == (0,)
    assert "evolution" not in agent.get_training_statistics()


# ---------------------------------------------------------------------------
# (b) the schedule
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [None, 1, 7, 50])
def test_rounds_happen_at_warmup_then_every_steps(chunk: int | None) -> None:
    warmup, every, n = 20, 12, 100  # batch_size 8: most rounds fall inside a micro-batch
    agent = Agent(2, small_config(evolving(every=every, warmup=warmup)))
    assert agent.steps_to_evolution() == warmup and not agent.evolution_due()
    out, reports = run(agent, periodic(n), chunk)
    expected = list(range(warmup, n, every))
    assert [r["step"] for r in reports] == expected
    assert [r["round"] for r in reports] == list(range(1, len(expected) + 1))
    assert [m.step for m in out] == list(range(n))
    stats = agent.get_training_statistics()["evolution"]
    assert stats["rounds"] == len(expected)
    assert stats["next_due"] == expected[-1] + every
    assert agent.steps_to_evolution() == expected[-1] + every - n
    h = agent.lineage_history()
    assert set(h["births"][:, 5].tolist()) <= set(expected)
    assert stats["births"] == h["births"].shape[0] > 0


def test_no_round_with_evolve_false_and_a_late_round_moves_the_schedule() -> None:
    agent = Agent(2, small_config(evolving(every=10, warmup=5)))
    agent.process_many(periodic(40), evolve=False)  # crosses several due steps: no round
    assert agent.get_training_statistics()["evolution"]["rounds"] == 0
    assert agent.evolution_due() and agent.steps_to_evolution() == 0
    rep = agent.evolve()  # a late round: the next one is due `every` steps after it
    assert rep["step"] == 40 and rep["round"] == 1
    assert not agent.evolution_due() and agent.steps_to_evolution() == 10
    now = Agent(2, small_config(evolving(every=10, warmup=0)))
    assert now.evolution_due() and now.steps_to_evolution() == 0
    assert now.evolve()["step"] == 0


def test_a_round_that_fails_is_reported_and_the_frames_go_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    agent = Agent(2, small_config(evolving(every=10, warmup=5)))

    def broken() -> dict[str, Any]:
        raise RuntimeError("no round today")

    monkeypatch.setattr(agent, "evolve", broken)
    reports: list[dict[str, Any]] = []
    out = agent.process_many(periodic(30), on_evolution=reports.append)
    assert [m.step for m in out] == list(range(30))
    assert [(r["step"], r["round"]) for r in reports] == [(5, 1), (15, 1), (25, 1)]
    assert all("no round today" in r["error"] for r in reports)
    assert agent.steps_to_evolution() == 5


# ---------------------------------------------------------------------------
# (c) bit-exact resume
# ---------------------------------------------------------------------------
def _mixed() -> dict[str, Any]:
    """Every strategy at once: layer 1 preserves, layer 2 mutates, layer 3 crosses."""
    return evolving(every=24, warmup=16,
                    layers={2: {"prune_rate": 0.25, "regrowth": "mutation"},
                            3: {"prune_rate": 0.25, "regrowth": "crossover",
                                "mutation_strength": 0.3}},
                    tiles={"prune_rate": 0.5, "regrowth": "crossover"},
                    surgery_params={"freeze_min_claims": 4, "stable_rounds": 1})


@pytest.mark.parametrize(("config", "N", "M"), [
    (small_config(_mixed()), 37, 90),   # snapshot inside a micro-batch, between rounds
    (small_config(_mixed()), 40, 90),   # snapshot at a due step, before its round
    (AgentConfig.model_validate(        # the default fabric (5, 5, 16) once
        {"evolution": {"every": 32, "warmup": 32, "fabric": {"prune_rate": 0.08},
                       "tiles": {"prune_rate": 0.25, "regrowth": "mutation"},
                       "tile_min_observations": 1}, "seed": 3}), 70, 90),
    (small_config(evolving(every=16, warmup=8), ablate_fabric=True), 37, 60),
], ids=["small-mid-batch", "small-due", "default-fabric", "ablated"])
def test_resume_with_evolution_is_bit_exact(config: AgentConfig, N: int, M: int) -> None:
    X = periodic(N + M, seed=1)
    # the same calls without the snapshot (how a forward is batched changes rounding)
    straight = Agent(2, config)
    ref, ref_rep = run(straight, X[:N])
    r2, rep2 = run(straight, X[N:])
    ref, ref_rep = ref + r2, ref_rep + rep2
    first = Agent(2, config)
    out, reps = run(first, X[:N])
    state = first.get_state()
    assert "evo/counters" in state
    due = first.evolution_due()
    del first
    resumed = Agent.from_state(state)
    o2, rep2b = run(resumed, X[N:])
    assert rep2b and rep2b == rep2  # rounds after the snapshot, reported identically
    assert (rep2b[0]["step"] == N) == due  # a round due at the snapshot runs after it
    assert reps + rep2b == ref_rep
    # every metric field of every frame
    assert [m.as_dict() for m in out + o2] == [m.as_dict() for m in ref]
    sa, sb = straight.get_state(), resumed.get_state()
    assert_states_equal(sa, sb)
    if N % config.predictor.batch_size == 0:
        # cut at a micro-batch boundary, the forwards are batched alike: equal to one run
        whole = Agent(2, config)
        one, one_rep = run(whole, X)
        assert one_rep == ref_rep
        assert [m.as_dict() for m in one] == [m.as_dict() for m in ref]
        assert_states_equal(whole.get_state(), sb)
    hist = resumed.lineage_history()
    assert hist["births"].shape[0] > 0
    # births after the snapshot too (the restored lineage counters were used)
    assert int(hist["births"][:, 5].max()) >= N


# ---------------------------------------------------------------------------
# (d) a preservation round
# ---------------------------------------------------------------------------
def _silence_like(agent: Agent, evolved: Agent) -> tuple[np.ndarray, np.ndarray]:
    """Prune ``agent`` without regrowth where ``evolved`` turned neurons and tile units
    over: the dead fabric neurons send nothing and read out nothing, the dead tile
    units' output rows are zero."""
    fab, efab = agent.fabric, evolved.fabric
    assert fab is not None and efab is not None
    slots = np.flatnonzero(fab.neuron_id != efab.neuron_id)
    fab.act[slots] = 0.0
    fab.w[np.isin(fab.indices, slots)] = 0.0
    fab.readout[slots] = 0.0
    ffn = agent.predictor.ffn
    t, c = np.nonzero(ffn.unit_lineage()["ids"] != evolved.predictor.ffn.unit_lineage()["ids"])
    with torch.no_grad():
        ffn.w2[torch.from_numpy(t), torch.from_numpy(c)] = 0.0
    agent.rebase_pooled()  # as evolve() does after an edit of the fabric
    return slots, t


@pytest.mark.parametrize(("shape", "n_features", "prune_rate"),
                         [((4, 4, 6), 6, 0.25), ((5, 5, 16), 64, 0.2)])
def test_preservation_round_equals_silencing_the_dead(
        shape: tuple[int, int, int], n_features: int, prune_rate: float) -> None:
    """The honest claim: after a preservation round (fabric and tiles, no surgery), with
    plasticity 0 and no training, the agent computes what the un-evolved agent computes
    with the dead neurons and tile units merely silenced, to float rounding (measured,
    (4, 4, 6) and (5, 5, 16): max |prediction difference| 3e-8 and 1.2e-7 normalised
    units over 24 frames). It does *not* compute what the un-evolved agent computes:
    the dead contributed (measured: predictions differ by up to 0.03 and 0.045
    normalised units, 0.003 and 0.018 on the first frame; pooled features by 0.025 and
    0.155)."""
    cfg = AgentConfig.model_validate({
        "fabric": {"shape": list(shape), "n_features": n_features},
        "evolution": {"every": 64, "warmup": 64, "surgery": False,
                      "fabric": {"prune_rate": prune_rate, "regrowth": "preservation"},
                      "tiles": {"prune_rate": 0.125, "regrowth": "preservation"}},
        "seed": 1})
    X = periodic(280, seed=2)
    agent = Agent(2, cfg)
    agent.process_many(X[:256])
    state = agent.get_state()
    evolved, plain, silenced = (Agent.from_state(state) for _ in range(3))
    rep = evolved.evolve()
    assert rep["fabric"]["died"] > 0 and rep["tiles"]["died"] > 0
    assert "surgery" not in rep
    slots, tiles = _silence_like(silenced, evolved)
    assert slots.size == rep["fabric"]["died"] and tiles.size == rep["tiles"]["died"]
    assert plain.fabric is not None
    assert np.abs(plain.fabric.act[slots]).max() > 0.01  # the dead were not silent already
    outs = {}
    for name, a in (("evolved", evolved), ("plain", plain), ("silenced", silenced)):
        a.force_mode("normal")
        a.set_learning_mode(False)
        outs[name] = a.process_many(X[256:], evolve=False)  # no round: compared as they stand
        assert all(m.skipped for m in outs[name])
    pred = {k: np.array([m.prediction for m in v]) for k, v in outs.items()}
    scale = agent.normalizer.effective_scale()
    diff = np.abs(pred["evolved"] - pred["silenced"]) / scale
    assert diff.max() <= 1e-5, diff.max()
    assert [m.bmu for m in outs["evolved"]] == [m.bmu for m in outs["silenced"]]
    assert evolved.fabric is not None and silenced.fabric is not None
    np.testing.assert_allclose(evolved.fabric.pooled(), silenced.fabric.pooled(),
                               rtol=0, atol=1e-5)
    # the survivors' activations too (the children copy their parents)
    keep = np.ones(evolved.fabric.n, dtype=bool)
    keep[slots] = False
    np.testing.assert_allclose(evolved.fabric.act[keep], silenced.fabric.act[keep],
                               rtol=0, atol=1e-5)
    # silencing mattered: the reference is not just the un-evolved agent
    assert np.abs(evolved.fabric.pooled() - plain.fabric.pooled()).max() > 1e-3


# ---------------------------------------------------------------------------
# (e) mutation and crossover; lineage records
# ---------------------------------------------------------------------------
def check_lineage(agent: Agent) -> None:
    """Births: parents born earlier, generation = 1 + max(parents'); the living carry
    what their birth record says."""
    h = agent.lineage_history()
    births, deaths = h["births"], h["deaths"]
    assert h["death_fitness"].shape == (deaths.shape[0],)
    assert np.all(np.isfinite(h["death_fitness"]))
    ffn = agent.predictor.ffn
    originals = {FABRIC: agent.fabric.n if agent.fabric is not None else 0,
                 TILE: ffn.num_tiles * ffn.tile_hidden}
    for kind in (FABRIC, TILE):
        b = births[births[:, 0] == kind]
        assert b.shape[0] == int((deaths[:, 0] == kind).sum())
        assert np.unique(b[:, 1]).size == b.shape[0]
        gen = dict.fromkeys(range(originals[kind]), 0)
        for _, i, p0, p1, g, _step in b.tolist():
            assert i not in gen and p1 < i and p0 < i and (p0 != p1 or p0 == -1)
            if p0 == -1:  # a fresh start (a reseeded tile)
                assert (p1, g) == (-1, 0)
            else:  # every parent is traceable
                assert g == 1 + max(gen[p] for p in (p0, p1) if p >= 0)
            gen[i] = g
        died = deaths[deaths[:, 0] == kind, 1]
        assert np.unique(died).size == died.size  # nothing dies twice
        assert all(int(i) in gen for i in died)  # nor without having been born
    fab = agent.fabric
    if fab is not None:
        lin = fab.lineage()
        rec = {r[1]: r for r in births[births[:, 0] == FABRIC].tolist()}
        for i, (p0, p1), g in zip(lin["neuron_id"].tolist(), lin["parent_ids"].tolist(),
                                  lin["generation"].tolist(), strict=True):
            if i >= fab.n:
                assert rec[i][2:5] == [p0, p1, g]
            else:
                assert (p0, p1, g) == (-1, -1, 0)
    ul = ffn.unit_lineage()
    rec = {r[1]: r for r in births[births[:, 0] == TILE].tolist()}
    for i, (p0, p1), g in zip(ul["ids"].ravel().tolist(),
                              ul["parents"].reshape(-1, 2).tolist(),
                              ul["generation"].ravel().tolist(), strict=True):
        if i >= originals[TILE]:
            assert rec[i][2:5] == [p0, p1, g]
        else:
            assert (p0, p1, g) == (-1, -1, 0)


@pytest.mark.parametrize("regrowth", ["mutation", "crossover"])
def test_mutation_and_crossover_record_their_parents(regrowth: str) -> None:
    agent = Agent(2, small_config(evolving(every=16, warmup=16, regrowth=regrowth)))
    X = periodic(160, seed=3)
    X[77] = [1e9, -1e9]  # an outlier among the frames does not poison anything
    out, reports = run(agent, X)
    assert_finite(out)
    assert len(reports) == 9
    assert all(r["fabric"]["born"] > 0 and r["tiles"]["born"] > 0 for r in reports)
    for r in reports:
        assert {ly["strategy"] for ly in r["fabric"]["layers"]} == {regrowth}
        assert r["tiles"]["strategy"] == regrowth
    births = agent.lineage_history()["births"]
    for kind in (FABRIC, TILE):
        b = births[births[:, 0] == kind]
        assert b.shape[0] > 0
        assert np.all(b[:, 2] >= 0)
        if regrowth == "mutation":
            assert np.all(b[:, 3] == -1)
        else:
            assert np.all(b[:, 3] >= 0) and np.all(b[:, 3] != b[:, 2])
    assert int(births[:, 4].max()) >= 2  # children of children
    check_lineage(agent)
    state = agent.get_state()
    for k, v in state.items():
        if v.dtype.kind == "f":
            assert np.all(np.isfinite(v)), k
    # and the agent keeps working afterwards
    assert_finite(run(agent, periodic(40, seed=4))[0])


# ---------------------------------------------------------------------------
# (f) specialization profile of the regrown
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("regrowth", ["preservation", "mutation", "crossover"])
def test_regrown_profile_columns(regrowth: str) -> None:
    agent = Agent(2, small_config(evolving(every=1000, warmup=1000, regrowth=regrowth,
                                           profile_rate=0.05)))
    agent.process_many(periodic(128, seed=5))
    before = agent.specialization()
    goal_before = agent.get_state()["agent/goal"]
    assert before["profile"].shape == (36, before["regions"] + 2)
    assert int(before["regions"]) == 16 and int(before["channels"]) == 2
    n_births = agent.lineage_history()["births"].shape[0]
    agent.evolve()
    after = agent.specialization()
    goal = agent.get_state()["agent/goal"]
    births = agent.lineage_history()["births"][n_births:]
    births = births[births[:, 0] == FABRIC]
    assert births.shape[0] == 6  # 2 in each of the 3 non-sensory layers
    slot_of = {int(i): s for s, i in enumerate(after["neuron_id"])}
    parent_cols = []
    for _, child, p0, _p1, _g, _s in births.tolist():
        c, p = slot_of[child], slot_of[p0]
        assert before["neuron_id"][p] == p0  # the parent survived in its slot
        # the parent's own column is untouched by the round
        np.testing.assert_array_equal(after["profile"][p], before["profile"][p])
        if regrowth == "preservation":
            np.testing.assert_array_equal(after["profile"][c], before["profile"][p])
            assert goal[c] == goal_before[p]
        else:
            assert not after["profile"][c].any()
            assert goal[c] == 0.0
        parent_cols.append(before["profile"][p])
    assert np.abs(np.array(parent_cols)).max() > 0  # the comparison was not 0 == 0
    # the other neurons' columns are untouched
    born = {slot_of[int(i)] for i in births[:, 1]}
    rest = [s for s in range(36) if s not in born]
    np.testing.assert_array_equal(after["profile"][rest], before["profile"][rest])


# ---------------------------------------------------------------------------
# (g) fitness is observed
# ---------------------------------------------------------------------------
def test_fitness_is_observed_while_training() -> None:
    agent = Agent(2, small_config(evolving(every=1000, warmup=1000)))
    agent.process_many(periodic(96, seed=6))
    assert agent.total_updates >= 10
    assert agent.fabric is not None
    assert np.count_nonzero(agent.fabric.importance) > 0
    assert np.count_nonzero(agent.fabric.fitness) > 0
    assert np.all(np.isfinite(agent.fabric.fitness))
    ffn = agent.predictor.ffn
    assert ffn.track_fitness
    assert int(ffn.unit_fitness_obs.sum()) > 0
    fit = ffn.unit_fitness()
    assert int(torch.count_nonzero(fit)) > 0 and bool(torch.isfinite(fit).all())
    # the profile follows the fabric too
    assert np.abs(agent.specialization()["profile"]).max() > 0


# ---------------------------------------------------------------------------
# (h) integer surgery parameters
# ---------------------------------------------------------------------------
def test_integer_surgery_params_reach_the_policy_as_ints() -> None:
    cfg = AgentConfig.model_validate({"evolution": {
        "every": 16, "surgery_params": {"freeze_min_claims": 8, "stable_rounds": 2,
                                        "freeze_purity": 0.8}}})
    sp = cfg.evolution.surgery_params
    assert type(sp["freeze_min_claims"]) is int and type(sp["stable_rounds"]) is int
    assert type(sp["freeze_purity"]) is float
    # the JSON round trip a snapshot makes keeps them
    assert AgentConfig.model_validate_json(cfg.model_dump_json()) == cfg
    agent = Agent(1, cfg)
    for a in (agent, Agent.from_state(agent.get_state())):
        assert type(a.surgery.freeze_min_claims) is int and a.surgery.freeze_min_claims == 8
        assert type(a.surgery.stable_rounds) is int and a.surgery.stable_rounds == 2
        assert a.surgery.freeze_purity == 0.8


# ---------------------------------------------------------------------------
# (i) snapshots from before evolution existed
# ---------------------------------------------------------------------------
def _old_state() -> tuple[AgentConfig, dict[str, np.ndarray], Agent]:
    cfg = small_config()
    agent = Agent(2, cfg)
    agent.process_many(periodic(45, seed=7))
    state = agent.get_state()
    meta = Agent.meta_of(state)
    del meta["config"]["evolution"]
    return cfg, with_meta(state, meta), agent


def test_old_snapshot_config_without_evolution_loads() -> None:
    cfg, state, agent = _old_state()
    assert "evolution" not in Agent.meta_of(state)["config"]
    restored = Agent.from_state(state)
    assert restored.config == cfg and not restored.evolving
    other = Agent(2, cfg)
    other.set_state(state)  # validated: the missing settings take their defaults
    X = periodic(40, seed=8)
    ref = [m.as_dict() for m in agent.process_many(X)]
    assert [m.as_dict() for m in restored.process_many(X)] == ref
    assert [m.as_dict() for m in other.process_many(X)] == ref


def test_old_snapshot_without_evolution_resumes_from_the_store(tmp_path: Path) -> None:
    cfg, state, _ = _old_state()
    store = SnapshotStore(tmp_path / "state")
    store.write(state, step=45)
    got = resume_agent(store, cfg, n_channels=2)
    assert got is not None and got[0].step == 45


# ---------------------------------------------------------------------------
# reseeds by the surgery policy are births and deaths too
# ---------------------------------------------------------------------------
def test_policy_reseed_is_recorded_in_the_lineage_history() -> None:
    agent = Agent(2, small_config(evolving(every=1000, warmup=1000,
                                           tiles={"prune_rate": 0.0})))
    agent.process_many(periodic(64, seed=9))
    ffn = agent.predictor.ffn
    old = ffn.unit_lineage()["ids"][3].copy()
    with torch.no_grad():
        ffn.usage_ema[3] = 0.0  # tile 3 looks dead to the policy
    rep = agent.evolve()
    assert ("reseed", 3) in [(o["op"], o["tile"]) for o in rep["surgery"]]
    new = ffn.unit_lineage()["ids"][3]
    assert not set(new.tolist()) & set(old.tolist())
    h = agent.lineage_history()
    tile_births = h["births"][h["births"][:, 0] == TILE]
    tile_deaths = h["deaths"][h["deaths"][:, 0] == TILE]
    assert set(old.tolist()) <= set(tile_deaths[:, 1].tolist())
    fresh = tile_births[np.isin(tile_births[:, 1], new)]
    assert sorted(fresh[:, 1].tolist()) == sorted(new.tolist())
    assert np.all(fresh[:, 2:5] == [-1, -1, 0]) and np.all(fresh[:, 5] == agent.step)
    check_lineage(agent)
