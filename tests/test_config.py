"""Configuration: TOML < environment < flags, validation errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from lillith.errors import ConfigError
from lillith.runtime.config import Settings, default_config_path, load_settings


def test_defaults() -> None:
    s = load_settings()
    assert s == Settings()
    assert s.agent.fabric.shape == (5, 5, 16)
    assert s.agent.som.map_shape == (17, 17)


def test_precedence_toml_env_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "lillith.toml"
    cfg.write_text('[agent.fabric]\nshape = [4, 4, 8]\n[agent]\nseed = 3\n[log]\nlevel = "debug"\n')
    s = load_settings(cfg)
    assert s.agent.fabric.shape == (4, 4, 8) and s.agent.seed == 3 and s.log.level == "debug"
    env = {"LILLITH_AGENT__SEED": "7", "LILLITH_LOG__FORMAT": "json", "OTHER": "x",
           "LILLITH_DATA": "/data"}  # the benchmarks' variable, not a setting
    s = load_settings(cfg, env=env)
    assert s.agent.seed == 7 and s.log.format == "json" and s.agent.fabric.shape == (4, 4, 8)
    s = load_settings(cfg, env=env, overrides={"agent": {"seed": 11}})
    assert s.agent.seed == 11


def test_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(overrides={"agent": {"fabric": {"shape": [0, 1, 1]}}})
    assert e.value.fields["problems"][0]["field"] == "agent.fabric.shape"
    with pytest.raises(ConfigError):
        load_settings(overrides={"agent": {"fabric": {"unknown": 1}}})
    bad = tmp_path / "bad.toml"
    bad.write_text("[fabric\n")
    with pytest.raises(ConfigError):
        load_settings(bad)
    with pytest.raises(ConfigError):
        load_settings(tmp_path / "missing.toml")


def test_deploy_example_config_is_complete_and_valid() -> None:
    example = Path(__file__).resolve().parents[1] / "deploy" / "lillith.toml"
    assert load_settings(example) == Settings()


def test_layers_are_pydantic_settings_sources_and_tool_variables_are_not_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "lillith.toml"
    cfg.write_text('torch_threads = 2\n[mqtt]\nhost = "from-toml"\nport = 1884\n')
    env = {"LILLITH_MQTT__HOST": "from-env", "LILLITH_DATA": "/data",
           "LILLITH_BENCH_DIR": "/bench"}
    s = load_settings(cfg, env=env, overrides={"mqtt": {"port": 1999}})
    # nested tables merge key by key across the layers
    assert (s.mqtt.host, s.mqtt.port, s.torch_threads) == ("from-env", 1999, 2)
    # Settings() alone reads neither the environment nor ./lillith.toml
    monkeypatch.setenv("LILLITH_TORCH_THREADS", "3")
    monkeypatch.chdir(tmp_path)
    assert Settings().torch_threads == 1
    # a misspelt variable, nested or top level, is refused, not ignored
    for bad in ({"LILLITH_MQTT__HOSTT": "x"}, {"LILLITH_TORCH_THREAD": "2"}):
        with pytest.raises(ConfigError) as e:
            load_settings(env=bad)
        assert "Extra inputs are not permitted" in str(e.value)
    cfg.write_text("[mqtt]\nhostt = 'x'\n")
    with pytest.raises(ConfigError):
        load_settings(cfg)


def test_validation_problems_read_as_lines() -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(overrides={"torch_threads": 0, "mqtt": {"port": 0}})
    text = str(e.value)
    assert text.splitlines()[0] == "invalid configuration:"
    assert "  torch_threads: Input should be greater than or equal to 1" in text.splitlines()
    assert any(line.startswith("  mqtt.port: ") for line in text.splitlines())
    assert "{" not in text  # no Python repr of the problem list
    assert {p["field"] for p in e.value.fields["problems"]} == {"torch_threads", "mqtt.port"}


def test_default_config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_config_path(None) is None
    (tmp_path / "lillith.toml").write_text("torch_threads = 2\n")
    assert default_config_path(None) == Path("lillith.toml")
    assert default_config_path(Path("other.toml")) == Path("other.toml")
