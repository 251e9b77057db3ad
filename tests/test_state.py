"""Snapshots: bit-exact resume, atomic commit, retention, integrity, migration, fsspec."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lillith.agents.agent import Agent
from lillith.agents.config import AgentConfig
from lillith.errors import StateError
from lillith.runtime.checkpoint import Checkpointer
from lillith.runtime.resume import resume_agent
from lillith.state import SCHEMA_VERSION, SnapshotStore
from lillith.state.snapshot import crc32

ROOT = Path(__file__).resolve().parents[1]


def periodic(n: int, *, seed: int = 0, width: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    return 10 + 3 * np.sin(2 * np.pi * t / (40 + 7 * np.arange(width))) + \
        0.3 * rng.standard_normal((n, width))


def assert_states_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys(), set(a) ^ set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def small_state(seed: int = 0) -> dict[str, np.ndarray]:
    agent = Agent(2, AgentConfig(seed=seed))
    agent.process_many(periodic(40, seed=seed))
    return agent.get_state()


# ---------------------------------------------------------------- bit-exact resume
@pytest.mark.parametrize("preset", ["small", "medium", "large"])
def test_resume_is_bit_identical_for_each_preset(tmp_path: Path, preset: str) -> None:
    from lillith.fabric.neural_fabric import PRESETS

    cfg = AgentConfig.model_validate({"fabric": {"shape": PRESETS[preset]}, "seed": 3})
    X = periodic(70, seed=1)
    N = 37  # mid micro-batch
    straight = Agent(2, cfg)
    ref = straight.process_many(X[:N]) + straight.process_many(X[N:])
    first = Agent(2, cfg)
    out = first.process_many(X[:N])
    store = SnapshotStore(tmp_path / "state")
    store.write(first.get_state(), step=first.step)
    del first
    got = resume_agent(store, cfg, n_channels=2)
    assert got is not None
    resumed, loaded = got
    assert loaded.info.step == N and resumed.step == N
    out += resumed.process_many(X[N:])
    # every output column of every frame
    assert [m.as_dict() for m in out] == [m.as_dict() for m in ref]
    assert_states_equal(straight.get_state(), resumed.get_state())


def test_snapshot_of_one_process_loads_in_another(tmp_path: Path) -> None:
    cfg = AgentConfig(seed=5)
    X = periodic(90, seed=2)
    script = (
        "import sys, numpy as np\n"
        "from lillith.agents.agent import Agent\n"
        "from lillith.agents.config import AgentConfig\n"
        "from lillith.state import SnapshotStore\n"
        "X = np.load(sys.argv[2])\n"
        "a = Agent(2, AgentConfig(seed=5))\n"
        "a.process_many(X[:50])\n"
        "print(SnapshotStore(sys.argv[1]).write(a.get_state(), step=a.step).name)\n"
    )
    np.save(tmp_path / "x.npy", X)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "s"),
                           str(tmp_path / "x.npy")], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    got = resume_agent(SnapshotStore(tmp_path / "s"), cfg, n_channels=2)
    assert got is not None and got[1].info.name == proc.stdout.strip()
    straight = Agent(2, cfg)
    straight.process_many(X[:50])
    a = straight.process_many(X[50:])
    b = got[0].process_many(X[50:])
    assert [m.as_dict() for m in a] == [m.as_dict() for m in b]


def test_no_pickle_metadata_is_json(tmp_path: Path) -> None:
    import zarr

    store = SnapshotStore(tmp_path)
    info = store.write(small_state(), step=40)
    g = zarr.open_group(str(tmp_path / "snapshots" / info.name), mode="r")
    attrs = g.attrs["lillith"]
    assert attrs["schema_version"] == SCHEMA_VERSION and attrs["step"] == 40
    assert {"numpy", "zarr", "torch", "numba", "python"} <= set(attrs["libraries"])
    assert attrs["json"]["agent/meta"]["config"]["seed"] == 0
    assert "agent/meta" not in attrs["index"]
    for path in (tmp_path / "snapshots" / info.name).rglob("*"):
        if path.is_file():
            assert b"\x80\x04\x95" not in path.read_bytes()[:3]  # pickle protocol 4 header


# ---------------------------------------------------------------- commit and retention
def test_latest_retention_and_temporaries(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, keep_last=3, keep_every=4)
    state = small_state()
    names = [store.write(state, step=s).name for s in range(10, 110, 10)]  # seq 1..10
    assert store.latest_name() == names[-1]
    kept = store.names()
    # newest three (seq 8-10), plus every 4th by sequence number (seq 4 and 8)
    assert kept == sorted({names[3], names[7], *names[-3:]})
    # LATEST is never removed, even when it is old
    (tmp_path / "LATEST").write_text(names[3] + "\n")
    store.keep_every = 0
    store.apply_retention()
    assert names[3] in store.names() and len(store.names()) == 4
    # a half-written snapshot from a crash is cleaned at start and never loaded
    tmp = tmp_path / "snapshots" / ".tmp-000000000999-20260101T000000000000Z-1"
    tmp.mkdir()
    (tmp / "junk").write_bytes(b"x")
    assert store.load().info.name == names[3]
    assert store.clean_temporaries() == [tmp.name] and not tmp.exists()


def test_kill_during_writes_never_leaves_latest_broken(tmp_path: Path) -> None:
    """SIGKILL a process that writes snapshots in a loop at random instants: after
    each kill LATEST names a complete, verified snapshot (no fallback needed)."""
    rng = np.random.default_rng(0)
    arrays = {"big/a": rng.standard_normal(400_000).astype(np.float32),
              "big/b": rng.integers(0, 9, 100_000).astype(np.int64),
              "small/c": np.arange(7, dtype=np.float64)}
    np.savez(tmp_path / "arrays.npz", **{k.replace("/", "__"): v for k, v in arrays.items()})
    script = (
        "import sys, numpy as np\n"
        "from lillith.state import SnapshotStore\n"
        "d = np.load(sys.argv[2])\n"
        "arrays = {k.replace('__', '/'): d[k] for k in d.files}\n"
        "st = SnapshotStore(sys.argv[1], keep_last=2)\n"
        "st.clean_temporaries()\n"
        "step = int(st.load().info.step) if st.names() else 0\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    step += 1\n"
        "    arrays['small/c'][0] = step\n"
        "    st.write(arrays, step=step)\n"
    )
    root = tmp_path / "s"
    seen = 0
    for _ in range(8):
        p = subprocess.Popen([sys.executable, "-c", script, str(root),
                              str(tmp_path / "arrays.npz")], stdout=subprocess.PIPE)
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        time.sleep(float(rng.uniform(0.05, 0.6)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        store = SnapshotStore(root)
        latest = store.latest_name()
        if latest is None:
            continue
        info = store.verify(latest)
        assert info.ok, info.problems
        loaded = store.load()
        assert loaded.skipped == [] and loaded.info.name == latest
        assert loaded.state["small/c"][0] == loaded.info.step >= seen
        np.testing.assert_array_equal(loaded.state["big/a"], arrays["big/a"])
        seen = loaded.info.step
    assert seen > 0


# ---------------------------------------------------------------- integrity
def _chunk(snapdir: Path, array: str) -> Path:
    files = [p for p in (snapdir / array).rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert files, array
    return files[0]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "metadata", "packed"])
def test_corruption_is_reported_and_load_falls_back(tmp_path: Path, damage: str) -> None:
    store = SnapshotStore(tmp_path)
    state = small_state()
    good = store.write(state, step=40)
    state2 = dict(state)
    state2["som/weights"] = state["som/weights"] + 1.0
    bad = store.write(state2, step=41)
    d = tmp_path / "snapshots" / bad.name
    big = "som.weights"
    if damage == "flip":
        f = _chunk(d, big)
        raw = bytearray(f.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        f.write_bytes(bytes(raw))
    elif damage == "truncate":
        f = _chunk(d, big)
        f.write_bytes(f.read_bytes()[:100])
    elif damage == "delete":
        _chunk(d, big).unlink()
    elif damage == "metadata":
        (d / "zarr.json").write_text("{ not json")
    else:
        f = _chunk(d, "packed")
        raw = bytearray(f.read_bytes())
        raw[-8] ^= 0x01
        f.write_bytes(bytes(raw))
    info = store.verify(bad.name)
    assert info.ok is False and info.problems
    if damage in ("flip", "truncate", "delete"):
        assert any("som/weights" in p for p in info.problems), info.problems
    assert store.verify(good.name).ok
    loaded = store.load()
    assert loaded.info.name == good.name
    assert [s.name for s in loaded.skipped] == [bad.name]
    assert_states_equal(loaded.state, state)
    with pytest.raises(StateError):
        store.load(bad.name, fallback=False)


def test_checksum_is_crc32_of_bytes() -> None:
    import zlib

    a = np.arange(10, dtype=np.float32).reshape(2, 5)
    assert crc32(a) == zlib.crc32(a.tobytes())
    assert crc32(a.T) == zlib.crc32(np.ascontiguousarray(a.T).tobytes())
    assert crc32(np.zeros(0)) == 0


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, check=False)
    return r.returncode == 0


def test_full_disk_fails_clearly_and_keeps_previous(tmp_path: Path) -> None:
    mnt = tmp_path / "tiny"
    if not _mount_tmpfs(mnt, "3m"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        state = small_state()
        store = SnapshotStore(mnt / "state")
        first = store.write(state, step=40)
        # the free-space check refuses a snapshot that cannot fit
        huge = dict(state)
        huge["agent/extra"] = np.ones(3_000_000, dtype=np.float32)
        with pytest.raises(StateError) as e:
            store.write(huge, step=41)
        assert "space" in str(e.value)

        # and when the check passes but the disk fills during the write (ENOSPC)
        class NoCheck(SnapshotStore):
            pass

        nocheck = NoCheck(mnt / "state")
        nocheck._backend.free_bytes = lambda path: None  # type: ignore[method-assign]
        big = dict(state)
        big["agent/extra"] = np.ones(900_000, dtype=np.float32)  # 3.6 MB > 3 MiB - used
        with pytest.raises(StateError) as e2:
            nocheck.write(big, step=42)
        assert e2.value.fields.get("reason") == "disk full", e2.value
        assert store.latest_name() == first.name
        assert store.names() == [first.name]
        assert not [p for p in (mnt / "state" / "snapshots").iterdir()
                    if p.name.startswith(".tmp-")]
        assert_states_equal(store.load().state, state)
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ---------------------------------------------------------------- compatibility
def test_configuration_mismatch_names_the_differences(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    store.write(small_state(), step=40)
    other = AgentConfig.model_validate({"fabric": {"shape": (4, 4, 8)}, "seed": 0})
    with pytest.raises(StateError) as e:
        resume_agent(store, other, n_channels=3)
    diffs = e.value.fields["differences"]
    assert any(d.startswith("fabric.shape") for d in diffs), diffs
    assert any(d.startswith("n_channels") for d in diffs), diffs


def test_other_score_settings_resume_the_learned_agent(tmp_path: Path) -> None:
    # a snapshot of an agent with the score defaults of an earlier release
    old_cfg = AgentConfig.model_validate(
        {"seed": 1, "score": {"short": 2, "suppress": 100, "som_weight": 1.0}})
    X = periodic(300, seed=4)
    old = Agent(2, old_cfg)
    old.process_many(X[:200])
    store = SnapshotStore(tmp_path)
    store.write(old.get_state(), step=old.step)
    got = resume_agent(store, AgentConfig(seed=1), n_channels=2)
    assert got is not None
    agent = got[0]
    assert sorted(d.split(":")[0] for d in agent.score_changes) == [
        "score.short", "score.som_weight", "score.suppress"]
    # what was learned is kept; the likelihood's windows changed length, so it
    # starts over, and so do the daily recurrence's bins (short means of `short`)
    before, after = old.get_state(), agent.get_state()
    for k in before:
        if not k.startswith(("lik/", "echo/")) and k != "agent/meta":
            np.testing.assert_array_equal(before[k], after[k], err_msg=k)
    assert agent.detector.likelihood.count == 0 and agent.step == 200
    assert agent.detector.echo is not None and agent.detector.echo.ring.shape[0] == 3
    out = agent.process_many(X[200:])
    assert all(m.anomaly_likelihood == 0.5 for m in out[:50])
    assert [m.prediction for m in out] == [m.prediction for m in old.process_many(X[200:])]
    # where the windows still fit (rest period changed only), the likelihood is restored
    same_windows = AgentConfig.model_validate(
        {"seed": 1, "score": {"short": 2, "suppress": 50, "som_weight": 1.0}})
    other = Agent(2, same_windows)
    other.set_state(store.load().state)
    assert other.score_changes == ["score.suppress: 100 != 50"]
    assert other.detector.likelihood.count == 200
    # anything else still refuses the snapshot, the normaliser's rate included:
    # the normalised frames are what the fabric and the predictor learn from
    with pytest.raises(StateError):
        Agent(2, AgentConfig.model_validate({"seed": 2})).set_state(store.load().state)
    other_rate = AgentConfig.model_validate({"seed": 1, "score": {"norm_alpha": 0.01}})
    with pytest.raises(StateError, match="another configuration") as e:
        Agent(2, other_rate).set_state(store.load().state)
    assert any(d.startswith("score.norm_alpha:") for d in e.value.fields["differences"])
    with pytest.raises(StateError):
        resume_agent(store, other_rate, n_channels=2)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    import zarr

    store = SnapshotStore(tmp_path)
    info = store.write(small_state(), step=40)
    g = zarr.open_group(str(tmp_path / "snapshots" / info.name), mode="r+")
    attrs = dict(g.attrs["lillith"])
    attrs["schema_version"] = SCHEMA_VERSION + 1
    g.attrs["lillith"] = attrs
    with pytest.raises(StateError) as e:
        store.load()
    assert e.value.fields["found"] == SCHEMA_VERSION + 1


def write_v1_snapshot(root: Path, state: dict[str, np.ndarray], step: int) -> str:
    """The v1 layout, as lillith 0.1 wrote it: one zarr array per key in nested
    groups, checksums in the attributes, no part-filled micro-batch."""
    import zarr

    name = f"{step:012d}-20260101T000000000000Z"
    g = zarr.open_group(str(root / "snapshots" / name), mode="w")
    checksums: dict[str, int] = {}
    meta: Any = None
    for k, v in state.items():
        if k == "agent/meta":
            meta = json.loads(bytes(v).decode())
            continue
        if k.startswith("agent/pending_") or k == "agent/batch":
            continue  # v1 had none
        g.create_array(k, data=v, chunks=tuple(max(s, 1) for s in v.shape), compressors=None)
        checksums[k] = crc32(v)
    g.attrs["lillith"] = {"schema_version": 1, "step": step, "utc": "2026-01-01T00:00:00",
                          "checksums": checksums, "json": {"agent/meta": meta}}
    (root / "LATEST").write_text(name + "\n")
    return name


def test_v1_snapshot_is_migrated(tmp_path: Path) -> None:
    cfg = AgentConfig(seed=2)
    X = periodic(96, seed=3)
    a = Agent(2, cfg)
    a.process_many(X[:48])  # a micro-batch boundary: v1 snapshots were taken there
    name = write_v1_snapshot(tmp_path, a.get_state(), a.step)
    store = SnapshotStore(tmp_path)
    assert store.verify(name).ok
    got = resume_agent(store, cfg, n_channels=2)
    assert got is not None and got[1].info.schema_version == 1
    out_a = a.process_many(X[48:])
    out_b = got[0].process_many(X[48:])
    assert [m.as_dict() for m in out_a] == [m.as_dict() for m in out_b]


# ---------------------------------------------------------------- remote stores
@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_fsspec_stores(tmp_path: Path, scheme: str) -> None:
    root = (f"memory://lillith-{uuid.uuid4().hex}" if scheme == "memory"
            else f"file://{tmp_path}/fs")
    store = SnapshotStore(root, keep_last=2)
    state = small_state()
    names = [store.write(state, step=s).name for s in (40, 41, 42)]
    assert store.names() == names[1:]
    assert store.latest_name() == names[-1]
    assert all(i.ok for i in store.snapshots(verify=True))
    assert_states_equal(store.load().state, state)
    store.clean_temporaries()


# ---------------------------------------------------------------- CLI
def lillith(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lillith.runtime.cli", *args],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "LILLITH_LOG__FORMAT": "json"})


def events(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_run_resumes_fresh_keeps_and_inspect(tmp_path: Path) -> None:
    st = str(tmp_path / "state")
    r1 = lillith("run", "--state", st, "--max-frames", "600", "--checkpoint-every", "256")
    assert r1.returncode == 0, r1.stderr
    ev1 = events(r1.stdout + r1.stderr)
    written = [e["step"] for e in ev1 if e["event"] == "snapshot_written"]
    assert written == [256, 512, 600]
    r2 = lillith("run", "--state", st, "--max-frames", "100")
    ev2 = events(r2.stdout + r2.stderr)
    assert [e["step"] for e in ev2 if e["event"] == "state_resumed"] == [600]
    assert [e["step"] for e in ev2 if e["event"] == "snapshot_written"] == [700]
    r3 = lillith("run", "--state", st, "--max-frames", "50", "--fresh")
    ev3 = events(r3.stdout + r3.stderr)
    assert not [e for e in ev3 if e["event"] == "state_resumed"]
    store = SnapshotStore(st)
    assert store.load().info.step == 50 and len(store.names()) == 5  # old ones kept
    ins = lillith("inspect", st, "--json", "--verify")
    assert ins.returncode == 0, ins.stderr
    doc = json.loads(ins.stdout)
    assert doc["latest"] == store.latest_name()
    # oldest first by time: the fresh agent's snapshot is the newest
    assert [s["step"] for s in doc["snapshots"]] == [256, 512, 600, 700, 50]
    assert all(s["ok"] for s in doc["snapshots"])
    assert {"name", "step", "bytes", "ok"} <= set(doc["snapshots"][0])
    agent = doc["agent"]
    assert agent["steps"] == 50 and 0 < agent["energy"] <= 1
    assert 0 < agent["som"]["utilization"] <= 1 and agent["tiles"]["total"] > 0
    # a broken snapshot: listed as bad, --verify exits 1
    d = Path(st) / "snapshots" / doc["snapshots"][1]["name"]  # not the newest
    _chunk(d, "packed").write_bytes(b"garbage")
    bad = lillith("inspect", st, "--verify")
    assert bad.returncode == 1 and "BAD" in bad.stdout
    assert lillith("inspect", str(tmp_path / "none")).returncode == 2


def test_replay_with_state_continues_the_stream(tmp_path: Path) -> None:
    X = periodic(300, seed=4, width=1)
    for part, (lo, hi) in enumerate([(0, 160), (160, 300)]):
        with (tmp_path / f"p{part}.csv").open("w") as f:
            f.write("timestamp,value\n")
            for i in range(lo, hi):
                f.write(f"2026-01-01 00:{i // 60:02d}:{i % 60:02d},{float(X[i, 0])!r}\n")
    with (tmp_path / "all.csv").open("w") as f:
        f.write("timestamp,value\n")
        for i in range(300):
            f.write(f"2026-01-01 00:{i // 60:02d}:{i % 60:02d},{float(X[i, 0])!r}\n")
    st = str(tmp_path / "state")
    for part in (0, 1):
        r = lillith("replay", str(tmp_path / f"p{part}.csv"), "--out",
                    str(tmp_path / f"o{part}.csv"), "--state", st, "--quiet")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout.splitlines()[-1])["start_step"] == [0, 160][part]
    r = lillith("replay", str(tmp_path / "all.csv"), "--out", str(tmp_path / "oall.csv"),
                "--quiet")
    assert r.returncode == 0, r.stderr
    split = (tmp_path / "o0.csv").read_text().splitlines() + \
        (tmp_path / "o1.csv").read_text().splitlines()[1:]
    whole = (tmp_path / "oall.csv").read_text().splitlines()
    # 160 is a micro-batch boundary, so the two halves make the same calls as the whole
    assert len(split) == len(whole) == 301
    assert split == whole


EVOLVING = json.dumps({"fabric": {"shape": [4, 4, 6], "n_features": 12},
                       "som": {"map_shape": [6, 6]}, "predictor": {"batch_size": 8},
                       "evolution": {"every": 150, "warmup": 150,
                                     "fabric": {"prune_rate": 0.2}}})


def _final_state(st: str) -> dict[str, np.ndarray]:
    return SnapshotStore(st).load().state


def test_run_with_evolution_resumed_equals_a_straight_run(tmp_path: Path) -> None:
    """``lillith run`` (synthetic source) with evolution on: stopped at step 701 (not a
    round, not a chunk boundary, mid micro-batch) and resumed to 1500, it ends
    bit-identical to a run straight to 1500, evolution rounds at the same steps in both."""
    env = {**os.environ, "LILLITH_LOG__FORMAT": "json", "LILLITH_AGENT": EVOLVING}

    def run(st: str, until: int) -> list[dict[str, Any]]:
        r = subprocess.run([sys.executable, "-m", "lillith.runtime.cli", "run", "--state", st,
                            "--until-step", str(until)], capture_output=True, text=True,
                           timeout=300, check=False, env=env)
        assert r.returncode == 0, r.stderr
        return events(r.stdout + r.stderr)

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    ev_a = run(a, 701) + run(a, 1500)
    ev_b = run(b, 1500)
    rounds_a = [e["step"] for e in ev_a if e["event"] == "evolution_round"]
    rounds_b = [e["step"] for e in ev_b if e["event"] == "evolution_round"]
    assert rounds_a == rounds_b == list(range(150, 1500, 150))
    assert [e["step"] for e in ev_a if e["event"] == "state_resumed"] == [701]
    sa, sb = _final_state(a), _final_state(b)
    assert int(sa["agent/counters"][0]) == int(sb["agent/counters"][0]) == 1500
    assert sa.keys() == sb.keys()
    for k in sa:
        assert np.array_equal(sa[k], sb[k]), k
    assert np.asarray(sa["evo/births"]).shape[0] > 0


def test_replay_with_evolution_resumed_equals_the_whole_file(tmp_path: Path) -> None:
    """``lillith replay --state`` with evolution on, a file in two parts (cut between
    rounds, mid micro-batch): the same per-row output as the whole file."""
    X = periodic(900, seed=5, width=1)
    cuts = {"p0": (0, 437), "p1": (437, 900), "all": (0, 900)}
    for name, (lo, hi) in cuts.items():
        with (tmp_path / f"{name}.csv").open("w") as f:
            f.write("timestamp,value\n")
            for i in range(lo, hi):
                f.write(f"{i},{float(X[i, 0])!r}\n")
    env = {**os.environ, "LILLITH_AGENT": EVOLVING}

    def replay(name: str, *extra: str) -> None:
        r = subprocess.run([sys.executable, "-m", "lillith.runtime.cli", "replay",
                            str(tmp_path / f"{name}.csv"), "--out", str(tmp_path / f"o{name}.csv"),
                            "--quiet", *extra], capture_output=True, text=True, timeout=300,
                           check=False, env=env)
        assert r.returncode == 0, r.stderr

    st = str(tmp_path / "state")
    replay("p0", "--state", st)
    replay("p1", "--state", st)
    replay("all")
    split = ((tmp_path / "op0.csv").read_text().splitlines()
             + (tmp_path / "op1.csv").read_text().splitlines()[1:])
    whole = (tmp_path / "oall.csv").read_text().splitlines()
    assert len(split) == len(whole) == 901
    assert split == whole


class _SlowStore(SnapshotStore):
    """A real store whose writes start only when the test lets them."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.go = asyncio.Event()

    async def awrite(self, state: Any, *, step: int, offload: Any = None) -> Any:
        await self.go.wait()
        return await super().awrite(state, step=step)


async def test_checkpoint_due_while_a_write_is_in_progress(tmp_path: Path) -> None:
    store = _SlowStore(str(tmp_path / "state"))
    cp = Checkpointer(store, every_frames=10)
    state = Agent(1, AgentConfig(seed=0)).get_state()
    assert cp.due(10) and not cp.due(9)
    first = asyncio.create_task(cp.write(state, 10, reason="cadence"))
    await asyncio.sleep(0.01)
    assert cp.busy
    # the daemon skips while busy; a local run asks with while_busy and waits
    assert not cp.due(20) and cp.due(20, while_busy=True)
    assert not cp.due(19, while_busy=True)
    store.go.set()
    await cp.wait()
    assert (await first) is not None and cp.last_step == 10 and not cp.busy
    assert cp.due(20)
    assert (await cp.write(state, 20, reason="cadence")) is not None
    assert [SnapshotStore(str(tmp_path / "state")).load(n).info.step
            for n in store.names()] == [10, 20]


async def test_checkpoint_time_cadence_counts_from_the_start_of_a_write(tmp_path: Path) -> None:
    store = _SlowStore(str(tmp_path / "state"))
    cp = Checkpointer(store, every_seconds=0.05)
    state = Agent(1, AgentConfig(seed=0)).get_state()
    first = asyncio.create_task(cp.write(state, 10, reason="cadence"))
    await asyncio.sleep(0.01)
    assert cp.busy and not cp.due(11, while_busy=True)  # 10 ms into the write
    await asyncio.sleep(0.06)  # the write has taken longer than the cadence
    assert not cp.due(11) and cp.due(11, while_busy=True)
    store.go.set()
    assert (await first) is not None
    assert cp.due(11)  # due at once: 50 ms have passed since that write began
