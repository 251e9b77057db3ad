"""Stateful test of an evolving agent: frames, evolution rounds, tile surgery on command,
zarr snapshots and restores in any order keep every invariant, and a restored agent
continues bit-identically."""

from __future__ import annotations

import json
import shutil
import tempfile
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from lillith.agents.agent import Agent
from lillith.agents.config import AgentConfig
from lillith.state import SnapshotStore

from .test_agent_evolution import assert_states_equal, check_lineage

torch.set_num_threads(1)

EVERY = 16
D_MODEL = 16
NUM_TILES = 8
KINDS = ("wave", "flat", "extreme", "offset")
STRATEGIES = ("preservation", "mutation", "crossover")
WEIGHTS = ({"importance": 1.0},
           {"importance": 1.0, "diversity": 0.5, "stability": 0.25, "energy": 0.25})


def make_frames(k: int, seed: int, kind: str, t0: int) -> np.ndarray:
    """``k`` frames of 2 channels: a wave, a flat line, a wave with extreme (but finite)
    values mixed in, or a wave on a huge offset (float64 keeps ~1 digit of it)."""
    rng = np.random.default_rng(seed)
    t = np.arange(t0, t0 + k)[:, None]
    X: np.ndarray = 10 + 3 * np.sin(2 * np.pi * t / np.array([20.0, 33.0])) \
        + 0.3 * rng.standard_normal((k, 2))
    if kind == "flat":
        X[:] = X[0]
    elif kind == "extreme":
        hit = rng.random(X.shape) < 0.3
        X[hit] = rng.choice([1e300, -1e300, 1e30, -1e30, 1e-300, 0.0], size=int(hit.sum()))
    elif kind == "offset":
        X += 1e15
    return X


def apply(agent: Agent, op: tuple[Any, ...]) -> Any:
    """One operation on an agent (the log replays them on a restored one)."""
    ffn = agent.predictor.ffn
    if op[0] == "frames":  # the agent runs the rounds that fall due among them
        rounds: list[dict[str, Any]] = []
        ms = agent.process_many(op[1], on_evolution=rounds.append)
        return {"metrics": [m.as_dict() for m in ms], "rounds": rounds}
    if op[0] == "evolve":
        return agent.evolve()
    if op[0] == "freeze":
        ffn.freeze_signature(op[1], tag="command")
        return None
    if op[0] == "unfreeze":
        ffn.unfreeze_signature(op[1], tag="command")
        return None
    if op[0] == "starve":  # the tile looks dead: the next round's policy reseeds it
        with torch.no_grad():
            ffn.usage_ema[op[1]] = 0.0
        return None
    assert op[0] == "insert"
    return agent.surgery.insert(ffn, op[1], op[2], freeze=op[3], tag="command",
                                step=agent.step)


def assert_finite(ms: list[dict[str, Any]]) -> None:
    for m in ms:
        vals = [m["loss"], m["anomaly_score"], m["anomaly_likelihood"], m["energy"],
                m["learning_drive"], m["mood"], *m["prediction"]]
        assert np.all(np.isfinite(vals)), m
        assert 0.0 <= m["anomaly_likelihood"] <= 1.0


class EvolvingAgent(RuleBasedStateMachine):
    """A small evolving agent and a model of what must hold about it."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="lillith-evo-")
        self.store = SnapshotStore(self.tmp, keep_last=2)
        self.snap_name: str | None = None
        # operations since the snapshot and what they returned
        self.log: list[tuple[tuple[Any, ...], Any]] = []
        self.frozen: dict[int, np.ndarray] = {}  # tile -> its frozen signature
        self.may_unfreeze = False  # an evolution round's policy may unfreeze
        self.steps = 0
        self.rounds = 0
        self.next_due = 0

    @initialize(fabric=st.sampled_from(STRATEGIES), tiles=st.sampled_from(STRATEGIES),
                allow_sensory=st.booleans(), weights=st.sampled_from(WEIGHTS),
                seed=st.integers(0, 3))
    def build(self, fabric: str, tiles: str, allow_sensory: bool,
              weights: dict[str, float], seed: int) -> None:
        cfg = AgentConfig.model_validate({
            "fabric": {"shape": [3, 3, 4], "n_features": 4},
            "som": {"map_shape": [5, 5]},
            "predictor": {"batch_size": 8, "d_model": D_MODEL, "num_tiles": NUM_TILES,
                          "tiles_per_cluster": 4},
            "evolution": {"every": EVERY, "warmup": 0, "allow_sensory": allow_sensory,
                          "fitness_weights": weights,
                          "fabric": {"prune_rate": 0.25, "regrowth": fabric},
                          "tiles": {"prune_rate": 0.5, "regrowth": tiles},
                          "tile_min_observations": 1,
                          "surgery_params": {"freeze_min_claims": 4, "stable_rounds": 2}},
            "seed": seed,
        })
        self.agent = Agent(2, cfg)

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def do(self, op: tuple[Any, ...]) -> Any:
        out = apply(self.agent, op)
        self.log.append((op, out))
        return out

    # ------------------------------------------------------------------ rules
    @rule(k=st.integers(1, 40), seed=st.integers(0, 1000), kind=st.sampled_from(KINDS))
    def frames(self, k: int, seed: int, kind: str) -> None:
        out = self.do(("frames", make_frames(k, seed, kind, self.steps)))
        ms = out["metrics"]
        assert [m["step"] for m in ms] == list(range(self.steps, self.steps + k))
        assert_finite(ms)
        self.expect_rounds(k, out["rounds"])
        self.steps += k

    def expect_rounds(self, k: int, rounds: list[dict[str, Any]]) -> None:
        """The model of the rounds ``k`` frames run: one before the frame of
        each step one falls due at."""
        due = []
        for s in range(self.steps, self.steps + k):
            if s >= self.next_due:
                due.append(s)
                self.next_due = s + EVERY
        assert [r["step"] for r in rounds] == due
        for r in rounds:
            self.rounds += 1
            assert r["round"] == self.rounds and "error" not in r
            json.dumps(r)  # JSON-serialisable
            self.may_unfreeze = True

    @rule(force=st.booleans())
    def evolve(self, force: bool) -> None:
        due = self.agent.evolution_due()
        assert due == (self.steps >= self.next_due)
        if not (due or force):
            return
        rep = self.do(("evolve",))
        json.dumps(rep)  # JSON-serialisable
        self.rounds += 1
        assert rep["step"] == self.steps and rep["round"] == self.rounds
        self.next_due = self.steps + EVERY
        assert not self.agent.evolution_due()
        for part in ("fabric", "tiles"):
            if rep[part]["born"]:
                event(f"{part} turnover")
        for o in rep["surgery"]:
            event(f"policy {o['op']}")
        self.may_unfreeze = True

    @rule(op=st.sampled_from(["freeze", "unfreeze", "insert", "insert unfrozen", "starve"]),
          tile=st.integers(0, NUM_TILES - 1), seed=st.integers(0, 1000))
    def surgery(self, op: str, tile: int, seed: int) -> None:
        ffn = self.agent.predictor.ffn
        before = ffn.signatures[tile].numpy().copy()
        if op == "freeze":
            self.do(("freeze", tile))
            assert ffn.is_frozen(tile)
            assert float(np.abs(ffn.signatures[tile].numpy() - before).max()) == 0.0
        elif op == "starve":
            self.do(("starve", tile))
        elif op == "unfreeze":
            self.do(("unfreeze", tile))
            self.frozen.pop(tile, None)
            assert not ffn.is_frozen(tile)
            # learning resumes from the frozen value
            np.testing.assert_array_equal(ffn.signatures_raw[tile].detach().numpy(), before)
        else:
            sig = np.random.default_rng(seed).standard_normal(D_MODEL).astype(np.float32)
            freeze = op == "insert"
            rec = self.do(("insert", tile, sig, freeze))
            assert rec["op"] == "insert" and rec["tile"] == tile and rec["freeze"] == freeze
            assert ffn.is_frozen(tile) == freeze
            np.testing.assert_array_equal(ffn.signatures[tile].numpy(), sig)
            if freeze:
                self.frozen[tile] = sig.copy()
            else:
                self.frozen.pop(tile, None)

    @rule()
    def snapshot(self) -> None:
        state = self.agent.get_state()
        info = self.store.write(state, step=self.agent.step)
        assert info.ok and info.step == self.steps
        loaded = self.store.load(info.name, fallback=False)
        assert not loaded.skipped
        assert_states_equal(loaded.state, state)
        self.snap_name = info.name
        self.log = []

    @precondition(lambda self: self.snap_name is not None)
    @rule(k=st.integers(1, 40), seed=st.integers(0, 1000), kind=st.sampled_from(KINDS))
    def restore(self, k: int, seed: int, kind: str) -> None:
        """Restore the snapshot, replay what happened since, then both agents take the
        next chunk: the same outputs to the bit, the same state; continue with the
        restored one."""
        assert self.snap_name is not None
        restored = Agent.from_state(self.store.load(self.snap_name, fallback=False).state)
        for op, out in self.log:  # every output and round report to the bit
            assert apply(restored, op) == out, op[0]
        assert_states_equal(restored.get_state(), self.agent.get_state())
        X = make_frames(k, seed, kind, self.steps)
        theirs = self.do(("frames", X))
        ours = apply(restored, ("frames", X))
        assert ours == theirs
        assert_states_equal(restored.get_state(), self.agent.get_state())
        self.agent = restored
        self.expect_rounds(k, ours["rounds"])
        self.steps += k
        event(f"restore after {len(self.log) - 1} operations")

    # ------------------------------------------------------------------ invariants
    @invariant()
    def consistent(self) -> None:
        a = self.agent
        state = a.get_state()
        for key, v in state.items():
            if v.dtype.kind == "f":
                assert np.all(np.isfinite(v)), key
        # counters against the model
        assert a.step == self.steps
        assert a.steps_to_evolution() == max(self.next_due - self.steps, 0)
        evo = a.get_training_statistics()["evolution"]
        assert evo["rounds"] == self.rounds and evo["next_due"] == self.next_due
        # fabric ids unique and issued
        ids = state["fabric/neuron_id"]
        assert np.unique(ids).size == ids.size
        assert int(ids.max()) < int(state["fabric/next_id"])
        # tile unit ids unique and issued
        lin = a.predictor.ffn.unit_lineage()
        assert np.unique(lin["ids"]).size == lin["ids"].size
        assert int(lin["ids"].max()) < int(lin["next_id"][0])
        # births: parents earlier, generations, births = deaths per kind, the living
        # agree with their records
        check_lineage(a)
        # frozen signatures bit-unchanged until unfrozen (by command or the policy)
        ffn = a.predictor.ffn
        sigs = ffn.signatures.numpy()
        mask = ffn.frozen_mask.numpy()
        for t, v in list(self.frozen.items()):
            if mask[t]:
                assert float(np.abs(sigs[t] - v).max()) == 0.0, t
                assert float(np.abs(ffn.frozen_values[t].numpy() - v).max()) == 0.0, t
            else:
                assert self.may_unfreeze, f"tile {t} unfrozen outside an evolution round"
                del self.frozen[t]
        for t in np.flatnonzero(mask).tolist():
            self.frozen.setdefault(t, sigs[t].copy())
        self.may_unfreeze = False


def test_evolving_agent_keeps_its_invariants() -> None:
    run_state_machine_as_test(
        EvolvingAgent,
        settings=settings(max_examples=30, stateful_step_count=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )
