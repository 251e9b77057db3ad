"""Agents as Ray actors, on a local Ray cluster (2 CPUs, no dashboard) and a real
mosquitto: outputs bit for bit those of one process, an actor killed mid-stream
comes back and loses nothing (restarted by Ray, or replaced by the daemon once
Ray gives up on it), and ``lillith run --cluster`` end to end.

Marked ``cluster`` (out of the default suite): ``make cluster`` runs them, and
CI does (``.ci/run``). The workload and the daemon runs are those of
``lillith bench cluster`` (:mod:`lillith.bench.bench_cluster`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from prometheus_client import generate_latest

from lillith.bench.bench_cluster import Outputs, Run, Workload, run_daemon
from lillith.runtime.config import ClusterSettings
from lillith.state.snapshot import SnapshotStore

from .conftest import MOSQUITTO, free_port, start_mosquitto

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.cluster

FRAMES = 20_000
AGENTS = 8


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A broker without an in-flight cap (frames are acknowledged after their output:
    the cap would bound the micro-batches)."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    p = free_port()
    proc = start_mosquitto(p, tmp_path_factory.mktemp("broker"), max_inflight=0)
    yield p
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def workload() -> Workload:
    return Workload(uuid.uuid4().hex[:6], agents=AGENTS, frames=FRAMES)


@pytest.fixture(scope="module")
def single(port: int, workload: Workload, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The single-process daemon (worker threads) on the workload: the reference."""
    run = run_daemon(port, workload, tmp_path_factory.mktemp("single"), cluster=None)
    assert run.lost(workload) == 0
    return run


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    ray.init(num_cpus=2, include_dashboard=False, namespace="lillith-test",
             configure_logging=False)
    yield ray
    ray.shutdown()


def scrape(run: Run) -> str:
    return str(generate_latest(run.cluster.metrics.registry).decode())


def assert_identical(run: Run, single: Run, w: Workload) -> None:
    assert run.lost(w) == 0
    for k in range(w.agents):
        name = w.name(k)
        got, want = run.outputs[name], single.outputs[name]
        assert len(got) == len(want) == w.per_agent(k), name
        diff = [i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
        assert not diff, (name, len(diff), got[diff[0]], want[diff[0]])


def test_eight_agents_over_four_actors_publish_what_one_process_does(
        port: int, workload: Workload, single: Run, local_ray: Any, tmp_path: Path) -> None:
    run = run_daemon(port, workload, tmp_path, checkpoint_every=1000,
                     cluster=ClusterSettings(actors=4, num_cpus=0.5, namespace="lillith-test"))
    assert_identical(run, single, workload)
    rc = run.cluster
    # sharded round robin: two agents per actor, each agent's frames in order
    assert sorted(rc.placement.values()) == sorted([f"{rc.client_id}/{i}" for i in range(4)] * 2)
    text = scrape(run)
    for k in range(workload.agents):
        name = workload.name(k)
        w = rc.workers[name]
        assert w.losses == 0 and w.processed == workload.per_agent(k)
        assert (f'lillith_actor_frames_total{{actor="{rc.placement[name]}",agent="{name}"}} '
                f'{float(workload.per_agent(k))}') in text
        # the actor snapshotted its agent into the store, the last one at the drain
        store = SnapshotStore(str(tmp_path / "agents" / name))
        assert store.load().info.step == workload.per_agent(k)
        assert all(s.ok for s in store.snapshots(verify=True))
    assert 'lillith_actor_losses_total' in text and "lillith_actor_call_seconds_count" in text


def test_killed_actor_comes_back_from_its_snapshot_and_nothing_is_lost(
        port: int, workload: Workload, single: Run, local_ray: Any, tmp_path: Path) -> None:
    victim = workload.name(0)
    killed: dict[str, int] = {}

    def kill(out: Outputs, rc: Any) -> None:
        if not killed and out.count >= FRAMES // 3:
            pid = rc.workers[victim].pid
            killed.update(pid=pid, at=out.count)
            os.kill(pid, signal.SIGKILL)

    run = run_daemon(port, workload, tmp_path, checkpoint_every=500, during=kill,
                     cluster=ClusterSettings(actors=2, num_cpus=1.0, namespace="lillith-test"))
    assert killed and killed["at"] < FRAMES  # mid-stream
    rc = run.cluster
    # every frame published once, and the same outputs as one process: the agent came
    # back at its snapshot's step and was brought to where it was by the frames since
    assert_identical(run, single, workload)
    w = rc.workers[victim]
    assert w.losses == 1 and w.pid != killed["pid"]
    assert w.resumed and w.resumed[0] > 0 and w.replayed > 0
    text = scrape(run)
    actor = rc.placement[victim]
    assert f'lillith_actor_losses_total{{actor="{actor}",agent="{victim}"}} 1.0' in text
    for k in range(workload.agents):  # the shard's other agents came back too; the
        name = workload.name(k)        # other actor's agents never noticed
        assert rc.workers[name].losses == (1 if rc.placement[name] == actor else 0), name


def test_actor_ray_gives_up_on_is_replaced_and_nothing_is_lost(
        port: int, workload: Workload, single: Run, local_ray: Any, tmp_path: Path) -> None:
    """With no restart left (``max_restarts`` 0), a killed actor is dead for Ray:
    the daemon creates a new one in its place, twice, and every frame is
    published once with the outputs of one process."""
    victim = workload.name(1)
    killed: list[int] = []
    at: list[int] = []  # the victim's frames processed at each kill

    def kill(out: Outputs, rc: Any) -> None:
        w = rc.workers.get(victim)
        if w is None or w.pid is None or len(killed) == 2:
            return
        # the first a quarter in; the second once the victim is back (replayed) and
        # has processed new frames in the replacement
        due = (out.count >= FRAMES // 4 if not killed
               else w.replayed > 0 and w.pid not in killed and w.processed >= at[0] + 300)
        if due:
            killed.append(w.pid)
            at.append(w.processed)
            os.kill(w.pid, signal.SIGKILL)

    run = run_daemon(port, workload, tmp_path, checkpoint_every=500, during=kill,
                     cluster=ClusterSettings(actors=2, num_cpus=1.0, max_restarts=0,
                                             namespace="lillith-test"))
    assert len(killed) == 2
    rc = run.cluster
    assert_identical(run, single, workload)
    actor = rc.placement[victim]
    assert rc.replacements == {actor: 2}
    w = rc.workers[victim]
    assert w.losses == 2 and w.pid not in killed and len(w.resumed) >= 2
    assert f'lillith_actor_replacements_total{{actor="{actor}"}} 2.0' in scrape(run)
    for k in range(workload.agents):  # (the shard's others may still have been recovering
        name = workload.name(k)        # from the first loss at the second)
        losses = rc.workers[name].losses
        assert losses in ((1, 2) if rc.placement[name] == actor else (0,)), (name, losses)


def test_lillith_run_cluster_joins_a_ray_cluster_and_stops_in_order(
        port: int, local_ray: Any, tmp_path: Path) -> None:
    uid = uuid.uuid4().hex[:8]
    w = Workload(uid, agents=2)
    names = [w.name(k) for k in range(2)]
    gcs = local_ray.get_runtime_context().gcs_address
    env = {**os.environ, "LILLITH_MQTT__CLIENT_ID": f"daemon-{uid}",
           "LILLITH_AGENTS": json.dumps([{"name": n, "topics": [f"test/{uid}/{k}"]}
                                         for k, n in enumerate(names)]),
           "LILLITH_LOG__FORMAT": "json", "LILLITH_STATE__DIR": str(tmp_path / "state"),
           "LILLITH_CLUSTER": json.dumps({"num_cpus": 0.25, "namespace": "lillith-cli"})}
    log = tmp_path / "daemon.log"
    col = Outputs(port, w)
    proc = subprocess.Popen([sys.executable, "-m", "lillith.runtime.cli", "run", "--cluster",
                             f"ray://{gcs}", "--source", f"mqtt://127.0.0.1:{port}"],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    replies: list[bytes] = []
    statuses: list[bytes] = []
    spy = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"spy-{uid}")
    spy.on_message = lambda c, u, m: (replies if m.topic.endswith("/reply") else statuses
                                      ).append(bytes(m.payload))
    spy.connect("127.0.0.1", port)
    spy.subscribe(f"lillith/{names[0]}/cmd/reply", qos=1)
    spy.subscribe(f"lillith/{names[0]}/status", qos=1)
    spy.loop_start()
    try:
        deadline = time.monotonic() + 180
        while not statuses and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.1)
        assert statuses and json.loads(statuses[-1])["state"] == "online", log.read_text()[-3000:]
        n = 400
        for i in range(n):
            for k in range(2):
                spy.publish(f"test/{uid}/{k}", json.dumps({"t": i, "values": [i % 7, k]}), qos=1)
        deadline = time.monotonic() + 120
        while col.count < 2 * n and time.monotonic() < deadline:
            time.sleep(0.1)
        assert col.count == 2 * n, log.read_text()[-3000:]
        # commands run in the actor: pause (a call) and checkpoint (a snapshot now)
        spy.publish(f"lillith/{names[0]}/cmd", json.dumps({"cmd": "pause", "id": 1}), qos=1)
        spy.publish(f"lillith/{names[0]}/cmd", json.dumps({"cmd": "checkpoint", "id": 2}), qos=1)
        deadline = time.monotonic() + 60
        while len(replies) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        got = [json.loads(r) for r in replies]
        assert got[0] == {"id": 1, "cmd": "pause", "learning": False, "ok": True}
        assert got[1]["ok"] and got[1]["step"] == n and got[1]["snapshot"], got
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, log.read_text()[-3000:]
        time.sleep(0.3)
        final = json.loads(statuses[-1])
        assert final["state"] == "offline" and final["clean"] and final["frames_out"] == n
        events = [json.loads(line[line.index("{"):])["event"] for line in log.read_text(
            ).splitlines() if "{" in line and '"event"' in line]
        assert events.count("actor_ready") == 2 and events.count("actor_final_snapshot") == 2
        check = subprocess.run([sys.executable, "-m", "lillith.runtime.cli", "inspect",
                                str(tmp_path / "state"), "--verify", "--json"],
                               capture_output=True, text=True, env=env, timeout=120)
        assert check.returncode == 0, check.stderr
        report = json.loads(check.stdout)
        assert {a: r["snapshots"][-1]["step"] for a, r in report["agents"].items()} == {
            names[0]: n, names[1]: n}
        # the actors ended with the daemon
        assert not [a for a in local_ray.util.list_named_actors(all_namespaces=True)
                    if a["namespace"] == "lillith-cli"]
    finally:
        if proc.poll() is None:
            proc.kill()
        spy.loop_stop()
        col.close()


def test_actor_that_cannot_resume_stops_the_daemon_with_the_cause(
        local_ray: Any, tmp_path: Path) -> None:
    """A snapshot of another configuration: as on one machine the daemon refuses to
    start (a ClusterError naming the actor's own StateError), instead of waiting."""
    import asyncio

    import numpy as np

    from lillith.agents.agent import Agent
    from lillith.agents.config import AgentConfig
    from lillith.runtime.cluster import ClusterError, RayCluster
    from lillith.runtime.config import AgentBinding, StateSettings
    from lillith.runtime.daemon import Daemon
    from lillith.sensors.mqtt import MqttSettings

    other = AgentConfig.model_validate({"fabric": {"shape": [2, 2, 2]}})
    agent = Agent(2, other, name="x")
    agent.process_many(np.zeros((10, 2)))
    SnapshotStore(str(tmp_path / "agents" / "x")).write(agent.get_state(), step=agent.step)
    state = StateSettings(dir=str(tmp_path))
    rc = RayCluster(ClusterSettings(num_cpus=0.5, namespace="lillith-test"), AgentConfig(),
                    state=state, client_id=f"bad-{uuid.uuid4().hex[:6]}")
    daemon = Daemon(MqttSettings(port=free_port()), [AgentBinding(name="x", width=2)],
                    AgentConfig(), state=state, cluster=rc)
    try:
        with pytest.raises(ClusterError) as e:
            asyncio.run(daemon.run(asyncio.Event()))
    finally:
        rc.close()
    assert "could not start" in str(e.value)
    assert "another agent configuration" in e.value.fields["error"]
