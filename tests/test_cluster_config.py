"""The cluster's settings and flag, and that nothing imports Ray without one
(in the default suite: no Ray cluster is started here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lillith.errors import ConfigError
from lillith.runtime.cli import main
from lillith.runtime.cluster.dispatch import ray_address
from lillith.runtime.config import ClusterSettings, load_settings


def test_daemon_cli_and_cluster_package_do_not_import_ray() -> None:
    code = ("import sys, lillith.runtime.daemon, lillith.runtime.cli, lillith.runtime.cluster\n"
            "from lillith.runtime.cli import build_parser\n"
            "build_parser().parse_args(['run', '--source', 'mqtt://127.0.0.1:1'])\n"
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=os.environ, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout


def test_cluster_settings_from_toml_and_environment(tmp_path: Path) -> None:
    cfg = tmp_path / "lillith.toml"
    cfg.write_text('[cluster]\naddress = "ray://head:6379"\nactors = 4\nnum_cpus = 0.5\n')
    s = load_settings(cfg, env={"LILLITH_CLUSTER__MAX_RESTARTS": "-1"})
    assert s.cluster == ClusterSettings(address="ray://head:6379", actors=4, num_cpus=0.5,
                                        max_restarts=-1)
    assert load_settings().cluster is None  # no [cluster]: worker threads, as before
    assert ray_address("ray") == "local"
    assert ray_address("ray://auto") == "auto"
    assert ray_address("ray://10.0.0.5:6379") == "10.0.0.5:6379"


@pytest.mark.parametrize("address", ["spark://x", "ray://", "ray:/x", ""])
def test_cluster_address_must_be_ray(address: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(overrides={"cluster": {"address": address}})
    assert e.value.fields["problems"][0]["field"] == "cluster"
    with pytest.raises(ConfigError):
        ray_address(address)


def test_cluster_flag_needs_the_mqtt_daemon(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # refused before the state is locked or anything is started
    code = main(["run", "--cluster", "ray", "--state", str(tmp_path / "s"),
                 "--max-frames", "1"])
    assert code == 2
    assert "a cluster serves the MQTT daemon" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    assert main(["run", "--cluster", "yarn://x", "--source", "mqtt://127.0.0.1:1"]) == 2
    assert "cluster address must be" in capsys.readouterr().err


def test_bench_cluster_latency_pairs_each_output_with_its_frames_publication() -> None:
    """``Run.latency_ms``: an output's arrival minus the publication of the frame
    its ``seq`` names, over the frames published from 2 s after the first output."""
    import json

    import numpy as np

    from lillith.bench.bench_cluster import Run

    sent = {"a": [0.0, 1.0, 3.0, 4.0, 5.0], "b": [0.5, 3.5]}
    # outputs arrive out of order across agents; b's second is 20 ms late
    outputs = {"a": [json.dumps({"seq": s}).encode() for s in (1, 2, 3, 4, 5)],
               "b": [json.dumps({"seq": s}).encode() for s in (1, 2)]}
    arrivals = {"a": [0.9, 1.001, 3.002, 4.003, 5.004], "b": [0.95, 3.52]}
    times = sorted(arrivals["a"] + arrivals["b"])
    got = Run(outputs, times, arrivals=arrivals, sent=sent).latency_ms()
    want = np.array([2.0, 3.0, 4.0, 20.0])  # frames sent from 0.9 + 2 s on
    assert got["frames"] == 4
    assert got["p50_ms"] == round(float(np.percentile(want, 50)), 2)
    assert got["max_ms"] == 20.0
    assert Run(outputs, times).latency_ms() == {}  # a backlog run has no latency
