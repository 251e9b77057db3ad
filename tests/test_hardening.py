"""Hostile input, full disks, crashes and misconfiguration (issue 19), one test per defect.

In-process where the part is a library (codec, worker, snapshot store,
checkpointer, link), a real ``lillith`` process against a real mosquitto where
the defect is the daemon's or the command line's. The longer scenarios (broker
restart, SIGKILL, a filled tmpfs, a corrupted snapshot, a poison frame among
5,000) are the chaos suite, ``tests/test_chaos.py`` (``make chaos``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import structlog

from lillith.agents.config import AgentConfig
from lillith.runtime.worker import AgentWorker, Result
from lillith.sensors.codec import REASONS, RejectError, Schema, decode
from lillith.state import SnapshotStore

from .conftest import MOSQUITTO, free_port, start_mosquitto
from .test_daemon_mqtt import Collector, agent_env, start_daemon

ROOT = Path(__file__).resolve().parents[1]
TINY = json.dumps({"fabric": {"shape": [2, 2, 2], "n_features": 8},
                   "som": {"map_shape": [4, 4]}})


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, check=False)
    return r.returncode == 0


def _umount_under(path: Path) -> None:
    """Unmount every mount point under ``path`` (wherever a rename moved it)."""
    with open("/proc/mounts") as f:
        points = [line.split()[1] for line in f if line.split()[1].startswith(str(path))]
    for p in sorted(points, reverse=True):
        subprocess.run(["umount", p], check=False)


def _events(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a kill
                out.append(json.loads(line))
    return out


def _wait_event(log: Path, event: str, timeout: float, proc: subprocess.Popen[bytes] | None = None,
                n: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [e for e in _events(log) if e.get("event") == event]
        if len(got) >= n:
            return got
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"no {event!r} in time: {log.read_text()[-3000:]}")


# ---------------------------------------------------------------- 1, 2, 8, 11: the codec
@pytest.mark.parametrize("t", [4e22, 1e300, -1e300, 1e11 * 1.0001])
def test_1_2_a_time_beyond_the_bound_is_dead_lettered(t: float) -> None:
    payload = json.dumps({"t": t, "values": [1.0]}).encode()
    with pytest.raises(RejectError) as e:
        decode(payload, Schema())
    assert e.value.reason == "time_out_of_range" and e.value.reason in REASONS
    # within the bound (and with a wider configured bound) it is a frame
    assert decode(b'{"t": -1e11, "values": [1]}', Schema()).t == -1e11
    assert decode(payload, Schema(max_abs_t=1e301)).t == t


def test_8_a_frame_wider_than_the_maximum_is_dead_lettered() -> None:
    wide = json.dumps({"values": [1.0] * 10_000}).encode()
    for payload, ctype in ((wide, None), (np.ones(10_000, "<f4").tobytes(),
                                          "application/octet-stream")):
        with pytest.raises(RejectError) as e:
            decode(payload, Schema(max_bytes=1 << 20), content_type=ctype)
        assert e.value.reason == "too_wide" and e.value.reason in REASONS
    assert decode(wide, Schema(max_bytes=1 << 20, max_width=10_000)).values.size == 10_000


def test_11_nesting_is_bounded_under_every_key() -> None:
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    for obj in ({"values": [1.0], "meta": deep}, {"t": deep, "values": [1.0]},
                {"values": [1.0], "m": {"a": {"b": deep}}}):
        with pytest.raises(RejectError) as e:
            decode(json.dumps(obj).encode(), Schema())
        assert e.value.reason == "too_deep", obj
    # shallow extra keys are carried along, unread
    assert decode(b'{"values": [1], "meta": {"site": "a"}}', Schema()).values.tolist() == [1]
    with pytest.raises(RejectError) as e:
        decode(b'{"values": [1], "meta": [[[1]]]}', Schema(max_depth=3))
    assert e.value.reason == "too_deep"


# ---------------------------------------------------------------- 2: one failing frame alone
def test_2_a_frame_the_agent_fails_on_takes_no_other_frame_with_it() -> None:
    """A run of 300 frames with one the agent raises on (a time the codec would
    refuse, fed to the worker directly): the 299 others are scored, the bad one
    is reported with a reason and the error, and the agent goes on."""
    got: list[Result] = []
    w = AgentWorker("p", AgentConfig(), queue_size=400, policy="backpressure", width=1,
                    on_results=got.extend)
    from lillith.sensors.codec import Frame

    bad = 150
    for i in range(300):
        w.offer(i, Frame(np.array([float(np.sin(i / 5))]), 1e300 if i == bad else float(i)))
    w.start()  # all queued first: one long run, the poison in its middle
    w.stop()
    assert w.join(120)
    assert sorted(r.seq for r in got) == list(range(300))
    failed = [r for r in got if r.metrics is None]
    assert [r.seq for r in failed] == [bad]
    assert failed[0].reason == "agent_error" and failed[0].error
    assert w.errors == 1 and w.processed == 299
    assert w.agent is not None
    w.agent.get_state()  # still saveable


# ---------------------------------------------------------------- 4: a full disk
def test_4_full_disk_backs_off_logs_once_per_change_and_tells_the_margin(tmp_path: Path
                                                                          ) -> None:
    from lillith.agents.agent import Agent
    from lillith.runtime.checkpoint import Checkpointer

    mnt = tmp_path / "tiny"
    if not _mount_tmpfs(mnt, "4m"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        agent = Agent(1, AgentConfig.model_validate(json.loads(TINY)))
        agent.process_many(np.ones((20, 1)))
        state = agent.get_state()
        size = sum(np.asarray(v).nbytes for v in state.values())
        store = SnapshotStore(mnt / "state")
        cp = Checkpointer(store, every_frames=1)  # retries 1, 2, 4, ... s apart
        filler = mnt / "filler"
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        # leave less than the snapshot plus the 1 MiB margin, more than the snapshot
        filler.write_bytes(b"\0" * (free - size - (1 << 19)))

        async def main() -> tuple[int, list[float]]:
            attempts = 0
            t0 = time.monotonic()
            step = 20
            times: list[float] = []
            while time.monotonic() - t0 < 4.5:  # polled as the daemon's loop does
                step += 1
                if cp.due(step):
                    attempts += 1
                    times.append(time.monotonic() - t0)
                    await cp.write(state, step, reason="cadence")
                await asyncio.sleep(0.01)
            filler.unlink()
            while cp.last is None and time.monotonic() - t0 < 15.0:
                step += 1
                if cp.due(step):
                    await cp.write(state, step, reason="cadence")
                await asyncio.sleep(0.01)
            return attempts, times

        with structlog.testing.capture_logs() as logs:
            attempts, times = asyncio.run(main())
        failed = [e for e in logs if e["event"] == "snapshot_failed"]
        assert len(failed) == 1, failed  # one line for the change to failing
        e = failed[0]
        assert e["needed_bytes"] > e["free_bytes"], e  # the margin is in what is needed
        assert e["needed_bytes"] == e["data_bytes"] + e["margin_bytes"]
        # exponential: 1, 2, 4 s apart: three attempts in 4.5 s, not one per poll
        assert attempts == 3, times
        gaps = np.diff(times)
        assert gaps[1] > 1.5 * gaps[0], times
        assert [x["event"] for x in logs if x["event"] == "snapshot_recovered"] == [
            "snapshot_recovered"]
        assert cp.last is not None and store.latest_name() == cp.last.name
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


# ---------------------------------------------------------------- 9: inspect --verify
def test_9_verify_fails_when_latest_is_empty_or_names_nothing(tmp_path: Path) -> None:
    from lillith.agents.agent import Agent

    agent = Agent(1, AgentConfig.model_validate(json.loads(TINY)))
    agent.process_many(np.ones((5, 1)))
    store = SnapshotStore(tmp_path)
    store.write(agent.get_state(), step=5)

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lillith.runtime.cli", "inspect",
                               str(tmp_path), "--verify"], capture_output=True, text=True,
                              check=False)

    assert verify().returncode == 0
    latest = tmp_path / "LATEST"
    latest.write_text("")
    r = verify()
    assert r.returncode == 1 and "LATEST" in r.stdout + r.stderr, r
    latest.write_text("000000000099-20260101T000000000000Z\n")
    r = verify()
    assert r.returncode == 1 and "000000000099" in r.stdout + r.stderr, r


# ---------------------------------------------------------------- 12, 15: retention deletes
def test_12_15_a_failed_retention_delete_leaves_no_half_snapshot_and_is_logged(
        tmp_path: Path) -> None:
    """A snapshot directory that cannot be removed completely (a mount point
    inside it: EBUSY, even for root) is renamed out of the snapshot names
    first, so what is left is never a half snapshot; the failure is logged,
    and the leftover is removed at the next start once it can be."""
    from lillith.agents.agent import Agent

    agent = Agent(1, AgentConfig.model_validate(json.loads(TINY)))
    agent.process_many(np.ones((5, 1)))
    state = agent.get_state()
    store = SnapshotStore(tmp_path / "state", keep_last=1)
    first = store.write(state, step=5)
    pin = tmp_path / "state" / "snapshots" / first.name / "packed" / "pinned"
    if not _mount_tmpfs(pin, "1m"):
        pytest.skip("needs root to mount a tmpfs")
    try:
        with structlog.testing.capture_logs() as logs:
            second = store.write(state, step=6)
        assert store.names() == [second.name]
        assert all(store.verify(n).ok for n in store.names())
        r = subprocess.run([sys.executable, "-m", "lillith.runtime.cli", "inspect",
                            str(tmp_path / "state"), "--verify"], capture_output=True,
                           text=True, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        failed = [e for e in logs if e["event"] == "retention_delete_failed"]
        assert len(failed) == 1 and first.name in failed[0]["snapshot"], logs
    finally:
        _umount_under(tmp_path)
    # the next start removes the leftover
    assert store.clean_temporaries()
    assert [p.name for p in (tmp_path / "state" / "snapshots").iterdir()] == [second.name]


# ---------------------------------------------------------------- 16: private snapshots
def test_16_snapshots_are_private_whatever_the_umask(tmp_path: Path) -> None:
    from lillith.agents.agent import Agent

    agent = Agent(1, AgentConfig.model_validate(json.loads(TINY)))
    agent.process_many(np.ones((5, 1)))
    old = os.umask(0o022)
    try:
        SnapshotStore(tmp_path / "state").write(agent.get_state(), step=5)
    finally:
        os.umask(old)
    root = tmp_path / "state"
    seen = 0
    for p in [root / "LATEST", root / "snapshots", *(root / "snapshots").rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))
        seen += 1
    assert seen > 5


# ---------------------------------------------------------------- 6: the route cache
def test_6_distinct_long_topics_do_not_stay_in_memory() -> None:
    from lillith.runtime.config import AgentBinding
    from lillith.runtime.daemon import Daemon
    from lillith.sensors.mqtt import MqttSettings

    async def main() -> int:
        d = Daemon(MqttSettings(), [AgentBinding(topics=["s/#"])], AgentConfig())
        from lillith.runtime.hosted import HostedAgent

        loop = asyncio.get_running_loop()
        d.agents = [HostedAgent(d.bindings[0], d.config, asyncio.Queue(), loop,
                                  asyncio.Queue(), d.metrics)]
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for i in range(3000):
            topic = f"s/{i:06d}/" + "x" * 60_000
            assert d._route(topic) is not None
            del topic
        held = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        return held

    held = asyncio.run(main())
    assert held < 16 << 20, held  # 3,000 x 60 KB = 180 MB kept before


# ---------------------------------------------------------------- 3: the last will on a crash
def test_3_a_link_left_by_an_exception_gets_its_will_published(mosquitto: int) -> None:
    from lillith.sensors.mqtt import LastWill, MqttSettings, NativeLink, PahoLink

    uid = uuid.uuid4().hex[:8]
    got: list[bytes] = []
    seen = threading.Event()
    watch = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"w-{uid}")

    def on_message(c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        got.append(bytes(m.payload))
        seen.set()

    watch.on_message = on_message
    watch.connect("127.0.0.1", mosquitto)
    watch.subscribe(f"crash/{uid}/#", qos=1)
    watch.loop_start()
    try:
        for kind, protocol in ((NativeLink, 5), (NativeLink, 311), (PahoLink, 5),
                               (PahoLink, 311)):
            seen.clear()
            got.clear()
            topic = f"crash/{uid}/{kind.__name__}{protocol}"
            s = MqttSettings(host="127.0.0.1", port=mosquitto, protocol=protocol,
                             client_id=f"c-{uid}-{kind.__name__}{protocol}",
                             persistent_session=False)

            async def crash(s: MqttSettings = s, kind: Any = kind, topic: str = topic) -> None:
                async with kind(s, LastWill(topic, b"offline")):
                    raise RuntimeError("a bug")

            with pytest.raises(RuntimeError):
                asyncio.run(crash())
            assert seen.wait(10), (kind.__name__, protocol)
            assert got == [b"offline"]
    finally:
        watch.loop_stop()
        watch.disconnect()


# ---------------------------------------------------------------- the daemon, end to end
def _publisher(port: int, uid: str) -> mqtt.Client:
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uid}")
    pub.max_queued_messages_set(0)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    return pub


def _send(pub: mqtt.Client, topic: str, payload: bytes | str) -> None:
    pub.publish(topic, payload, qos=1).wait_for_publish(30)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


@pytest.mark.parametrize("lifted", [False, True])
def test_1_2_poison_frames_are_dead_lettered_and_the_daemon_goes_on(
        mosquitto: int, tmp_path: Path, lifted: bool) -> None:
    """Frames with absurd times among valid ones. By default the codec refuses
    them (``time_out_of_range``); with the bound lifted they reach the agent,
    which fails on them: each is dead-lettered (``agent_error``) and logged,
    no valid frame is lost, and the daemon neither exits nor stops
    snapshotting (a state the agent can no longer copy is a failed
    snapshot, logged once, not a crash)."""
    uid = uuid.uuid4().hex[:8]
    name = f"p{uid}"
    prefix = f"lillith/{name}"
    agents = [{"name": name, "topics": [f"test/{uid}/#"],
               **({"max_abs_t": 1e308} if lifted else {})}]
    env = {**agent_env(uid, name, tmp_path / "state"), "LILLITH_AGENTS": json.dumps(agents),
           "LILLITH_AGENT": TINY, "LILLITH_MQTT__PASSWORD": "not-secret",
           "LILLITH_MQTT__USERNAME": "u"}
    log = tmp_path / "d.log"
    col = Collector(mosquitto, f"{prefix}/#")
    proc = start_daemon(log, "--source", f"mqtt://127.0.0.1:{mosquitto}",
                        "--checkpoint-every", "25", env=env)
    pub = _publisher(mosquitto, uid)
    try:
        assert col.wait(f"{prefix}/status", 1, 60), log.read_text()[-3000:]
        poison = [1e300, 4e22] if lifted else [4e22, 1e300, -1e300]
        n = 300
        for i in range(n):
            _send(pub, f"test/{uid}/x", json.dumps({"t": i, "values": [float(i % 7)]}))
            if i % 100 == 50 and poison:
                _send(pub, f"test/{uid}/x", json.dumps({"t": poison.pop(0), "values": [1.0]}))
        outs = col.wait(f"{prefix}/out", n, 120)
        assert sorted(json.loads(o)["t"] for o in outs) == list(range(n)), log.read_text()[-3000:]
        want = 2 if lifted else 3
        dead = [json.loads(d) for d in col.wait(f"{prefix}/deadletter", want, 30)]
        reason = "agent_error" if lifted else "time_out_of_range"
        assert [d["reason"] for d in dead] == [reason] * want, dead
        assert all('"t": ' in d["excerpt"] for d in dead)
        if lifted:
            assert [e for e in _events(log) if e["event"] == "frame_failed"]
        _send(pub, f"{prefix}/cmd", json.dumps({"cmd": "checkpoint"}))
        reply = json.loads(col.wait(f"{prefix}/cmd/reply", 1, 30)[0])
        assert proc.poll() is None, log.read_text()[-3000:]
        # snapshots go on after the poison: the agent refuses such times before
        # anything changes (its own bound, |t| <= 1e15 s), so its state stays whole
        assert reply["ok"] and reply["step"] == n, reply
        assert not [e for e in _events(log) if e["event"] == "snapshot_failed"]
        assert _stop(proc) == 0, log.read_text()[-3000:]
        status = json.loads(col.get(f"{prefix}/status")[-1])
        assert status["state"] == "offline" and status["clean"] is True
        assert status["rejects"] == {reason: want}
        # a password without TLS is said out loud (#5)
        assert [e for e in _events(log) if e["event"] == "mqtt_plaintext_credentials"]
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.loop_stop()
        col.close()


def test_7_commands_are_bounded_and_checked_before_they_run(mosquitto: int,
                                                           tmp_path: Path) -> None:
    uid = uuid.uuid4().hex[:8]
    name = f"m{uid}"
    prefix = f"lillith/{name}"
    env = {**agent_env(uid, name, tmp_path / "state"), "LILLITH_AGENT": TINY}
    log = tmp_path / "d.log"
    col = Collector(mosquitto, f"{prefix}/#")
    proc = start_daemon(log, "--source", f"mqtt://127.0.0.1:{mosquitto}", env=env)
    pub = _publisher(mosquitto, uid)

    def command(payload: bytes | str, k: int) -> dict[str, Any]:
        _send(pub, f"{prefix}/cmd", payload)
        replies = col.wait(f"{prefix}/cmd/reply", k, 30)
        assert len(replies) >= k, log.read_text()[-3000:]
        out: dict[str, Any] = json.loads(replies[k - 1])
        return out

    try:
        assert col.wait(f"{prefix}/status", 1, 60), log.read_text()[-3000:]
        for i in range(20):
            _send(pub, f"test/{uid}/x", json.dumps({"t": i, "values": [float(i % 3)]}))
        assert len(col.wait(f"{prefix}/out", 20, 60)) == 20
        sig = [0.5] * 32
        huge = json.dumps({"cmd": "status", "pad": "x" * (8 << 20)})
        t0 = time.monotonic()
        r = command(huge, 1)
        assert not r["ok"] and "size" in r["error"], r
        assert time.monotonic() - t0 < 10
        r = command(json.dumps({"cmd": "surgery", "op": "insert", "tile": 1, "signature": sig,
                                "tag": "t" * 5000}), 2)
        assert not r["ok"] and "tag" in r["error"], r
        r = command(json.dumps({"cmd": "surgery", "op": "insert", "tile": 1,
                                "signature": [1e30] * 32}), 3)
        assert not r["ok"] and "signature" in r["error"], r
        r = command(json.dumps({"cmd": "status", "surprise": 1}), 4)
        assert not r["ok"] and "surprise" in r["error"], r
        r = command(json.dumps({"cmd": "mode", "mode": "chaotic"}), 5)
        assert not r["ok"], r
        r = command(json.dumps({"cmd": "surgery", "op": "insert", "tile": 1, "signature": sig,
                                "tag": "ok", "id": "s1"}), 6)
        assert r["ok"] and r["id"] == "s1" and r["operation"]["tag"] == "ok", r
        assert proc.poll() is None
        assert _stop(proc) == 0
        snap = SnapshotStore(tmp_path / "state" / "agents" / name).load()
        assert snap.info.bytes < 2 << 20
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.loop_stop()
        col.close()


def test_8_a_wide_first_frame_does_not_fix_the_width(mosquitto: int, tmp_path: Path) -> None:
    uid = uuid.uuid4().hex[:8]
    name = f"w{uid}"
    prefix = f"lillith/{name}"
    env = {**agent_env(uid, name, tmp_path / "state"), "LILLITH_AGENT": TINY}
    log = tmp_path / "d.log"
    col = Collector(mosquitto, f"{prefix}/#")
    proc = start_daemon(log, "--source", f"mqtt://127.0.0.1:{mosquitto}", env=env)
    pub = _publisher(mosquitto, uid)
    try:
        assert col.wait(f"{prefix}/status", 1, 60), log.read_text()[-3000:]
        _send(pub, f"test/{uid}/x", json.dumps({"t": 0, "values": [1.0] * 10_000}))
        for i in range(1, 21):
            _send(pub, f"test/{uid}/x", json.dumps({"t": i, "values": [1.0, 2.0, float(i)]}))
        outs = [json.loads(o) for o in col.wait(f"{prefix}/out", 20, 60)]
        assert [o["t"] for o in outs] == list(range(1, 21)), log.read_text()[-3000:]
        dead = [json.loads(d) for d in col.wait(f"{prefix}/deadletter", 1, 30)]
        assert [d["reason"] for d in dead] == ["too_wide"]
        assert [e["width"] for e in _events(log) if e["event"] == "width_fixed"] == [3]
        assert _stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.loop_stop()
        col.close()


def test_12_a_lost_broker_is_logged_with_its_cause(tmp_path: Path) -> None:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    port = free_port()
    broker = start_mosquitto(port, tmp_path)
    uid = uuid.uuid4().hex[:8]
    env = {**agent_env(uid, f"l{uid}", tmp_path / "state"), "LILLITH_AGENT": TINY,
           "LILLITH_MQTT__RECONNECT_MAX_S": "1.0"}
    log = tmp_path / "d.log"
    proc = start_daemon(log, "--source", f"mqtt://127.0.0.1:{port}", env=env)
    try:
        _wait_event(log, "broker_connected", 60, proc)
        broker.terminate()
        broker.wait(10)
        (lost,) = _wait_event(log, "broker_connection_lost", 30, proc)[:1]
        assert "disconnected" in lost["error"] and "TaskGroup" not in lost["error"], lost
        assert lost["error_type"] == "LinkError"
        assert _stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        if broker.poll() is None:
            broker.terminate()
            broker.wait(10)


def test_13_a_second_process_on_the_same_state_exits_2_naming_the_holder(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {**os.environ, "LILLITH_LOG__FORMAT": "json", "LILLITH_AGENT": TINY}
    log = tmp_path / "first.log"
    first = subprocess.Popen([sys.executable, "-m", "lillith.runtime.cli", "run", "--state",
                              str(state), "--max-frames", "100000000"], env=env,
                             stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        _wait_event(log, "agent_started", 120, first)
        second = subprocess.run([sys.executable, "-m", "lillith.runtime.cli", "run", "--state",
                                 str(state), "--max-frames", "10"], env=env,
                                capture_output=True, text=True, timeout=120, check=False)
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
        assert _stop(first) == 0
        # once the holder is gone, the directory is free again
        third = subprocess.run([sys.executable, "-m", "lillith.runtime.cli", "run", "--state",
                                str(state), "--max-frames", "10"], env=env,
                               capture_output=True, text=True, timeout=120, check=False)
        assert third.returncode == 0, third.stderr[-2000:]
    finally:
        if first.poll() is None:
            first.kill()


def test_10_bad_urls_and_a_busy_metrics_port_are_clear_errors(tmp_path: Path) -> None:
    env = {**os.environ, "LILLITH_AGENT": TINY, "LILLITH_STATE__DIR": str(tmp_path / "s")}

    def run(source: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "lillith.runtime.cli", "run", "--source",
                               source], env={**env, **extra}, capture_output=True, text=True,
                              timeout=60, check=False)

    for source in ("mqtt://127.0.0.1:99999/x", "mqtt://h:1:5/x", "mqtt://127.0.0.1:0/x",
                   "mqtt://127.0.0.1:port/x"):
        r = run(source)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (source, r.stderr[-2000:])
        assert "port" in r.stderr, (source, r.stderr)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run(f"mqtt://127.0.0.1:{free_port()}/x", LILLITH_METRICS_PORT=str(port))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "metrics" in r.stderr and str(port) in r.stderr, r.stderr


def test_16_a_second_sigterm_does_not_skip_the_drain(mosquitto: int, tmp_path: Path) -> None:
    """SIGTERM twice (``timeout``, a supervisor signalling the group): the
    daemon still drains, writes its final snapshot and says ``offline``; only
    SIGINT twice forces the exit."""
    uid = uuid.uuid4().hex[:8]
    name = f"s{uid}"
    prefix = f"lillith/{name}"
    agents = [{"name": name, "topics": [f"test/{uid}/#"], "queue_size": 64}]
    env = {**agent_env(uid, name, tmp_path / "state"), "LILLITH_AGENTS": json.dumps(agents),
           "LILLITH_AGENT__FABRIC__SHAPE": "[9, 9, 32]", "LILLITH_AGENT__FABRIC__SUBSTEPS": "6"}
    log = tmp_path / "d.log"
    col = Collector(mosquitto, f"{prefix}/#")
    proc = start_daemon(log, "--source", f"mqtt://127.0.0.1:{mosquitto}", env=env)
    pub = _publisher(mosquitto, uid)
    try:
        assert col.wait(f"{prefix}/status", 1, 60), log.read_text()[-3000:]
        for i in range(300):
            pub.publish(f"test/{uid}/x", json.dumps({"t": i, "values": [float(i % 7)]}), qos=1)
        assert col.wait(f"{prefix}/out", 5, 120)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
        ev = _events(log)
        assert [e["reason"] for e in ev if e["event"] == "snapshot_written"][-1] == "shutdown"
        status = json.loads(col.get(f"{prefix}/status")[-1])
        assert status["state"] == "offline" and status["frames_out"] == status["frames_in"]
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.loop_stop()
        col.close()


# ---------------------------------------------------------------- 5: TLS
def test_5_a_client_certificate_without_a_ca_is_tls_against_the_system_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``tls_cert`` / ``tls_key`` without ``tls_ca``: TLS, the broker verified
    against the system's trust store (here ``SSL_CERT_FILE``, which OpenSSL
    reads as the system store), never plaintext; a password without TLS is
    refused when ``plaintext_credentials = "refuse"``."""
    import shutil

    from lillith.errors import ConfigError
    from lillith.runtime.config import load_settings
    from lillith.sensors.mqtt import LinkError, MqttSettings, NativeLink

    if shutil.which("openssl") is None or MOSQUITTO is None:
        pytest.skip("openssl or mosquitto missing")

    def run(*args: str) -> None:
        subprocess.run(args, check=True, cwd=tmp_path, capture_output=True)

    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=lillith-test-ca")
    (tmp_path / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for who in ("server", "client"):
        run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{who}.key",
            "-out", f"{who}.csr", "-subj", f"/CN={who}")
        run("openssl", "x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{who}.pem", "-days", "2", "-extfile", "ext")
    tls_port, plain_port = free_port(), free_port()
    tls = start_mosquitto(tls_port, tmp_path, extra=(
        f"cafile {tmp_path / 'ca.pem'}\ncertfile {tmp_path / 'server.pem'}\n"
        f"keyfile {tmp_path / 'server.key'}\nrequire_certificate true\n"))
    plain = start_mosquitto(plain_port, tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    try:
        def settings(port: int) -> MqttSettings:
            return MqttSettings(host="127.0.0.1", port=port, client_id="tls-cert",
                                tls_cert=tmp_path / "client.pem", tls_key=tmp_path / "client.key",
                                persistent_session=False)

        async def main() -> None:
            async with NativeLink(settings(tls_port)) as link:  # a client certificate: TLS
                await link.subscribe("tls/#")
                await link.publish("tls/x", b"over tls", qos=1, wait=True)
            with pytest.raises(LinkError):  # never plaintext, even where plaintext works
                async with NativeLink(settings(plain_port)):
                    pass

        asyncio.run(main())
    finally:
        for b in (tls, plain):
            b.terminate()
            b.wait(10)
    with pytest.raises(ConfigError) as e:
        load_settings(env={"LILLITH_MQTT__PASSWORD": "x",
                           "LILLITH_MQTT__PLAINTEXT_CREDENTIALS": "refuse"})
    assert "plaintext" in str(e.value)
    load_settings(env={"LILLITH_MQTT__PASSWORD": "x", "LILLITH_MQTT__TLS": "true",
                       "LILLITH_MQTT__PLAINTEXT_CREDENTIALS": "refuse"})


# ---------------------------------------------------------------- 14: systemd and numba
def test_14_the_systemd_unit_gives_numba_a_writable_cache(tmp_path: Path) -> None:
    """Under ``ProtectSystem=strict`` / ``ProtectHome=true`` neither the package's
    ``__pycache__`` nor the user's home is writable, and numba's ``cache=True``
    then fails at import ("no locator available"). Reproduced in a private
    mount namespace: the whole file system bind-mounted read-only (as
    ``ProtectSystem=strict`` does), a home that does not exist, and a writable
    tmpfs where systemd's ``CacheDirectory=`` would put the cache. The unit's
    environment must import and run a kernel there."""
    import shlex
    import shutil
    import tempfile

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a private mount namespace")
    unit = (ROOT / "deploy" / "lillith.service").read_text()
    lines = [x.strip() for x in unit.splitlines()]
    env: dict[str, str] = {}
    for x in lines:
        if x.startswith("Environment="):
            k, _, v = x.removeprefix("Environment=").partition("=")
            env[k] = v
    cache_dirs = [x.removeprefix("CacheDirectory=") for x in lines
                  if x.startswith("CacheDirectory=")]
    assert "ProtectSystem=strict" in lines and "ProtectHome=true" in lines
    cache = Path(tempfile.mkdtemp(prefix="lillith-unit-cache-"))
    try:
        for d in cache_dirs:  # where systemd makes it: /var/cache/<name>
            env = {k: v.replace(f"/var/cache/{d}", str(cache)) for k, v in env.items()}
        probe = ("from lillith.fabric import NeuralFabric3D\n"
                 "import lillith.agents.agent, lillith.runtime.daemon\n"
                 "NeuralFabric3D((2, 2, 2), n_inputs=1).step([0.5])\n")
        script = (f"mount --bind / / && mount -o remount,bind,ro / && "
                  f"mount -t tmpfs tmpfs {shlex.quote(str(cache))} && "
                  f"exec {shlex.quote(sys.executable)} -c {shlex.quote(probe)}")
        r = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd="/",
                           env={"PATH": os.environ.get("PATH", ""), "HOME": "/nonexistent",
                                **env}, capture_output=True, text=True, timeout=600,
                           check=False)
        if "mount:" in r.stderr and "permission denied" in r.stderr.lower():
            pytest.skip("mount namespaces are not allowed here")
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
