from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cryptostream.config import DEFAULT_ASSETS, ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_shipped_config_toml_equals_the_built_in_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = load_config(REPO / "config.toml", {"COINCAP_API_KEY": "k"})
    monkeypatch.chdir(tmp_path)  # no ./config.toml here: pure defaults
    defaults = load_config(None, {"COINCAP_API_KEY": "k"})
    assert shipped == defaults
    assert shipped.source.assets == DEFAULT_ASSETS
    assert shipped.source.poll_interval == 20.0


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[kafka]\nbootstrap_servers = "a:1"\ntopic = "t1"\n')
    cfg = load_config(
        path,
        {
            "COINCAP_API_KEY": "k",
            "CRYPTOSTREAM_KAFKA__BOOTSTRAP_SERVERS": "b:2,c:3",
            "CRYPTOSTREAM_SOURCE__ASSETS": "bitcoin, solana",
            "CRYPTOSTREAM_SOURCE__POLL_INTERVAL": "0.5",
            "CRYPTOSTREAM_STORAGE__FSYNC": "false",
            "CRYPTOSTREAM_WEB__PORT": "9000",
        },
    )
    assert cfg.kafka.bootstrap_servers == "b:2,c:3"
    assert cfg.kafka.topic == "t1"
    assert cfg.source.assets == ("bitcoin", "solana")
    assert cfg.source.poll_interval == 0.5
    assert cfg.storage.fsync is False
    assert cfg.web.port == 9000


def test_assets_as_json_list_in_env(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, ""),
        {"COINCAP_API_KEY": "k", "CRYPTOSTREAM_SOURCE__ASSETS": '["xrp", "tether"]'},
    )
    assert cfg.source.assets == ("xrp", "tether")


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[kafka]\ntopic = "from-env-path"\n')
    cfg = load_config(None, {"COINCAP_API_KEY": "k", "CRYPTOSTREAM_CONFIG": str(path)})
    assert cfg.kafka.topic == "from-env-path"


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""), {"COINCAP_API_KEY": "k"})
    with pytest.raises(AttributeError):
        cfg.kafka.topic = "x"  # type: ignore[misc]


def test_api_key_is_never_shown(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ""), {"COINCAP_API_KEY": "very-secret-key"})
    assert cfg.coincap.api_key.get() == "very-secret-key"
    assert "very-secret-key" not in repr(cfg)
    assert "very-secret-key" not in str(cfg.coincap)


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[kafka]\nbootstrap_server = 'x:1'\n", {}, "unknown key [kafka] bootstrap_server"),
        ("[kafak]\n", {}, "unknown section [kafak]"),
        ("[source]\npoll_interval = 'fast'\n", {}, "[source] poll_interval: expected a number"),
        ("[source]\npoll_interval = 0\n", {}, "[source] poll_interval: must be greater than 0"),
        ("[source]\npoll_interval = -1.5\n", {}, "poll_interval: must be greater than 0"),
        ("[source]\nassets = []\n", {}, "[source] assets: the asset list is empty"),
        ("[source]\nassets = 'bitcoin'\n", {}, "[source] assets: expected a list of strings"),
        ("[source]\nassets = ['Bitcoin']\n", {}, "invalid asset id 'Bitcoin'"),
        ("[web]\nport = 70000\n", {}, "[web] port: must be a port number"),
        ("[web]\nport = '80'\n", {}, "[web] port: expected an integer"),
        ("[kafka]\nbootstrap_servers = 'nohost'\n", {}, "expected host:port"),
        ("[kafka]\ntopic = 'bad topic'\n", {}, "invalid topic name"),
        ("[log]\nlevel = 'loud'\n", {}, "expected one of debug, info, warning, error"),
        ("[coincap]\napi_key = 'x'\n", {}, "set it with the COINCAP_API_KEY"),
        ("[kafka\n", {}, "invalid TOML"),
        (
            "",
            {"CRYPTOSTREAM_KAFKA__BOOTSTRAP_SERVER": "x:1"},
            "CRYPTOSTREAM_KAFKA__BOOTSTRAP_SERVER",
        ),
        ("", {"CRYPTOSTREAM_SOURCE__POLL_INTERVAL": "abc"}, "CRYPTOSTREAM_SOURCE__POLL_INTERVAL"),
        ("", {"CRYPTOSTREAM_SOURCE__POLL_INTERVAL": "nan"}, "expected a number"),
        ("", {"CRYPTOSTREAM_STORAGE__FSYNC": "maybe"}, "expected true or false"),
        ("", {"CRYPTOSTREAM_SOURCE__ASSETS": "[bitcoin"}, "invalid JSON list"),
        ("", {"CRYPTOSTREAM_SOURCE__ASSETS": ""}, "the asset list is empty"),
    ],
)
def test_bad_configuration_names_the_key(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, toml), {"COINCAP_API_KEY": "k", **env})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_api_key_is_an_error_only_when_coincap_is_asked_for(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="COINCAP_API_KEY is not set"):
        load_config(write(tmp_path, "[source]\nname = 'coincap'\n"), {})
    # The default (auto) starts a first run without a key on the keyless sources.
    assert load_config(write(tmp_path, ""), {}).source.name == "auto"


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml", {"COINCAP_API_KEY": "k"})


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "cryptostream", *args],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        cwd=cwd,
        timeout=30,
    )


def test_cli_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "[source]\npoll_interval = 0\n")
    result = cli("run", "--config", str(path), env={"COINCAP_API_KEY": "k"}, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "poll_interval" in lines[0]
    assert result.stdout == ""
    assert not (tmp_path / "data").exists(), "nothing may start on a bad configuration"


def test_cli_missing_key_for_coincap_exit_2(tmp_path: Path) -> None:
    result = cli("run", cwd=tmp_path, env={"CRYPTOSTREAM_SOURCE__NAME": "coincap"})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "COINCAP_API_KEY" in result.stderr


def test_cli_help_and_version(tmp_path: Path) -> None:
    result = cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    for word in ("run", "check", "CRYPTOSTREAM_", "COINCAP_API_KEY", "--config"):
        assert word in result.stdout
    version = cli("--version", cwd=tmp_path)
    assert version.returncode == 0
    assert version.stdout.startswith("cryptostream 0.")


def test_cli_check_fails_when_nothing_listens(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = cli(
        "check", env={"COINCAP_API_KEY": "k", "CRYPTOSTREAM_WEB__PORT": str(port)}, cwd=tmp_path
    )
    assert result.returncode == 1
    assert "not reachable" in result.stderr


SECRETS = {
    "COINCAP_API_KEY": "api-key-never-shown-1",
    "KAFKA_SASL_PASSWORD": "sasl-password-never-shown-2",
}
TOKEN = {"CRYPTOSTREAM_WEB__TOKEN": "web-token-never-shown-3"}


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        # The secret itself is the bad value: the error names the key, never the value.
        ('[web]\ntoken = ["web-token-never-shown-3"]\n', {}, "[web] token: expected a string"),
        ("", {"CRYPTOSTREAM_WEB__TOKEN": "web-token never-shown-3"}, "CRYPTOSTREAM_WEB__TOKEN"),
        # Another key is bad while secrets are set.
        ("[source]\npoll_interval = 'fast'\n", TOKEN, "poll_interval: expected a number"),
        ("", {**TOKEN, "CRYPTOSTREAM_KAFKA__SASL_MECHANISM": "gssapi"}, "expected one of plain"),
    ],
)
def test_a_validation_error_never_shows_a_secret(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, toml), {**SECRETS, **env})
    assert message in str(err.value)
    for secret in (*SECRETS.values(), *TOKEN.values(), "never-shown"):
        assert secret not in str(err.value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        *[("1", True), ("TRUE", True), (" yes ", True), ("On", True)],
        *[("0", False), ("False", False), ("no", False), ("OFF", False)],
    ],
)
def test_boolean_spellings_in_the_environment(tmp_path: Path, text: str, value: bool) -> None:
    cfg = load_config(
        write(tmp_path, ""), {"COINCAP_API_KEY": "k", "CRYPTOSTREAM_WEB__ENABLED": text}
    )
    assert cfg.web.enabled is value


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        (
            "[source]\npoll_interval = inf\n",
            {},
            "[source] poll_interval: expected a number, got inf",
        ),
        ("[demo]\nrate = nan\n", {}, "[demo] rate: expected a number, got nan"),
        ("", {"CRYPTOSTREAM_KAFKA__SEND_TIMEOUT": "inf"}, "SEND_TIMEOUT: expected a number"),
        ("[web]\nenabled = 1\n", {}, "[web] enabled: expected true or false, got 1"),
        ("[source]\nassets = [1]\n", {}, "[source] assets: expected a list of strings, got [1]"),
        ("", {"CRYPTOSTREAM_SOURCE__ASSETS": '["xrp", 1]'}, "ASSETS: expected a list of strings"),
        ("", {"CRYPTOSTREAM_SOURCE__ASSETS": "xrp,Solana"}, "ASSETS: invalid asset id 'Solana'"),
        ("[source]\nassets = ['xrp', 'xrp']\n", {}, "[source] assets: duplicate asset ids"),
        ("[storage]\ndata_dir = ' '\n", {}, "[storage] data_dir: expected a path, got ' '"),
        ("[storage]\nretention_days = -1\n", {}, "retention_days: must be 0 (keep all) or more"),
        ("[kafka]\nlinger_ms = -1\n", {}, "[kafka] linger_ms: must not be negative"),
        ("[kafka]\ngroup_id = ''\n", {}, "[kafka] group_id: must not be empty"),
        ("[kafka]\nmin_insync_replicas = 2\n", {}, "must be between 0 and replication_factor (1)"),
        (
            "[kafka]\nfetch_max_wait = 20\n",
            {},
            "[kafka] fetch_max_wait: must be less than request_timeout (15 s), got 20",
        ),
        ("", {"CRYPTOSTREAM_KAFKA__FETCH_MAX_WAIT": "0"}, "FETCH_MAX_WAIT: must be greater than 0"),
        ("", {"CRYPTOSTREAM_WEB__PORT": "80.5"}, "CRYPTOSTREAM_WEB__PORT: expected an integer"),
    ],
)
def test_more_bad_values_name_key_and_origin(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, toml), {"COINCAP_API_KEY": "k", **env})
    assert message in str(err.value)
    assert ("environment CRYPTOSTREAM_" if env else "config.toml: [") in str(err.value)


def test_choices_and_list_items_are_forgiven_case_and_blanks(tmp_path: Path) -> None:
    path = write(tmp_path, "[log]\nlevel = ' DEBUG '\n[source]\nassets = [' xrp ']\n")
    cfg = load_config(
        path, {"COINCAP_API_KEY": "k", "CRYPTOSTREAM_KAFKA__SECURITY_PROTOCOL": "SSL"}
    )
    assert cfg.log.level == "debug"
    assert cfg.source.assets == ("xrp",)
    assert cfg.kafka.security_protocol == "ssl"


def test_paths_stay_as_written(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, "[storage]\ndata_dir = 'out/csv'\n"), {"COINCAP_API_KEY": "k"}
    )
    assert cfg.storage.data_dir == Path("out/csv")  # relative to the working directory
