"""The daemon as the tools around it see it (issue 21): outputs that name their
topic, one agent per topic, Home Assistant discovery, the metrics the Grafana
dashboard reads, the summary log line, error replies that echo the command,
and --max-frames / --duration honoured for mqtt:// sources."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from lillith.runtime import homeassistant as ha
from lillith.runtime.topic_agents import topic_agent_name

from .conftest import free_port
from .test_daemon_mqtt import Collector

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"

# Home Assistant's MQTT discovery schema (its documentation of the MQTT binary
# sensor and sensor platforms, the availability list and the device map): the
# keys each entity may carry, those it must, and the allowed classes.
COMMON_KEYS = {"name", "unique_id", "object_id", "default_entity_id", "state_topic",
               "value_template", "availability", "availability_mode", "availability_topic",
               "device", "qos", "entity_category", "icon", "enabled_by_default",
               "json_attributes_topic", "json_attributes_template", "expire_after",
               "force_update", "encoding", "platform"}
PLATFORM_KEYS = {"binary_sensor": {"device_class", "payload_on", "payload_off", "off_delay"},
                 "sensor": {"device_class", "state_class", "unit_of_measurement",
                            "suggested_display_precision", "last_reset_value_template",
                            "options"}}
REQUIRED = {"binary_sensor": {"state_topic"}, "sensor": {"state_topic"}}
DEVICE_KEYS = {"identifiers", "connections", "name", "manufacturer", "model", "model_id",
               "sw_version", "hw_version", "serial_number", "suggested_area", "via_device",
               "configuration_url"}
AVAILABILITY_KEYS = {"topic", "payload_available", "payload_not_available", "value_template"}
BINARY_CLASSES = {"problem", "safety", "running", "moving", "power", "connectivity"}
STATE_CLASSES = {"measurement", "total", "total_increasing", "measurement_angle"}
ENTITY_CATEGORIES = {"config", "diagnostic"}


def check_discovery(component: str, cfg: dict[str, Any]) -> None:
    """Assert ``cfg`` is a valid discovery config of ``component``."""
    allowed = COMMON_KEYS | PLATFORM_KEYS[component]
    assert set(cfg) <= allowed, set(cfg) - allowed
    assert REQUIRED[component] <= set(cfg)
    assert isinstance(cfg["unique_id"], str) and re.fullmatch(r"[a-zA-Z0-9_-]+", cfg["unique_id"])
    dev = cfg["device"]
    assert set(dev) <= DEVICE_KEYS and dev["identifiers"] and isinstance(dev["identifiers"], list)
    for av in cfg["availability"]:
        assert set(av) <= AVAILABILITY_KEYS and "topic" in av
    assert cfg.get("qos", 0) in (0, 1, 2)
    assert cfg.get("entity_category", "diagnostic") in ENTITY_CATEGORIES
    if component == "binary_sensor":
        assert cfg.get("device_class", "problem") in BINARY_CLASSES
    else:
        assert cfg.get("state_class", "measurement") in STATE_CLASSES


def retained(port: int, topic_filter: str, settle: float = 1.5) -> dict[str, bytes]:
    """The retained messages under ``topic_filter``, read by a fresh subscriber."""
    got: dict[str, bytes] = {}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ret-{uuid.uuid4().hex[:8]}")

    def on_message(client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            got[msg.topic] = bytes(msg.payload)

    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.subscribe(topic_filter, qos=1)
    c.loop_start()
    time.sleep(settle)
    c.loop_stop()
    c.disconnect()
    return got


def run_daemon(tmp: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "lillith.runtime.cli", "run", *args],
                            env=env, stdout=(tmp / "daemon.log").open("a"),
                            stderr=subprocess.STDOUT)


def metric_names(scrape: str) -> set[str]:
    """Names of the metric families in a Prometheus text scrape (a counter's
    without its ``_total``)."""
    return {re.sub(r"_total$", "", m.group(1))
            for m in re.finditer(r"^# TYPE (\S+) ", scrape, re.M)}


def dashboard_metrics() -> set[str]:
    """Metric names the dashboard's PromQL reads."""
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "lillith.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    names = set()
    for e in exprs:
        for m in re.findall(r"\b(lillith_[a-z_]+)", e):
            names.add(re.sub(r"_(total|bucket|count|sum)$", "", m))
    return names


def test_daemon_outputs_topics_per_topic_agents_discovery_metrics(mosquitto: int,
                                                                    tmp_path: Path) -> None:
    uid = uuid.uuid4().hex[:8]
    merged, per = f"m{uid}", f"p{uid}"
    ha_prefix = f"ha{uid}"
    metrics_port = free_port()
    agents = [{"name": merged, "topics": [f"test/{uid}/merged/#"]},
              {"name": per, "topics": [f"test/{uid}/per/+"], "agent_per_topic": True}]
    env = {**os.environ, "LILLITH_MQTT__CLIENT_ID": f"daemon-{uid}",
           "LILLITH_AGENTS": json.dumps(agents), "LILLITH_LOG__FORMAT": "json",
           "LILLITH_LOG__SUMMARY_EVERY_S": "0.5", "LILLITH_METRICS_PORT": str(metrics_port),
           "LILLITH_METRICS_ADDR": "127.0.0.1", "LILLITH_STATE__DIR": str(tmp_path / "state"),
           "LILLITH_HOMEASSISTANT__ENABLED": "true", "LILLITH_HOMEASSISTANT__PREFIX": ha_prefix}
    col = Collector(mosquitto, "lillith/#")
    n_each = 30
    total = 4 * n_each
    proc = run_daemon(tmp_path, env, "--source", f"mqtt://127.0.0.1:{mosquitto}",
                      "--max-frames", str(total))
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uid}")
    pub.connect("127.0.0.1", mosquitto)
    pub.loop_start()
    log = tmp_path / "daemon.log"
    topics = [f"test/{uid}/merged/a", f"test/{uid}/merged/b", f"test/{uid}/per/x",
              f"test/{uid}/per/y"]
    try:
        assert col.wait(f"lillith/{merged}/status", 1, 60), log.read_text()[-3000:]

        def feed(frames: range) -> None:
            for i in frames:
                for k, topic in enumerate(topics):
                    pub.publish(topic, json.dumps({"t": i, "values": [float(i % 7 + k)]}),
                                qos=1).wait_for_publish(5)

        half = n_each // 2
        feed(range(half))
        assert len(col.wait(f"lillith/{merged}/out", 2 * half, 60)) == 2 * half
        pub.publish(f"lillith/{merged}/cmd", json.dumps({"cmd": "checkpoint", "id": 1}), qos=1)
        pub.publish(f"lillith/{merged}/cmd", json.dumps({"cmd": "bogus", "id": "x9"}), qos=1)
        replies = [json.loads(r) for r in col.wait(f"lillith/{merged}/cmd/reply", 2, 30)]
        assert replies[0]["ok"] and replies[0]["snapshot"]
        # an error reply echoes id and cmd (docs/mqtt.md)
        assert replies[1]["ok"] is False and replies[1]["id"] == "x9"
        assert replies[1]["cmd"] == "bogus" and "error" in replies[1]
        time.sleep(0.3)  # the lag probe exports the snapshot's figures
        # the dashboard's metrics, scraped from the running daemon
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                        timeout=10).read().decode()
        exported = metric_names(scrape)
        assert dashboard_metrics() <= exported, dashboard_metrics() - exported
        assert re.search(rf'lillith_snapshot_last_success_timestamp_seconds{{agent="{merged}"}} '
                         r"1\.\d+e\+09", scrape)
        assert re.search(rf'lillith_mode{{agent="{merged}",mode="\w+"}} 1\.0', scrape)
        names = {topic_agent_name(per, t) for t in topics[2:]}
        assert names == {f"{per}.test.{uid}.per.x", f"{per}.test.{uid}.per.y"}
        # Home Assistant: four entities per agent, retained, valid
        configs = retained(mosquitto, f"{ha_prefix}/#")
        for name in [merged, *names]:
            for entity, (component, _) in ha.ENTITIES.items():
                topic = ha.config_topic(ha_prefix, f"daemon-{uid}", name, entity)
                cfg = json.loads(configs[topic])
                check_discovery(component, cfg)
                assert cfg["state_topic"] == f"lillith/{name}/out"
                assert cfg["availability"][0]["topic"] == f"lillith/{name}/status"
        feed(range(half, n_each))
        for name in names:  # an agent per topic, each with its own stream
            outs = [json.loads(o) for o in col.wait(f"lillith/{name}/out", n_each, 60)]
            assert len(outs) == n_each, log.read_text()[-3000:]
            assert {o["topic"] for o in outs} == {name.replace(f"{per}.", "", 1)
                                                  .replace(".", "/")}
            assert [o["seq"] for o in outs] == list(range(1, n_each + 1))
        outs = [json.loads(o) for o in col.wait(f"lillith/{merged}/out", 2 * n_each, 60)]
        assert {o["topic"] for o in outs} == set(topics[:2])  # every output names its topic
        # --max-frames for mqtt://: the daemon stops by itself, cleanly
        assert proc.wait(60) == 0, log.read_text()[-3000:]
        events = [json.loads(line) for line in log.read_text().splitlines()
                  if line.startswith("{")]
        warned = [e for e in events if e["event"] == "several_topics_one_agent"]
        assert len(warned) == 1 and warned[0]["agent"] == merged  # once, for the merged one
        summaries = [e for e in events if e["event"] == "frames_processed"]
        assert {e["agent"] for e in summaries} >= {merged}
        assert all({"frames", "frames_per_s", "queue_depth", "alarms"} <= set(e)
                   for e in summaries)
        # restarted without the per-topic binding: its entities are removed
        env["LILLITH_AGENTS"] = json.dumps(agents[:1])
        proc = run_daemon(tmp_path, env, "--source", f"mqtt://127.0.0.1:{mosquitto}",
                          "--duration", "6")
        assert proc.wait(90) == 0, log.read_text()[-3000:]
        left = retained(mosquitto, f"{ha_prefix}/#")
        assert {t for t, body in left.items() if body} == {
            ha.config_topic(ha_prefix, f"daemon-{uid}", merged, e) for e in ha.ENTITIES}
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.loop_stop()
        col.close()


def test_compose_runs_prometheus_and_grafana_with_the_dashboard() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"mosquitto", "lillith", "prometheus", "grafana"} <= set(services)
    env = services["lillith"]["environment"]
    assert env["LILLITH_METRICS_ADDR"] == "0.0.0.0"
    port = int(env["LILLITH_METRICS_PORT"])
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]]
    assert f"lillith:{port}" in targets
    mounts = {v.split(":")[0]: v.split(":")[1] for v in services["grafana"]["volumes"]}
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/lillith.yaml").read_text())
    assert prov["providers"][0]["options"]["path"] == mounts["./grafana/dashboards"]
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")
                        .read_text())["datasources"][0]
    assert ds["url"] == "http://prometheus:9090" and ds["type"] == "prometheus"
    dash = json.loads((DEPLOY / "grafana/dashboards/lillith.json").read_text())
    wanted = {"Frames per second", "Queue depth", "Drops", "Dead letters by reason",
              "Alarms by reason", "Step latency", "Snapshot age",
              "Snapshot duration and failures", "Energy", "Mode"}
    assert wanted <= {p["title"] for p in dash["panels"]}
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == ds["uid"] and p["targets"]
        assert all(t["expr"].count("(") == t["expr"].count(")") for t in p["targets"])


def test_topic_agent_names_are_stable_and_distinct() -> None:
    from lillith.runtime.config import AgentBinding
    from lillith.runtime.topic_agents import TopicAgents

    assert topic_agent_name("site", "sensors/boiler") == "site.sensors.boiler"
    odd = [topic_agent_name("site", t) for t in ("sensors/a b", "sensors/a+b", "sensors/a_b")]
    assert len(set(odd)) == 3 and odd[2] == "site.sensors.a_b"
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", n) for n in odd)
    assert topic_agent_name("site", "sensors/a b") == odd[0]  # stable: the state's name
    b = AgentBinding(name="site", topics=["sensors/+"], agent_per_topic=True,
                     max_topic_agents=1)
    agents = TopicAgents([b])
    assert agents.binding_of("sensors/x") is b and agents.binding_of("other/x") is None
    agents.added(b, "site.sensors.x")
    assert agents.count(b) == 1 and agents.parent_of("site.sensors.x") == "site"
    assert agents.first_refusal(b) and not agents.first_refusal(b)
    with pytest.raises(ValueError):
        AgentBinding(name="x", channels=["a"], tick_s=1.0, agent_per_topic=True)
