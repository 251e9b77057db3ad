"""``lillith inspect STATE --lineage``: lineage and specialization reports of a snapshot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lillith.agents.agent import Agent
from lillith.agents.config import AgentConfig
from lillith.runtime.inspect_lineage import (
    _cosine_pairs,
    descendants,
    lineage_report,
    render_lineage,
    spearman,
    specialization_report,
)
from lillith.state import SnapshotStore

torch.set_num_threads(1)

Arrays = dict[str, np.ndarray[Any, Any]]
FRAMES = 400
EVERY = 32


def _config(fabric_regrowth: str, tile_regrowth: str, every: int = EVERY) -> AgentConfig:
    return AgentConfig.model_validate({
        "fabric": {"shape": [4, 4, 4]}, "som": {"map_shape": [6, 6]},
        "predictor": {"batch_size": 8},
        "evolution": {"every": every, "warmup": EVERY,
                      "fabric": {"prune_rate": 0.2, "regrowth": fabric_regrowth},
                      "tiles": {"prune_rate": 0.25, "regrowth": tile_regrowth}}})


def _run(agent: Agent, frames: int) -> None:
    """Stream synthetic frames, running each evolution round when it falls due."""
    rng = np.random.default_rng(1)
    t = np.arange(frames)
    X = np.column_stack([np.sin(t / 7.0), 0.5 * rng.standard_normal(frames)])
    i = 0
    while i < frames:
        due = agent.steps_to_evolution()
        k = due if due else agent.config.predictor.batch_size
        agent.process_many(X[i:i + k])
        i += k
        if agent.evolution_due():
            agent.evolve()


@pytest.fixture(scope="module")
def crossover() -> Agent:
    """Two-parent births in the fabric and the tiles."""
    agent = Agent(2, _config("crossover", "crossover"), name="crossover")
    _run(agent, FRAMES)
    return agent


@pytest.fixture(scope="module")
def mutation() -> Agent:
    """One parent per fabric birth (a forest)."""
    agent = Agent(2, _config("mutation", "mutation"), name="mutation")
    _run(agent, FRAMES)
    return agent


# ---------------------------------------------------------------- references
def _descendants_ref(births: np.ndarray[Any, Any]) -> dict[int, int]:
    """Distinct descendants by plain recursion over the children of every id."""
    kids: dict[int, set[int]] = {}
    for row in births.tolist():
        for p in {row[2], row[3]} - {-1}:
            kids.setdefault(p, set()).add(row[1])

    @cache
    def below(x: int) -> frozenset[int]:
        out: set[int] = set()
        for c in kids.get(x, ()):
            out |= {c} | below(c)
        return frozenset(out)

    return {x: len(below(x)) for x in kids}


def _spearman_ref(x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    """Pearson correlation of mid-ranks counted pairwise (O(n^2))."""
    def ranks(v: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        less = (v[None, :] < v[:, None]).sum(1)
        equal = (v[None, :] == v[:, None]).sum(1)
        return np.asarray(less + (equal + 1) / 2.0, dtype=np.float64)
    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def _living(state: Arrays, kind: str) -> dict[str, np.ndarray[Any, Any]]:
    if kind == "fabric":
        return {"ids": state["fabric/neuron_id"], "gen": state["fabric/generation"],
                "birth": state["fabric/birth_step"],
                "fitness": state["fabric/fitness"].astype(np.float64)}
    imp = np.clip(state["tiles/unit_importance"].astype(np.float64), 0.0, None)
    fit = imp / np.maximum(imp.max(axis=1, keepdims=True), 1e-12)
    return {"ids": state["tiles/lineage_ids"].reshape(-1),
            "gen": state["tiles/lineage_generation"].reshape(-1),
            "birth": state["tiles/lineage_birth"].reshape(-1), "fitness": fit.reshape(-1)}


# ---------------------------------------------------------------- unit checks
def test_spearman_matches_pairwise_ranks_and_handles_degenerate_input() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 40).astype(np.float64)  # many ties
    y = x + rng.integers(0, 3, 40)
    rho = spearman(x, y)
    assert rho is not None
    assert rho == pytest.approx(_spearman_ref(x, y), abs=1e-12)
    assert spearman(x, 3.0 * x + 1.0) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(x, np.full_like(x, 2.0)) is None
    assert spearman(x[:2], y[:2]) is None
    z = y.copy()
    z[0] = np.nan
    assert spearman(x, z) == pytest.approx(_spearman_ref(x[1:], y[1:]), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_descendants_match_recursive_count(data: st.DataObject) -> None:
    n0 = data.draw(st.integers(1, 6))
    n_births = data.draw(st.integers(0, 40))
    two = data.draw(st.booleans())
    rows = []
    for b in range(n_births):
        cid = n0 + b
        p0 = data.draw(st.integers(0, cid - 1))
        p1 = data.draw(st.integers(-1, cid - 1)) if two else -1
        rows.append([0, cid, p0, p1, 0, 0])
    births = np.asarray(rows, dtype=np.int64).reshape(-1, 6)
    ids, count, children = descendants(births[:, 1], births[:, 2], births[:, 3])
    ref = _descendants_ref(births)
    got = {int(i): int(c) for i, c in zip(ids, count, strict=True)}
    assert {i: c for i, c in got.items() if c} == ref
    direct = Counter(p for r in rows for p in {r[2], r[3]} - {-1})
    assert {int(i): int(c) for i, c in zip(ids, children, strict=True) if c} == dict(direct)


def test_cosine_pairs_blockwise_equal_the_full_matrix() -> None:
    rng = np.random.default_rng(3)
    base = rng.standard_normal((6, 5))
    U = base[rng.integers(0, 6, 50)] + 0.15 * rng.standard_normal((50, 5))
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    full = U @ U.T
    iu = np.triu_indices(50, 1)
    hit = full[iu] >= 0.98
    in_pair = np.zeros(50, dtype=bool)
    in_pair[iu[0][hit]] = in_pair[iu[1][hit]] = True
    best_ref = sorted(zip(full[iu][hit], iu[0][hit], iu[1][hit], strict=True),
                      key=lambda t: -t[0])
    for block in (50, 7 * 50, 1 << 22):
        count, got_in_pair, best = _cosine_pairs(U, 0.98, 5, block_elems=block)
        assert count == int(hit.sum())
        np.testing.assert_array_equal(got_in_pair, in_pair)
        assert [(i, j) for _, i, j in best] == [(int(i), int(j)) for _, i, j in best_ref[:5]]


# ---------------------------------------------------------------- on real agents
@pytest.mark.parametrize("name", ["crossover", "mutation"])
def test_lineage_report_of_an_evolved_agent(name: str, request: pytest.FixtureRequest) -> None:
    agent: Agent = request.getfixturevalue(name)
    state = agent.get_state()
    rep = lineage_report(state)
    json.dumps(rep, allow_nan=False)
    history = agent.lineage_history()
    births, deaths = history["births"], history["deaths"]
    assert rep["available"] and rep["problems"] == []
    assert rep["step"] == agent.step == FRAMES
    rounds = agent.get_training_statistics()["evolution"]["rounds"]
    assert rep["rounds"] == rounds
    assert rep["last_round_step"] == EVERY * rounds  # warm-up = every, rounds on time
    for code, kind in enumerate(("fabric", "tiles")):
        k = rep[kind]
        b = births[births[:, 0] == code]
        d = deaths[deaths[:, 0] == code]
        liv = _living(state, kind)
        n = liv["ids"].size
        assert k["problems"] == []
        assert k["population"] == n
        assert k["births"] == b.shape[0] and k["deaths"] == d.shape[0]
        assert k["turnover"] == pytest.approx(b.shape[0] / n)
        assert k["births_per_1000_steps"] == pytest.approx(1000 * b.shape[0] / agent.step)
        assert k["originals_replaced"] == pytest.approx(np.mean(~np.isin(np.arange(n),
                                                                          liv["ids"])))
        hist = Counter(liv["gen"].tolist())
        assert k["generations"]["histogram"] == [hist.get(g, 0)
                                                 for g in range(max(hist) + 1)]
        assert k["generations"]["max"] == max(hist)
        assert k["generations"]["mean"] == pytest.approx(liv["gen"].mean())
        # dynasties: the most descendants by recursion
        ref = _descendants_ref(b)
        assert b.shape[0] > 0 and ref
        want = sorted(ref.items(), key=lambda t: (-t[1], t[0]))[:10]
        assert [(x["id"], x["descendants"]) for x in k["dynasties"]] == want
        alive = set(liv["ids"].tolist())
        assert [x["alive"] for x in k["dynasties"]] == [i in alive for i, _ in want]
        gen_of = {**{i: 0 for i in range(n)}, **{int(r[1]): int(r[4]) for r in b},
                  **dict(zip(liv["ids"].tolist(), liv["gen"].tolist(), strict=True))}
        assert [x["generation"] for x in k["dynasties"]] == [gen_of[i] for i, _ in want]
        # fitness against descendants: living born before the newest round
        first_new = b[b[:, 5] == rep["last_round_step"], 1].min()
        old = (liv["birth"] < rep["last_round_step"]) | (
            (liv["birth"] == rep["last_round_step"]) & (liv["ids"] < first_new))
        desc = np.array([ref.get(int(i), 0) for i in liv["ids"][old]], dtype=np.float64)
        c = k["fitness_vs_descendants"]["living"]
        assert c["n"] == int(old.sum())
        assert c["spearman"] == pytest.approx(_spearman_ref(desc, liv["fitness"][old]))
        dfit = history["death_fitness"][deaths[:, 0] == code].astype(np.float64)
        ddesc = np.array([ref.get(int(i), 0) for i in d[:, 1]], dtype=np.float64)
        c = k["fitness_vs_descendants"]["dead"]
        assert c["n"] == d.shape[0]
        if np.ptp(ddesc) > 0 and np.ptp(dfit) > 0:
            assert c["spearman"] == pytest.approx(_spearman_ref(ddesc, dfit))
        else:
            assert c["spearman"] is None
    text = render_lineage(rep, specialization_report(state))
    assert "consistency: ok" in text and "dynasties" in text


def test_consistency_checks_find_planted_problems(crossover: Agent) -> None:
    state = crossover.get_state()
    assert lineage_report(state)["problems"] == []
    ids = state["fabric/neuron_id"]
    gen = state["fabric/generation"]

    dup = {**state, "fabric/neuron_id": np.r_[ids[:1], ids[:1], ids[2:]]}
    probs = lineage_report(dup)["fabric"]["problems"]
    assert any("living ids are not unique" in p and f"ids {ids[0]})" in p for p in probs)

    births = state["evo/births"].copy()
    row = int(np.flatnonzero(births[:, 0] == 1)[0])  # a tile unit's birth
    births[row, 2] = births[row, 1] + 1  # a parent from the future
    probs = lineage_report({**state, "evo/births": births})["tiles"]["problems"]
    assert any("parent id not issued before" in p and f"ids {births[row, 1]}" in p
               for p in probs)

    young = int(np.flatnonzero(gen > 0)[0])
    wrong = gen.copy()
    wrong[young] += 3
    probs = lineage_report({**state, "fabric/generation": wrong})["fabric"]["problems"]
    assert any("1 + max(parent generations)" in p for p in probs)
    assert any("differ from their birth record" in p for p in probs)

    lineage = lineage_report({**state, "fabric/generation": wrong})
    assert "problems" in render_lineage(lineage)


def test_specialization_and_planted_redundancy(mutation: Agent) -> None:
    state = mutation.get_state()
    spec = specialization_report(state, per_neuron=True)
    json.dumps(spec, allow_nan=False)
    ids = state["fabric/neuron_id"]
    n = ids.size
    P = state["evo/profile"].T.astype(np.float64)  # (n, R + C)
    R, C = mutation.lineage.n_regions, mutation.n_channels
    measured = np.any(P != 0, axis=1)
    assert spec["regions"] == R and spec["channels"] == C and spec["neurons_total"] == n
    assert spec["measured"] == int(measured.sum()) > 0
    region = np.argmax(P[:, :R], axis=1)
    channel = np.argmax(np.abs(P[:, R:]), axis=1)
    assert spec["region_preference"] == [int(np.sum(region[measured] == r)) for r in range(R)]
    assert spec["channel_preference"] == [int(np.sum(channel[measured] == c))
                                          for c in range(C)]
    assert sum(spec["preferred_counts"].values()) == spec["measured"]
    assert [x["id"] for x in spec["neurons"]] == ids.tolist()
    assert [x["preferred_region"] for x in spec["neurons"]] == [
        int(r) if m else None for r, m in zip(region, measured, strict=True)]

    # brute-force redundancy on the real profile
    U = P[measured] / np.linalg.norm(P[measured], axis=1, keepdims=True)
    full = U @ U.T
    iu = np.triu_indices(U.shape[0], 1)
    hit = full[iu] >= 0.98
    red = spec["redundancy"]
    assert red["pairs"] == int(hit.sum())
    assert red["neurons_in_pairs"] == np.unique(np.r_[iu[0][hit], iu[1][hit]]).size
    assert red["fraction"] == pytest.approx(red["neurons_in_pairs"] / U.shape[0])

    # planted: random profiles (no natural duplicates), one scaled copy, two unmeasured
    rng = np.random.default_rng(7)
    prof = rng.standard_normal(state["evo/profile"].shape).astype(np.float32)
    a, b, z1, z2 = 3, n - 2, 5, 6
    prof[:, b] = 2.5 * prof[:, a]
    prof[:, z1] = prof[:, z2] = 0.0
    spec = specialization_report({**state, "evo/profile": prof}, threshold=0.98)
    red = spec["redundancy"]
    assert spec["measured"] == n - 2
    assert red["pairs"] == 1 and red["neurons_in_pairs"] == 2
    assert red["fraction"] == pytest.approx(2 / (n - 2))
    (pair,) = red["top_pairs"]
    assert {pair["a"], pair["b"]} == {int(ids[a]), int(ids[b])}
    assert pair["cosine"] == pytest.approx(1.0)
    assert "redundancy" in render_lineage(lineage_report(state), spec)


# ---------------------------------------------------------------- CLI
def lillith(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lillith.runtime.cli", *args],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "LILLITH_LOG__FORMAT": "json"})


def test_cli_inspect_lineage(crossover: Agent, tmp_path: Path) -> None:
    state = crossover.get_state()
    SnapshotStore(str(tmp_path / "evo")).write(state, step=crossover.step)
    proc = lillith("inspect", str(tmp_path / "evo"), "--lineage", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    for key in ("snapshots", "latest", "newest_ok", "agent", "lineage", "specialization"):
        assert key in doc
    assert doc["lineage"] == json.loads(json.dumps(lineage_report(state)))
    assert doc["specialization"] == json.loads(json.dumps(specialization_report(state)))
    assert "neurons" not in doc["specialization"]

    proc = lillith("inspect", str(tmp_path / "evo"), "--per-neuron")
    assert proc.returncode == 0, proc.stderr
    assert "dynasties" in proc.stdout and "specialization" in proc.stdout
    assert proc.stdout.count("\n") > state["fabric/neuron_id"].size

    plain = Agent(2, _config("mutation", "mutation", every=0), name="plain")
    _run(plain, 2 * EVERY)
    SnapshotStore(str(tmp_path / "plain")).write(plain.get_state(), step=plain.step)
    proc = lillith("inspect", str(tmp_path / "plain"), "--lineage", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["lineage"]["available"] is False and doc["specialization"]["available"] is False
    proc = lillith("inspect", str(tmp_path / "plain"), "--lineage")
    assert proc.returncode == 0 and "no evolution data" in proc.stdout
