"""The command line as a user meets it: benchmarks from the package, --version,
./lillith.toml, flags a source cannot honour, ``config check`` (issue 21)."""

from __future__ import annotations

import importlib
import inspect
import json
import math
import os
import re
import subprocess
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from lillith.runtime.cli import BENCHMARKS, main
from lillith.runtime.replay import warn_without_time
from lillith.sensors.csvfile import AUTO_TIME, EPOCH_MS, EPOCH_S, parse_time, read_csv_stream


def test_every_benchmark_is_a_module_of_the_package() -> None:
    # lillith bench NAME imports lillith.bench.bench_NAME: no checkout, no sys.path
    for name in BENCHMARKS:
        module = importlib.import_module(f"lillith.bench.bench_{name}")
        assert "quick" in inspect.signature(module.run).parameters, name


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from lillith import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"lillith {__version__}"


def test_config_check_reads_the_local_lillith_toml(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    for k in [k for k in os.environ if k.startswith("LILLITH_")]:
        monkeypatch.delenv(k)
    assert main(["config", "check"]) == 0
    assert "no file (the defaults)" in capsys.readouterr().err
    (tmp_path / "lillith.toml").write_text("torch_threads = 0\n[mqtt]\nport = 70000\n")
    assert main(["config", "check"]) == 2  # ./lillith.toml is read without --config
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "lillith: error: invalid configuration:"
    assert "  torch_threads: Input should be greater than or equal to 1" in err
    assert any(line.startswith("  mqtt.port: ") for line in err)
    (tmp_path / "lillith.toml").write_text("torch_threads = 2\n")
    assert main(["config", "check", "--show"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["torch_threads"] == 2
    assert "configuration valid: lillith.toml" in out.err


def test_flags_a_source_cannot_honour_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--source", "mqtt://127.0.0.1:1/x", "--until-step", "5"]) == 2
    assert "--until-step applies to local sources" in capsys.readouterr().err
    assert main(["replay", "in.csv", "--out", "o.csv", "--checkpoint-every", "10"]) == 2
    assert "apply with --state DIR" in capsys.readouterr().err


def test_time_column_auto_detected_epoch_seconds_and_a_warning_without_one(
        tmp_path: Path) -> None:
    epoch = tmp_path / "epoch.csv"
    epoch.write_text("value,TS\n1.5,1700000000\n2.5,1700000060\n")
    s = read_csv_stream(epoch, timestamp_column=AUTO_TIME)
    assert s.timestamp_column == "TS" and s.columns == ["value"]
    assert s.t.tolist() == [1_700_000_000.0, 1_700_000_060.0]
    millis = tmp_path / "ms.csv"
    millis.write_text("time;a;b\n1700000000000;1;2\n1700000001000;3;4\n")
    s = read_csv_stream(millis, timestamp_column=AUTO_TIME)
    assert s.timestamp_column == "time" and s.t.tolist() == [1_700_000_000.0, 1_700_000_001.0]
    bare = tmp_path / "bare.csv"
    bare.write_text("a,b\n1,2\n3,4\n")
    s = read_csv_stream(bare, timestamp_column=AUTO_TIME)
    assert s.timestamp_column is None and s.columns == ["a", "b"]
    with structlog.testing.capture_logs() as logs:
        warn_without_time(s, AUTO_TIME)
    assert [e["event"] for e in logs] == ["no_time_column"]
    assert "--timestamp-column" in logs[0]["detail"]


@given(st.floats(EPOCH_S[0], EPOCH_S[1], exclude_max=True),
       st.floats(EPOCH_MS[0], EPOCH_MS[1], exclude_max=True),
       st.floats(-EPOCH_S[0], EPOCH_S[0], exclude_min=True, exclude_max=True))
def test_parse_time_epoch_ranges(seconds: float, millis: float, small: float) -> None:
    assert parse_time(repr(seconds)) == seconds
    assert parse_time(repr(millis)) == millis / 1000.0
    assert math.isnan(parse_time(repr(small)))  # a plain number, not a time


def test_first_start_says_it_compiles_the_kernels(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from lillith.runtime.kernels import kernels_cached, warm_kernels

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))  # an empty cache: a first run
    assert not kernels_cached()
    with structlog.testing.capture_logs() as logs:
        seconds = warm_kernels(structlog.get_logger())
    assert seconds is not None
    assert [e["event"] for e in logs] == ["compiling_kernels", "kernels_compiled"]
    assert logs[0]["detail"].startswith("compiling kernels (first run)")
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    if kernels_cached():  # the checkout's cache holds them: nothing to say
        with structlog.testing.capture_logs() as logs:
            assert warm_kernels(structlog.get_logger()) is None
        assert logs == []


ROOT = Path(__file__).resolve().parents[1]


def test_the_repository_stands_alone() -> None:
    """No project file names the sibling directory of a development machine
    (.ci/run, the CI entry point, may look for the corpora beside the checkout)."""
    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    names = ("../" + "shared", "/work/" + "shared")  # (not spelt out: this file is scanned)
    bad = [f for f in files if f != ".ci/run" and (ROOT / f).is_file()
           and any(n in (ROOT / f).read_text(errors="replace") for n in names)]
    assert bad == []


def test_make_run_installs_the_runtime_only() -> None:
    make = (ROOT / "Makefile").read_text()
    recipes = dict(re.findall(r"^(\S+):[^\n]*\n((?:\t[^\n]*\n)*)", make, re.M))
    assert re.search(r"^run: \$\(STAMP\)$", make, re.M)
    assert "'.[report]'" in recipes["$(STAMP)"] and "'.[dev]'" not in recipes["$(STAMP)"]
    assert "'.[dev]'" in recipes["$(DEV_STAMP)"]
    assert re.search(r"^test: \$\(DEV_STAMP\)", make, re.M)
