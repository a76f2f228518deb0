"""Dashboard settings: web.dashboard and the secret web.token."""

from __future__ import annotations

from pathlib import Path

import pytest

from cryptostream.config import Config, ConfigError, Secret, load_config

TOKEN = "a-long-random-token-42"


def load(tmp_path: Path, text: str = "", **env: str) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(path, {"CRYPTOSTREAM_SOURCE__NAME": "demo", **env})


def test_defaults_serve_the_dashboard_without_a_token(tmp_path: Path) -> None:
    web = load(tmp_path).web
    assert web.dashboard is True
    assert not web.token
    assert web.host == "127.0.0.1"


def test_token_from_the_environment_is_a_secret(tmp_path: Path) -> None:
    config = load(tmp_path, CRYPTOSTREAM_WEB__TOKEN=f" {TOKEN} ")
    assert config.web.token == Secret(TOKEN)
    assert TOKEN not in repr(config)
    assert TOKEN in config.secrets()  # so every log line masks it


def test_a_short_token_is_refused_without_showing_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, CRYPTOSTREAM_WEB__TOKEN="short")
    assert "CRYPTOSTREAM_WEB__TOKEN" in str(err.value)
    assert "short" not in str(err.value)


def test_token_of_the_wrong_type_in_the_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[web\] token: expected a string"):
        load(tmp_path, "[web]\ntoken = 12345678901234567890\n")


def test_dashboard_can_be_turned_off(tmp_path: Path) -> None:
    config = load(tmp_path, "[web]\ndashboard = false\n")
    assert config.web.dashboard is False
