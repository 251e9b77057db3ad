"""End to end against a real mosquitto: frames in, scores out, dead letters, commands, SIGTERM."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from .conftest import MOSQUITTO, free_port, start_mosquitto


def start_daemon(log_path: Path, *args: str, env: dict[str, str] | None = None
                 ) -> subprocess.Popen[bytes]:
    """``lillith run ARGS`` in a subprocess, its output going to ``log_path``;
    snapshots under ``log_path``'s directory unless the environment says otherwise."""
    env = dict(os.environ if env is None else env)
    env.setdefault("LILLITH_STATE__DIR", str(log_path.parent / "state"))
    return subprocess.Popen([sys.executable, "-m", "lillith.runtime.cli", "run", *args],
                            env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)


def agent_env(uid: str, name: str, state: Path, **extra: str) -> dict[str, str]:
    """Environment of a daemon with one agent ``name`` on ``test/<uid>/#``, its own
    client id, JSON logs and snapshots under ``state`` (plus ``extra`` variables)."""
    return {**os.environ, "LILLITH_MQTT__CLIENT_ID": f"daemon-{uid}",
            "LILLITH_AGENTS": json.dumps([{"name": name, "topics": [f"test/{uid}/#"]}]),
            "LILLITH_LOG__FORMAT": "json", "LILLITH_STATE__DIR": str(state), **extra}


def start_feeder(pub: mqtt.Client, topic: str, n: int
                 ) -> tuple[list[mqtt.MQTTMessageInfo], threading.Thread]:
    """Publish frames ``{"t": i, "values": [i % 17]}``, i < n, at QoS 1 from a thread,
    about 1,000 a second (still going when a test restarts something); returns
    the message infos (filled as it goes) and the running thread."""
    infos: list[mqtt.MQTTMessageInfo] = []

    def publish_all() -> None:
        for i in range(n):
            infos.append(pub.publish(topic, json.dumps({"t": i, "values": [float(i % 17)]}),
                                     qos=1))
            if i % 50 == 49:
                time.sleep(0.05)

    feeder = threading.Thread(target=publish_all, daemon=True)
    feeder.start()
    return infos, feeder


class Collector:
    """A paho subscriber that stores every message by topic."""

    def __init__(self, port: int, topic_filter: str) -> None:
        self.msgs: dict[str, list[bytes]] = defaultdict(list)
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"collector-{uuid.uuid4().hex[:8]}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic_filter, qos=1)
        self.client.loop_start()

    def _on_message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.msgs[msg.topic].append(bytes(msg.payload))

    def get(self, topic: str) -> list[bytes]:
        with self.lock:
            return list(self.msgs[topic])

    def wait(self, topic: str, n: int, timeout: float) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.get(topic)
            if len(got) >= n:
                return got
            time.sleep(0.05)
        return self.get(topic)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_publish_score_deadletter_command_and_sigterm(mosquitto: int, tmp_path: Path) -> None:
    uid = uuid.uuid4().hex[:8]
    name = f"t{uid}"
    metrics_port = free_port()
    prefix = f"lillith/{name}"
    env = {**os.environ,
           "LILLITH_MQTT__CLIENT_ID": f"daemon-{uid}",
           "LILLITH_AGENTS": json.dumps([{"name": name, "topics": [f"test/{uid}/#"]}]),
           "LILLITH_LOG__FORMAT": "json",
           "LILLITH_METRICS_PORT": str(metrics_port)}
    col = Collector(mosquitto, f"{prefix}/#")
    proc = start_daemon(tmp_path / "daemon.log", "--source", f"mqtt://127.0.0.1:{mosquitto}",
                        env=env)

    def daemon_log() -> str:
        return (tmp_path / "daemon.log").read_text()[-3000:]

    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uid}")
    pub.connect("127.0.0.1", mosquitto)
    pub.loop_start()
    try:
        status = col.wait(f"{prefix}/status", 1, 60)
        assert status and json.loads(status[-1])["state"] == "online", daemon_log()
        n = 200
        rng = np.random.default_rng(0)
        bad = [b'{"values": [1, 2', b'{"values": [1, NaN, 3]}', b'"text"', b"\xff\x00",
               b'{"values": [1, 2]}', b'{"values": [' + b"1" * (10 << 20) + b"]}",
               b'{"values": ' + b"[" * 50 + b"]" * 50 + b"}"]
        for i in range(n):
            vals = [float(np.sin(i / 5)), float(rng.standard_normal()), 3.0]
            msg = json.dumps({"t": i, "values": vals})
            pub.publish(f"test/{uid}/s1", msg, qos=1).wait_for_publish(5)
            if i % 28 == 10:  # truncated, NaN, wrong type, junk, wrong length, 10 MB, deep
                pub.publish(f"test/{uid}/s1", bad[(i // 28) % len(bad)], qos=1
                            ).wait_for_publish(30)
        outs = col.wait(f"{prefix}/out", n, 120)
        assert len(outs) == n
        rows = [json.loads(o) for o in outs]
        assert [r["seq"] for r in rows] == list(range(1, n + 1))
        assert [r["t"] for r in rows] == list(range(n))
        for r in rows:
            assert 0.0 <= r["anomaly_likelihood"] <= 1.0 and len(r["prediction"]) == 3
        dead = [json.loads(d) for d in col.wait(f"{prefix}/deadletter", 7, 30)]
        assert {d["reason"] for d in dead} == {"malformed_json", "non_finite", "wrong_type",
                                              "wrong_length", "oversized", "too_deep"}
        assert max(len(json.dumps(d)) for d in dead) < 2000  # excerpts stay bounded
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                        timeout=10).read().decode()
        assert f'lillith_frames_out_total{{agent="{name}"}} {float(n)}' in scrape
        assert f'lillith_rejects_total{{agent="{name}",reason="non_finite"}} 1.0' in scrape
        assert "lillith_event_loop_lag_seconds_count" in scrape
        pub.publish(f"{prefix}/cmd", json.dumps({"cmd": "status", "id": 7}), qos=1)
        pub.publish(f"{prefix}/cmd", b"not json", qos=1)
        pub.publish(f"{prefix}/cmd", json.dumps({"cmd": "pause", "id": 8}), qos=1)
        replies = [json.loads(r) for r in col.wait(f"{prefix}/cmd/reply", 3, 30)]
        assert replies[0]["ok"] and replies[0]["id"] == 7 and replies[0]["frames_in"] == n
        assert replies[1]["ok"] is False and "error" in replies[1]
        assert replies[2] == {"id": 8, "cmd": "pause", "learning": False, "ok": True}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, daemon_log()
        time.sleep(0.5)
        final = json.loads(col.get(f"{prefix}/status")[-1])
        assert final["state"] == "offline" and final["frames_out"] == n
        assert final["rejects"] == {"malformed_json": 2, "non_finite": 1, "wrong_type": 1,
                                    "wrong_length": 1, "oversized": 1, "too_deep": 1}
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.loop_stop()
        col.close()


def test_broker_unreachable_at_start_then_serves(tmp_path: Path) -> None:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    port = free_port()
    uid = uuid.uuid4().hex[:8]
    name = f"u{uid}"
    env = {**os.environ, "LILLITH_MQTT__CLIENT_ID": f"daemon-{uid}",
           "LILLITH_MQTT__RECONNECT_MAX_S": "1.0",
           "LILLITH_AGENTS": json.dumps([{"name": name, "topics": ["elsewhere/#"]}])}
    # the topic filter from the URL, '#' and all (not a URL fragment)
    proc = start_daemon(tmp_path / "daemon.log", "--source",
                        f"mqtt://127.0.0.1:{port}/test/{uid}/#", env=env)
    broker = None
    col = pub = None
    try:
        # several failed connection attempts, no crash (waiting on the log, not on
        # the clock: a cold start compiles numba kernels first, seconds on a slow host)
        log = tmp_path / "daemon.log"

        def attempts() -> int:  # (the event, not the test's own name in a path)
            return len(re.findall(r"\]\s+broker_unreachable\s", log.read_text()))

        deadline = time.monotonic() + 120.0
        while attempts() < 3 and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.1)
        assert attempts() >= 3, log.read_text()[-2000:]
        assert proc.poll() is None, log.read_text()[-2000:]
        broker = start_mosquitto(port, tmp_path)
        col = Collector(port, f"lillith/{name}/#")
        assert col.wait(f"lillith/{name}/status", 1, 30), (tmp_path / "daemon.log").read_text()
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uid}")
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        for i in range(20):
            pub.publish(f"test/{uid}/x", json.dumps({"values": [float(i)]}), qos=1
                        ).wait_for_publish(5)
        assert len(col.wait(f"lillith/{name}/out", 20, 60)) == 20
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        if pub is not None:
            pub.loop_stop()
        if col is not None:
            col.close()
        if broker is not None:
            broker.terminate()
            broker.wait(10)


def test_sighup_reloads_live_settings(mosquitto: int, tmp_path: Path) -> None:
    uid = uuid.uuid4().hex[:8]
    name = f"h{uid}"
    cfg = tmp_path / "lillith.toml"

    def write(output_every: int, high: float) -> None:
        cfg.write_text(f'[mqtt]\nclient_id = "d-{uid}"\n[[agents]]\nname = "{name}"\n'
                       f'topics = ["test/{uid}/#"]\noutput_every = {output_every}\n'
                       f"high = {high}\n")

    write(1, 1e12)
    proc = start_daemon(tmp_path / "daemon.log", "--config", str(cfg), "--source",
                        f"mqtt://127.0.0.1:{mosquitto}")
    col = Collector(mosquitto, f"lillith/{name}/#")
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uid}")
    pub.connect("127.0.0.1", mosquitto)
    pub.loop_start()

    def send(lo: int, hi: int, value: float = 1.0) -> None:
        for i in range(lo, hi):
            pub.publish(f"test/{uid}/x", json.dumps({"t": i, "values": [value + i % 3]}),
                        qos=1).wait_for_publish(5)

    try:
        assert col.wait(f"lillith/{name}/status", 1, 60), (tmp_path / "daemon.log").read_text()
        send(0, 20)
        assert len(col.wait(f"lillith/{name}/out", 20, 60)) == 20
        write(5, 100.0)  # decimate outputs by 5, reject values above 100
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "config_reloaded" not in (tmp_path / "daemon.log").read_text():
            assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()
            time.sleep(0.05)
        send(20, 40)
        send(40, 41, value=500.0)
        dead = col.wait(f"lillith/{name}/deadletter", 1, 30)
        assert json.loads(dead[0])["reason"] == "out_of_bounds"
        outs = [json.loads(o) for o in col.wait(f"lillith/{name}/out", 24, 30)]
        time.sleep(0.5)  # nothing else may follow
        outs = [json.loads(o) for o in col.get(f"lillith/{name}/out")]
        assert [o["seq"] for o in outs[20:]] == [25, 30, 35, 40]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.loop_stop()
        col.close()


def test_qos1_nothing_lost_across_daemon_restart(mosquitto: int, tmp_path: Path) -> None:
    """10,000 QoS-1 frames; the daemon is stopped (SIGTERM) and restarted mid-stream.

    Every frame is processed at least once: the paho link acknowledges a
    message only after its result is published, and the persistent session
    makes the broker keep (and redeliver) the rest while the daemon is down.
    """
    n = 10_000
    uid = uuid.uuid4().hex[:8]
    name = f"r{uid}"
    env = {**os.environ, "LILLITH_MQTT__CLIENT_ID": f"daemon-{uid}",
           "LILLITH_AGENTS": json.dumps([{"name": name, "topics": [f"test/{uid}/#"]}]),
           "LILLITH_AGENT__FABRIC__SHAPE": "[2, 2, 2]"}
    col = Collector(mosquitto, f"lillith/{name}/#")

    def start(k: int) -> subprocess.Popen[bytes]:
        return start_daemon(tmp_path / f"daemon{k}.log", "--source",
                            f"mqtt://127.0.0.1:{mosquitto}", env=env)

    proc = start(1)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uid}")
    pub.max_queued_messages_set(0)
    pub.connect("127.0.0.1", mosquitto)
    pub.loop_start()
    proc2 = None
    try:
        assert col.wait(f"lillith/{name}/status", 1, 60)
        infos, feeder = start_feeder(pub, f"test/{uid}/x", n)
        assert len(col.wait(f"lillith/{name}/out", 2000, 120)) >= 2000
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / "daemon1.log").read_text()[-2000:]
        first = len({json.loads(o)["t"] for o in col.get(f"lillith/{name}/out")})
        assert first < n, "the first daemon processed everything: restart not exercised"
        time.sleep(1.0)  # publishing goes on while the daemon is down
        proc2 = start(2)
        feeder.join(120)
        for info in infos:
            info.wait_for_publish(60)
        deadline = time.monotonic() + 240
        seen: set[int] = set()
        while time.monotonic() < deadline:
            seen = {json.loads(o)["t"] for o in col.get(f"lillith/{name}/out")}
            if len(seen) == n:
                break
            time.sleep(0.2)
        outs = [json.loads(o)["t"] for o in col.get(f"lillith/{name}/out")]
        missing = sorted(set(range(n)) - seen)
        assert not missing, (len(missing), missing[:10], first)
        duplicates = len(outs) - len(seen)
        assert duplicates <= 200, duplicates  # QoS 1 redelivers what was in flight
        statuses = [json.loads(x)["state"] for x in col.get(f"lillith/{name}/status")]
        assert statuses[-1] == "online"  # the second daemon is up before we stop it
        proc2.send_signal(signal.SIGTERM)
        assert proc2.wait(60) == 0
    finally:
        for p in (proc, proc2):
            if p is not None and p.poll() is None:
                p.kill()
        pub.loop_stop()
        col.close()


def test_reconnects_after_broker_restart(tmp_path: Path) -> None:
    """The broker goes away mid-session: the daemon reconnects, resubscribes and serves."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    port = free_port()
    broker = start_mosquitto(port, tmp_path)
    uid = uuid.uuid4().hex[:8]
    name = f"k{uid}"
    env = {**os.environ, "LILLITH_MQTT__CLIENT_ID": f"daemon-{uid}",
           "LILLITH_MQTT__RECONNECT_MAX_S": "1.0",
           "LILLITH_AGENTS": json.dumps([{"name": name, "topics": [f"test/{uid}/#"]}])}
    log_path = tmp_path / "daemon.log"
    proc = start_daemon(log_path, "--source", f"mqtt://127.0.0.1:{port}", env=env)
    col = pub = None
    try:
        deadline = time.monotonic() + 60
        while log_path.read_text().count("broker_connected") < 1:
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        broker.terminate()
        broker.wait(30)
        time.sleep(1.5)
        assert proc.poll() is None, log_path.read_text()[-2000:]
        broker = start_mosquitto(port, tmp_path)
        deadline = time.monotonic() + 60
        while log_path.read_text().count("broker_connected") < 2:
            assert time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.1)
        col = Collector(port, f"lillith/{name}/#")
        time.sleep(0.5)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uid}")
        pub.connect("127.0.0.1", port)
        pub.loop_start()
        for i in range(20):
            pub.publish(f"test/{uid}/x", json.dumps({"t": i, "values": [float(i)]}), qos=1
                        ).wait_for_publish(5)
        assert len(col.wait(f"lillith/{name}/out", 20, 60)) == 20, log_path.read_text()[-2000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        if pub is not None:
            pub.loop_stop()
        if col is not None:
            col.close()
        broker.terminate()
        broker.wait(10)


def test_daemon_checkpoints_resumes_and_snapshots_on_command(mosquitto: int,
                                                            tmp_path: Path) -> None:
    from lillith.state import SnapshotStore

    uid = uuid.uuid4().hex[:8]
    name = f"c{uid}"
    prefix = f"lillith/{name}"
    state = tmp_path / "state"
    env = agent_env(uid, name, state)
    col = Collector(mosquitto, f"{prefix}/#")
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uid}")
    pub.connect("127.0.0.1", mosquitto)
    pub.loop_start()

    def events(log: Path) -> list[dict[str, object]]:
        return [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]

    def publish(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            pub.publish(f"test/{uid}/s", json.dumps({"t": i, "values": [np.sin(i / 4), 1.0]}),
                        qos=1).wait_for_publish(5)

    store = SnapshotStore(state / "agents" / name)
    procs = []
    try:
        proc = start_daemon(tmp_path / "d1.log", "--source", f"mqtt://127.0.0.1:{mosquitto}",
                            "--checkpoint-every", "50", env=env)
        procs.append(proc)
        assert col.wait(f"{prefix}/status", 1, 60), (tmp_path / "d1.log").read_text()
        publish(0, 120)
        assert len(col.wait(f"{prefix}/out", 120, 120)) == 120
        # the cadence (polled every 50 ms) has its turn before the command: a worker
        # that took all 120 frames between two polls would otherwise lose the race
        # to the command's snapshot of the same step, and rightly write none
        deadline = time.monotonic() + 30
        while not any('"snapshot_written"' in x and '"cadence"' in x
                      for x in (tmp_path / "d1.log").read_text().splitlines()):
            assert time.monotonic() < deadline, (tmp_path / "d1.log").read_text()
            time.sleep(0.05)
        pub.publish(f"{prefix}/cmd", json.dumps({"cmd": "checkpoint", "id": 1}), qos=1)
        reply = json.loads(col.wait(f"{prefix}/cmd/reply", 1, 30)[0])
        assert reply["ok"] and reply["step"] == 120, reply
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        ev = events(tmp_path / "d1.log")
        cadence = [e["step"] for e in ev if e["event"] == "snapshot_written"
                   and e["reason"] == "cadence"]
        assert cadence and all(isinstance(c, int) and c >= 50 for c in cadence), ev
        assert store.latest_name() == reply["snapshot"]
        # restart: the agent resumes where it stopped and goes on
        proc = start_daemon(tmp_path / "d2.log", "--source", f"mqtt://127.0.0.1:{mosquitto}",
                            env=env)
        procs.append(proc)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                e["event"] == "broker_connected" for e in events(tmp_path / "d2.log")):
            time.sleep(0.1)
        publish(120, 130)
        assert len(col.wait(f"{prefix}/out", 130, 60)) == 130
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        ev2 = events(tmp_path / "d2.log")
        assert [e["step"] for e in ev2 if e["event"] == "state_resumed"] == [120]
        shut = [e for e in ev2 if e["event"] == "snapshot_written"]
        assert shut[-1]["reason"] == "shutdown" and shut[-1]["step"] == 130
        assert store.load().info.step == 130
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        pub.loop_stop()
        col.close()


def test_daemon_evolves_on_schedule_and_on_command_and_saves_it(mosquitto: int,
                                                                tmp_path: Path) -> None:
    """Scheduled evolution rounds, the ``evolve`` and ``surgery`` commands, and a
    shutdown snapshot that holds their effects (taken although no frame followed)."""
    from lillith.state import SnapshotStore

    uid = uuid.uuid4().hex[:8]
    name = f"e{uid}"
    prefix = f"lillith/{name}"
    state = tmp_path / "state"
    env = agent_env(uid, name, state, LILLITH_AGENT=json.dumps({
        "fabric": {"shape": [4, 4, 4], "n_features": 16}, "som": {"map_shape": [6, 6]},
        "predictor": {"batch_size": 8},
        "evolution": {"every": 40, "warmup": 40, "fabric": {"prune_rate": 0.2}}}))
    col = Collector(mosquitto, f"{prefix}/#")
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uid}")
    pub.connect("127.0.0.1", mosquitto)
    pub.loop_start()
    log = tmp_path / "d.log"
    proc = start_daemon(log, "--source", f"mqtt://127.0.0.1:{mosquitto}", env=env)

    def command(cmd: dict[str, object], n: int) -> dict[str, object]:
        pub.publish(f"{prefix}/cmd", json.dumps(cmd), qos=1)
        replies = col.wait(f"{prefix}/cmd/reply", n, 30)
        assert len(replies) >= n, log.read_text()
        out: dict[str, object] = json.loads(replies[n - 1])
        return out

    try:
        assert col.wait(f"{prefix}/status", 1, 60), log.read_text()
        for i in range(200):
            pub.publish(f"test/{uid}/s", json.dumps({"t": i, "values": [np.sin(i / 4), 1.0]}),
                        qos=1).wait_for_publish(5)
        assert len(col.wait(f"{prefix}/out", 200, 120)) == 200
        deadline = time.monotonic() + 30
        ev: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            ev = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
            if sum(e["event"] == "evolution_round" for e in ev) >= 4:
                break
            time.sleep(0.1)
        rounds = [e for e in ev if e["event"] == "evolution_round"]
        assert len(rounds) >= 4 and all(e["reason"] == "schedule" for e in rounds), ev
        assert all(int(e["neurons_born"]) > 0 for e in rounds)  # type: ignore[call-overload]
        reply = command({"cmd": "evolve", "id": 1}, 1)
        assert reply["ok"] and reply["report"]["step"] == 200, reply  # type: ignore[index]
        sig = [0.5] * 32
        reply = command({"cmd": "surgery", "op": "insert", "tile": 3, "signature": sig,
                         "tag": "test"}, 2)
        assert reply["ok"] and reply["operation"]["op"] == "insert", reply  # type: ignore[index]
        reply = command({"cmd": "surgery", "op": "freeze", "tile": 5}, 3)
        assert reply["ok"], reply
        reply = command({"cmd": "surgery", "op": "explode", "tile": 5}, 4)
        assert not reply["ok"] and "op" in str(reply["error"]), reply
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        snap = SnapshotStore(state / "agents" / name).load()
        assert snap.info.step == 200
        s = snap.state
        frozen = np.asarray(s["tiles/frozen_mask"], dtype=bool)
        assert frozen[3] and frozen[5]
        births = np.asarray(s["evo/births"])
        # the commanded round (at step 200) is in the shutdown snapshot
        assert births.shape[0] > 0 and int(births[:, 5].max()) == 200
        assert int(np.asarray(s["evo/counters"])[1]) == len(rounds) + 1
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.loop_stop()
        col.close()


def test_one_topic_per_channel_assembled_at_a_tick(mosquitto: int, tmp_path: Path) -> None:
    """Channels on their own topics: frames of the latest values at each tick, a
    silent channel held and marked stale, bad values and unknown channels dead-
    lettered, no frames once every channel is silent."""
    uid = uuid.uuid4().hex[:8]
    name = f"c{uid}"
    agents = [{"name": name, "topics": [f"test/{uid}/+"], "channels": ["temp", "rpm"],
               "tick_s": 0.05, "stale_s": 1.0}]
    env = {**agent_env(uid, name, tmp_path / "state"), "LILLITH_AGENTS": json.dumps(agents)}
    col = Collector(mosquitto, f"lillith/{name}/#")
    proc = start_daemon(tmp_path / "daemon.log", "--source", f"mqtt://127.0.0.1:{mosquitto}",
                        env=env)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uid}")
    pub.connect("127.0.0.1", mosquitto)
    pub.loop_start()
    out = f"lillith/{name}/out"

    def send(channel: str, payload: str) -> None:
        pub.publish(f"test/{uid}/{channel}", payload, qos=1).wait_for_publish(10)

    try:
        assert col.wait(f"lillith/{name}/status", 1, 60), (tmp_path / "daemon.log").read_text()
        send("temp", "20.0")
        time.sleep(0.3)
        assert col.get(out) == []  # rpm never seen: no partial frame
        send("rpm", '{"values": [900]}')
        first = [json.loads(o) for o in col.wait(out, 5, 30)]
        assert len(first) >= 5, (tmp_path / "daemon.log").read_text()[-2000:]
        assert all(o["values"] == [20.0, 900.0] and o["stale"] == [] for o in first[:5]), first
        send("temp", "nope")
        send("pressure", "1.5")
        dead = [json.loads(d) for d in col.wait(f"lillith/{name}/deadletter", 2, 30)]
        assert {(d["reason"], d["topic"].rsplit("/", 1)[1]) for d in dead} == {
            ("malformed_json", "temp"), ("unknown_channel", "pressure")}
        for i in range(30):  # rpm goes quiet, temp goes on
            send("temp", str(21.0 + i))
            time.sleep(0.05)
        held = [json.loads(o) for o in col.get(out)]
        late = held[-5:]
        assert all(o["stale"] == ["rpm"] and o["values"][1] == 900.0 for o in late), late
        assert late[-1]["values"][0] >= 45.0  # the newest temp values
        ticks = [o["t"] for o in held]
        assert all(b > a for a, b in itertools.pairwise(ticks))  # stream time
        time.sleep(1.5)  # both silent past stale_s: the ticks stop producing frames
        quiet = len(col.get(out))
        time.sleep(0.5)
        assert len(col.get(out)) == quiet
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        status = json.loads(col.get(f"lillith/{name}/status")[-1])
        assert status["state"] == "offline" and status["channel_updates"] == 32
        assert status["frames_out"] == quiet and status["rejects"] == {
            "malformed_json": 1, "unknown_channel": 1}
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.loop_stop()
        col.close()


def _slow_agent_daemon(mosquitto: int, tmp_path: Path, policy: str
                       ) -> tuple[str, str, Collector, subprocess.Popen[bytes], mqtt.Client]:
    """A daemon whose one agent is slow (a larger fabric, 6 substeps) behind a queue
    of 4 under ``policy``; a collector of its topics and a connected publisher."""
    uid = uuid.uuid4().hex[:8]
    name = f"q{uid}"
    agents = [{"name": name, "topics": [f"test/{uid}/#"], "queue_size": 4, "policy": policy}]
    env = {**agent_env(uid, name, tmp_path / "state"), "LILLITH_AGENTS": json.dumps(agents),
           "LILLITH_AGENT__FABRIC__SHAPE": "[9, 9, 32]", "LILLITH_AGENT__FABRIC__SUBSTEPS": "6"}
    col = Collector(mosquitto, f"lillith/{name}/#")
    proc = start_daemon(tmp_path / "daemon.log", "--source", f"mqtt://127.0.0.1:{mosquitto}",
                        env=env)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uid}")
    pub.max_inflight_messages_set(0)
    pub.connect("127.0.0.1", mosquitto)
    pub.loop_start()
    return uid, name, col, proc, pub


@pytest.mark.parametrize("policy", ["drop_oldest", "backpressure"])
def test_slow_agent_with_a_full_queue(mosquitto: int, tmp_path: Path, policy: str) -> None:
    """A burst far faster than a slow agent, a queue of 4: ``drop_oldest`` loses
    the oldest frames (counted, their messages acknowledged) and the newest come
    out; ``backpressure`` loses nothing (the broker holds what the daemon does not
    take). Either way the daemon keeps serving and stops cleanly."""
    uid, name, col, proc, pub = _slow_agent_daemon(mosquitto, tmp_path, policy)
    n = 300
    out = f"lillith/{name}/out"
    try:
        assert col.wait(f"lillith/{name}/status", 1, 60), (tmp_path / "daemon.log").read_text()
        infos = [pub.publish(f"test/{uid}/x", json.dumps({"t": i, "values": [float(i % 7)]}),
                             qos=1) for i in range(n)]
        for info in infos:
            info.wait_for_publish(30)
        if policy == "backpressure":
            ts = [json.loads(o)["t"] for o in col.wait(out, n, 180)]
            assert ts == list(range(n))  # all of them, in order
        else:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # the last frame always survives
                ts = [json.loads(o)["t"] for o in col.get(out)]
                if ts and ts[-1] == n - 1:
                    break
                time.sleep(0.2)
            assert ts[-1] == n - 1 and ts == sorted(ts) and len(ts) < n
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        final = json.loads(col.get(f"lillith/{name}/status")[-1])
        assert final["state"] == "offline" and final["frames_out"] == len(ts)
        if policy == "backpressure":
            assert final["dropped"] == 0
        else:  # every frame is either out or counted as dropped
            assert final["dropped"] == n - len(ts) > 0
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.loop_stop()
        col.close()


def test_stop_while_the_intake_waits_for_room(mosquitto: int, tmp_path: Path) -> None:
    """SIGTERM while a slow agent's queue is full under ``backpressure``: the frame
    the intake was holding is neither counted nor acknowledged (the broker keeps
    it), so the final status reconciles: every frame counted in came out."""
    uid, name, col, proc, pub = _slow_agent_daemon(mosquitto, tmp_path, "backpressure")
    n = 300
    out = f"lillith/{name}/out"
    try:
        assert col.wait(f"lillith/{name}/status", 1, 60), (tmp_path / "daemon.log").read_text()
        for i in range(n):
            pub.publish(f"test/{uid}/x", json.dumps({"t": i, "values": [float(i % 7)]}), qos=1)
        assert col.wait(out, 20, 120)  # the queue is full and the intake waits for room
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        final = json.loads(col.get(f"lillith/{name}/status")[-1])
        ts = [json.loads(o)["t"] for o in col.get(out)]
        assert final["state"] == "offline" and ts == list(range(len(ts))) and len(ts) < n
        assert final["frames_in"] == final["frames_out"] == len(ts), final
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.loop_stop()
        col.close()


def test_alarms_are_published_counted_and_their_edges_never_skipped(
        mosquitto: int, tmp_path: Path) -> None:
    """A spike beyond every value seen is an alarm (reason ``range``) on the
    out topic, even when ``output_every`` skips its frame, and Prometheus
    counts its onset by reason."""
    uid = uuid.uuid4().hex[:8]
    name = f"a{uid}"
    prefix = f"lillith/{name}"
    metrics_port = free_port()
    agents = [{"name": name, "topics": [f"test/{uid}/#"], "output_every": 7}]
    env = agent_env(uid, name, tmp_path / "state", LILLITH_AGENTS=json.dumps(agents),
                    LILLITH_METRICS_PORT=str(metrics_port))
    col = Collector(mosquitto, f"{prefix}/#")
    proc = start_daemon(tmp_path / "d.log", "--source", f"mqtt://127.0.0.1:{mosquitto}",
                        env=env)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uid}")
    pub.connect("127.0.0.1", mosquitto)
    pub.loop_start()
    try:
        assert col.wait(f"{prefix}/status", 1, 60), (tmp_path / "d.log").read_text()[-3000:]
        rng = np.random.default_rng(1)
        n, spike = 400, 302  # (302 % 7 != 1: output_every alone would skip it)
        for i in range(n):
            v = 100.0 if i == spike else float(rng.standard_normal())
            pub.publish(f"test/{uid}/x", json.dumps({"t": 1.7e9 + 60 * i, "values": [v]}),
                        qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 120
        rows: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            rows = [json.loads(o) for o in col.get(f"{prefix}/out")]
            if rows and rows[-1]["seq"] >= n - 6:
                break
            time.sleep(0.1)
        by_seq = {r["seq"]: r for r in rows}
        hit = by_seq[spike + 1]
        assert hit["alarm"] == 1 and hit["alarm_reason"] == "range", hit
        assert all(set(r) >= {"alarm", "alarm_reason"} for r in rows)
        # the frame the alarm went off is published too
        after = [r for r in rows if r["seq"] > spike + 1]
        assert after and after[0]["alarm"] == 0 and after[0]["alarm_reason"] == ""
        assert all(r["alarm_reason"] == "" for r in rows if not r["alarm"])
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                        timeout=10).read().decode()
        onsets = re.findall(rf'lillith_alarms_total{{agent="{name}",reason="(\w+)"}} (\S+)',
                            scrape)
        assert ("range", "1.0") in onsets, scrape
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
            pub.loop_stop()
            col.close()
