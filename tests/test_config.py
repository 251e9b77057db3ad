"""Configuration: TOML < environment < flags, validation errors name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from lillith.errors import ConfigError
from lillith.runtime.config import Settings, load_settings


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
