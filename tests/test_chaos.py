"""Chaos suite: the daemon under faults, against a real mosquitto with persistence.

Each scenario streams QoS-1 frames ``{"t": i, "values": [...]}`` through a
private mosquitto (persistence on, ``max_queued_messages 0``) into ``lillith
run --source mqtt://...`` and injects one kind of fault: the broker restarted
mid-stream, the daemon SIGKILLed and restarted, its state directory on a
small tmpfs filled and freed, its newest snapshot corrupted, poison frames
among 5,000 valid ones. Every scenario asserts that no valid frame is lost
(each ``t`` comes out on ``lillith/<agent>/out`` at least once), what the
retained status says at each point (``online``; ``offline`` with ``clean:
false`` from the will after a kill; ``offline`` with ``clean: true`` after
SIGTERM), and that ``lillith inspect --verify`` passes on the state.

Run with ``make chaos`` (``-m chaos``; excluded from ``make test``). Each
scenario prints one ``CHAOS {...}`` line of figures (docs/operations.md,
"What it survives").
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from .conftest import MOSQUITTO, free_port, start_mosquitto
from .test_daemon_broker_restart import SessionCollector
from .test_daemon_mqtt import agent_env, start_daemon

pytestmark = [pytest.mark.chaos,
              pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")]


def _events(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
    return out


class Chaos:
    """A private persistent broker, a persistent collector and publisher, and
    the daemons of one scenario (their logs under ``tmp``)."""

    def __init__(self, tmp: Path, state: Path | None = None, **env: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        (tmp / "broker").mkdir()
        self.broker = start_mosquitto(self.port, tmp / "broker", persistent=True)
        self.uid = uuid.uuid4().hex[:8]
        self.name = f"x{self.uid}"
        self.prefix = f"lillith/{self.name}"
        self.state = state or tmp / "state"
        self.store = self.state / "agents" / self.name
        self.env = agent_env(self.uid, self.name, self.state,
                             LILLITH_AGENT__FABRIC__SHAPE="[2, 2, 2]",
                             LILLITH_MQTT__RECONNECT_MAX_S="1.0", **env)
        self.col = SessionCollector(self.port, f"{self.prefix}/#", f"collector-{self.uid}")
        assert self.col.subscribed.wait(30)
        self.pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{self.uid}",
                               clean_session=False)
        self.pub.max_queued_messages_set(0)
        self.pub.reconnect_delay_set(min_delay=0.1, max_delay=1)  # type: ignore[arg-type]
        self.pub.connect("127.0.0.1", self.port)
        self.pub.loop_start()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.infos: list[mqtt.MQTTMessageInfo] = []

    # ---------------------------------------------------------------- processes
    @property
    def log(self) -> Path:
        return self.tmp / f"daemon{len(self.procs)}.log"

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """Start a daemon and wait until it is connected (its status online)."""
        n_online = self.statuses().count("online")
        proc = start_daemon(self.tmp / f"daemon{len(self.procs) + 1}.log", "--source",
                            f"mqtt://127.0.0.1:{self.port}", *args, env=self.env)
        self.procs.append(proc)
        deadline = time.monotonic() + 120
        while self.statuses().count("online") <= n_online:
            assert proc.poll() is None and time.monotonic() < deadline, self.tail()
            time.sleep(0.05)
        return proc

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""

    def events(self, kind: str, log: Path | None = None) -> list[dict[str, Any]]:
        return [e for e in _events(log or self.log) if e.get("event") == kind]

    def restart_broker(self, down_s: float = 1.0) -> None:
        self.broker.terminate()
        self.broker.wait(30)
        time.sleep(down_s)
        self.broker = start_mosquitto(self.port, self.tmp / "broker", persistent=True)

    def verify(self) -> int:
        r = subprocess.run([sys.executable, "-m", "lillith.runtime.cli", "inspect",
                            str(self.state), "--verify"], capture_output=True, text=True,
                           timeout=300, check=False)
        self.last_verify = r.stdout + r.stderr
        return r.returncode

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
        self.pub.loop_stop()
        self.col.close()
        self.broker.terminate()
        self.broker.wait(10)

    # ---------------------------------------------------------------- traffic
    def feed(self, payloads: list[tuple[str, bytes]], rate: float = 1000.0
             ) -> threading.Thread:
        """Publish (topic, payload) pairs at QoS 1, about ``rate`` a second, from a thread."""
        def run() -> None:
            for i, (topic, payload) in enumerate(payloads):
                self.infos.append(self.pub.publish(topic, payload, qos=1))
                if i % 50 == 49:
                    time.sleep(50 / rate)

        th = threading.Thread(target=run, daemon=True)
        th.start()
        return th

    def frames(self, ts: range) -> list[tuple[str, bytes]]:
        return [(f"test/{self.uid}/x", json.dumps(
            {"t": t, "values": [float(np.sin(t / 20)), float(t % 7)]}).encode()) for t in ts]

    def outputs(self) -> list[int]:
        return [int(json.loads(o)["t"]) for o in self.col.get(f"{self.prefix}/out")]

    def wait_outputs(self, want: int, timeout: float) -> set[int]:
        """Wait until ``want`` distinct times came out (or nothing new for 30 s)."""
        deadline = time.monotonic() + timeout
        seen: set[int] = set()
        progress = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - progress < 30:
            now = set(self.outputs())
            if len(now) > len(seen):
                progress = time.monotonic()
            seen = now
            if len(seen) >= want:
                break
            time.sleep(0.1)
        return seen

    def statuses(self) -> list[str]:
        return [json.loads(s).get("state", "?") for s in self.col.get(f"{self.prefix}/status")]

    def retained(self) -> dict[str, Any]:
        """The retained status as a new subscriber gets it now."""
        got: list[bytes] = []
        done = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"look-{uuid.uuid4().hex[:6]}")

        def on_message(client: Any, userdata: Any, m: mqtt.MQTTMessage) -> None:
            if m.retain:
                got.append(bytes(m.payload))
                done.set()

        c.on_message = on_message
        c.connect("127.0.0.1", self.port)
        c.subscribe(f"{self.prefix}/status", qos=1)
        c.loop_start()
        try:
            assert done.wait(10), "no retained status"
        finally:
            c.loop_stop()
            c.disconnect()
        out: dict[str, Any] = json.loads(got[0])
        return out

    def wait_retained(self, state: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            r = self.retained()
            if r["state"] == state or time.monotonic() > deadline:
                assert r["state"] == state, (r, self.tail())
                return r
            time.sleep(0.2)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, self.tail()
        final = self.wait_retained("offline")
        assert final["clean"] is True and final["frames_in"] == final["frames_out"], final

    def figures(self, scenario: str, n: int, seen: set[int], **extra: Any) -> dict[str, Any]:
        ts = self.outputs()
        out = {"scenario": scenario, "valid_frames": n, "lost": n - len(seen & set(range(n))),
               "outputs": len(ts),
               "duplicates": sum(k - 1 for k in Counter(ts).values()), **extra}
        print("CHAOS " + json.dumps(out))
        return out


@pytest.fixture
def chaos(tmp_path: Path) -> Any:
    made: list[Chaos] = []

    def make(**kw: Any) -> Chaos:
        c = Chaos(tmp_path, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def test_broker_restart_mid_stream(chaos: Any) -> None:
    n = 5000
    c: Chaos = chaos(LILLITH_STATE__CHECKPOINT_EVERY_FRAMES="500")
    proc = c.start()
    feeder = c.feed(c.frames(range(n)))
    assert len(c.wait_outputs(1500, 120)) >= 1500, c.tail()
    t0 = time.monotonic()
    before = len(c.outputs())
    c.restart_broker(down_s=1.0)
    while len(c.outputs()) <= before + 10:  # frames flow again
        assert time.monotonic() - t0 < 120 and proc.poll() is None, c.tail()
        time.sleep(0.05)
    recovery = time.monotonic() - t0
    feeder.join(120)
    seen = c.wait_outputs(n, 240)
    assert c.wait_retained("online")["state"] == "online"
    assert len(c.events("broker_connection_lost")) >= 1 and len(c.events("broker_connected")) >= 2
    c.stop(proc)
    assert c.verify() == 0, c.last_verify
    f = c.figures("broker restart", n, seen, broker_down_s=1.0,
                  frames_flowing_again_s=round(recovery, 1))
    assert f["lost"] == 0, f


def test_daemon_sigkill_and_restart(chaos: Any) -> None:
    n = 5000
    c: Chaos = chaos(LILLITH_STATE__CHECKPOINT_EVERY_FRAMES="300")
    proc = c.start()
    feeder = c.feed(c.frames(range(n)), rate=800)
    wills = 0
    restart_s = []
    for at in (1200, 3000):
        assert len(c.wait_outputs(at, 180)) >= at, c.tail()
        deadline = time.monotonic() + 60  # (killed after this daemon's first snapshot)
        while not c.events("snapshot_written"):
            assert time.monotonic() < deadline, c.tail()
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        will = c.wait_retained("offline")  # the broker's last will: not a clean stop
        assert will == {"state": "offline", "clean": False}, will
        wills += 1
        assert c.verify() == 0, c.last_verify
        t0 = time.monotonic()
        proc = c.start()
        restart_s.append(round(time.monotonic() - t0, 1))
        assert c.events("state_resumed"), c.tail()
    feeder.join(180)
    seen = c.wait_outputs(n, 300)
    assert c.retained()["state"] == "online"
    c.stop(proc)
    assert c.verify() == 0, c.last_verify
    f = c.figures("daemon SIGKILL and restart", n, seen, kills=2, wills_seen=wills,
                  restart_to_online_s=restart_s)
    assert f["lost"] == 0, f


def test_state_on_a_full_tmpfs_filled_and_freed(chaos: Any, tmp_path: Path) -> None:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mnt)],
                       capture_output=True, check=False)
    if r.returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        n = 4000
        c: Chaos = chaos(state=mnt / "state", LILLITH_STATE__CHECKPOINT_EVERY_FRAMES="200",
                         LILLITH_STATE__RETRY_MAX_S="4", LILLITH_STATE__KEEP_LAST="2")
        proc = c.start()
        frames = c.frames(range(n))
        th = c.feed(frames[:1000])
        th.join(60)
        assert len(c.wait_outputs(1000, 120)) >= 1000
        deadline = time.monotonic() + 30
        while not c.events("snapshot_written"):
            assert time.monotonic() < deadline, c.tail()
            time.sleep(0.1)
        size = max(int(e["bytes"]) for e in c.events("snapshot_written"))
        # fill it: less room than a snapshot and its margin
        st = os.statvfs(mnt)
        filler = mnt / "filler"
        filler.write_bytes(b"\0" * max(st.f_bavail * st.f_frsize - size // 2, 0))
        t_full = time.monotonic()
        th = c.feed(frames[1000:3000])
        th.join(60)
        assert len(c.wait_outputs(3000, 120)) >= 3000, c.tail()
        time.sleep(3.0)  # idle on a full disk: no storm
        full_s = time.monotonic() - t_full
        failed = c.events("snapshot_failed")
        assert 1 <= len(failed) <= 2, failed  # one line when failing starts (or changes)
        assert failed[0]["needed_bytes"] > failed[0]["free_bytes"], failed[0]
        assert c.verify() == 0, c.last_verify  # the older snapshots are intact
        filler.unlink()
        t_free = time.monotonic()
        th = c.feed(frames[3000:])
        deadline = time.monotonic() + 60
        while not c.events("snapshot_recovered"):
            assert time.monotonic() < deadline, c.tail()
            time.sleep(0.1)
        recovered = time.monotonic() - t_free
        th.join(60)
        seen = c.wait_outputs(n, 120)
        assert c.retained()["state"] == "online"
        c.stop(proc)
        assert c.events("snapshot_written")[-1]["step"] == n  # every frame saved
        assert c.verify() == 0, c.last_verify
        f = c.figures("state tmpfs filled and freed", n, seen,
                      tmpfs_bytes=12 << 20, full_for_s=round(full_s, 1),
                      snapshot_failed_lines=len(failed),
                      recovered_after_freeing_s=round(recovered, 1))
        assert f["lost"] == 0, f
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_corrupted_newest_snapshot(chaos: Any) -> None:
    n = 3000
    c: Chaos = chaos(LILLITH_STATE__CHECKPOINT_EVERY_FRAMES="250", LILLITH_STATE__KEEP_LAST="2")
    proc = c.start()
    # two snapshots for certain, whatever the host's speed: one written by the
    # cadence within the first 750 frames, then one at step 1500 (cadence or shutdown)
    c.feed(c.frames(range(750))).join(60)
    assert len(c.wait_outputs(750, 120)) >= 750
    deadline = time.monotonic() + 60
    while not c.events("snapshot_written") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert c.events("snapshot_written"), c.tail()
    c.feed(c.frames(range(750, 1500))).join(60)
    assert len(c.wait_outputs(1500, 120)) >= 1500
    c.stop(proc)
    latest = (c.store / "LATEST").read_text().strip()
    previous = sorted(p.name for p in (c.store / "snapshots").iterdir()
                      if not p.name.startswith(".") and p.name != latest)[-1]
    # flip bytes in the middle of the largest file of the newest snapshot
    big = max((p for p in (c.store / "snapshots" / latest).rglob("*") if p.is_file()),
              key=lambda p: p.stat().st_size)
    data = bytearray(big.read_bytes())
    for k in range(8):
        data[len(data) // 2 + k] ^= 0xFF
    big.write_bytes(bytes(data))
    assert c.verify() == 1, c.last_verify  # detected
    proc = c.start()
    skipped = c.events("snapshot_skipped")
    assert [s["name"] for s in skipped] == [latest], c.tail()
    assert [e["step"] for e in c.events("state_resumed")] == [int(previous[:12])]
    c.feed(c.frames(range(1500, n))).join(60)
    seen = c.wait_outputs(n, 180)
    c.stop(proc)
    assert c.verify() == 0, c.last_verify  # retention has removed the broken one
    f = c.figures("corrupted newest snapshot", n, seen, resumed_from_step=int(previous[:12]),
                  corrupted_step=int(latest[:12]))
    assert f["lost"] == 0, f


def test_poison_among_5000_valid_frames(chaos: Any) -> None:
    n = 5000
    c: Chaos = chaos(LILLITH_STATE__CHECKPOINT_EVERY_FRAMES="500")
    proc = c.start()
    topic = f"test/{c.uid}/x"
    deep: Any = 1.0
    for _ in range(100):
        deep = [deep]
    poison: list[tuple[bytes, str]] = [
        (b'{"t": 4e22, "values": [1.0, 2.0]}', "time_out_of_range"),
        (b'{"t": 1e300, "values": [1.0, 2.0]}', "time_out_of_range"),
        (b'{"t": NaN, "values": [1.0, 2.0]}', "bad_time"),
        (b'{"t": "noon", "values": [1.0, 2.0]}', "bad_time"),
        (json.dumps({"values": [1.0] * 10_000}).encode(), "too_wide"),
        (json.dumps({"values": [1.0, 2.0], "meta": deep}).encode(), "too_deep"),
        (b'{"values": [1.0, NaN]}', "non_finite"),
        (b'{"values": [1.0, 1e300]}', "out_of_bounds"),
        (b"\xff\xfe junk", "malformed_json"),
        (b'{"values": [' + b"1," * 600_000 + b"1]}", "oversized"),
        (b'{"values": [1.0, 2.0, 3.0]}', "wrong_length"),
    ]
    rng = np.random.default_rng(19)
    where = sorted(rng.choice(np.arange(50, n), size=len(poison), replace=False).tolist())
    payloads = c.frames(range(n))
    for at, (p, _) in reversed(list(zip(where, poison, strict=True))):
        payloads.insert(at, (topic, p))
    cmds = [json.dumps({"cmd": "status", "pad": "x" * (4 << 20)}).encode(),
            json.dumps({"cmd": "surgery", "op": "insert", "tile": 1,
                        "signature": [1e30] * 32}).encode(), b"not json"]
    payloads[2500:2500] = [(f"{c.prefix}/cmd", x) for x in cmds]
    c.feed(payloads).join(120)
    seen = c.wait_outputs(n, 240)
    dead = [json.loads(d) for d in c.col.wait(f"{c.prefix}/deadletter", len(poison), 30)]
    replies = [json.loads(r) for r in c.col.wait(f"{c.prefix}/cmd/reply", len(cmds), 30)]
    assert proc.poll() is None, c.tail()
    assert Counter(d["reason"] for d in dead) == Counter(r for _, r in poison), Counter(
        d["reason"] for d in dead)
    assert [r["ok"] for r in replies] == [False] * len(cmds), replies
    status = c.retained()
    assert status["state"] == "online"
    c.stop(proc)
    steps = [e["step"] for e in c.events("snapshot_written")]
    assert steps and steps[-1] == n, steps  # snapshots went on after every poison
    assert c.verify() == 0, c.last_verify
    f = c.figures("poison among 5,000 valid frames", n, seen, poison_frames=len(poison),
                  dead_letters=len(dead), bad_commands=len(cmds),
                  reasons=sorted({r for _, r in poison}))
    assert f["lost"] == 0 and f["duplicates"] == 0, f
    assert not math.isnan(float(status["max_loop_lag_ms"]))
