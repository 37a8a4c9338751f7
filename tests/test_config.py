"""Configuration layers: defaults < TOML file < PACKETTRACER_* environment < CLI."""
from __future__ import annotations

from pathlib import Path

import pytest

import config


def test_layers_override_in_order(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[flows]\nflow_timeout = 120\nmax_flows = 1000\n[capture]\ncapture_filter = 'tcp'\n")
    env = {"PACKETTRACER_MAX_FLOWS": "2000", "PACKETTRACER_CAPTURE_FILTER": "udp"}
    s = config.load_settings({"CAPTURE_FILTER": "icmp"}, str(cfg), environ=env)
    assert s.FLOW_TIMEOUT == 120 and s.sources["FLOW_TIMEOUT"] == str(cfg)
    assert s.MAX_FLOWS == 2000 and s.sources["MAX_FLOWS"] == "env"
    assert s.CAPTURE_FILTER == "icmp" and s.sources["CAPTURE_FILTER"] == "cli"
    assert s.DB_READ_POOL_SIZE == config.DB_READ_POOL_SIZE


def test_every_default_is_in_a_group_and_valid() -> None:
    s = config.load_settings(environ={}, config_path=None)
    assert set(s.values) == set(config.defaults())
    names = [n for group in config.GROUPS.values() for n in group]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("text,msg", [
    ("[flows]\nflow_timeout = 'x'\n", "FLOW_TIMEOUT must be int"),
    ("[nope]\na = 1\n", "unknown section [nope]"),
    ("[flows]\nbogus = 1\n", "unknown key 'bogus'"),
    ("[flows\n", "not valid TOML"),
    ("[dashboard]\nrefresh_rate = -1\n", "REFRESH_RATE"),
])
def test_bad_files_are_clear_errors(tmp_path: Path, text: str, msg: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(config.ConfigError, match=msg.replace("[", r"\[")):
        config.load_settings(config_path=str(cfg), environ={})


def test_bad_environment_value() -> None:
    with pytest.raises(config.ConfigError, match="PACKETTRACER_GEO_ENABLED"):
        config.load_settings(environ={"PACKETTRACER_GEO_ENABLED": "maybe"})


def test_secrets_are_redacted() -> None:
    s = config.load_settings(environ={"PACKETTRACER_REPUTATION_API_KEY": "sekrit"})
    assert s.REPUTATION_API_KEY == "sekrit"
    assert "sekrit" not in repr(s.redacted())
