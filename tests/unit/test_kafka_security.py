"""Kafka security settings: SASL (PLAIN, SCRAM), TLS, and where the password may come from."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from cryptostream.config import Config, ConfigError, load_config
from cryptostream.topic import client_options

PASSWORD = "s3cret-Pässwörd-2b7e"


def load(tmp_path: Path, env: dict[str, str], toml: str = "") -> Config:
    path = tmp_path / "config.toml"
    path.write_text(toml)
    return load_config(path, {"CRYPTOSTREAM_SOURCE__NAME": "demo", **env})


def sasl_env(**more: str) -> dict[str, str]:
    return {
        "CRYPTOSTREAM_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "CRYPTOSTREAM_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "CRYPTOSTREAM_KAFKA__SASL_USERNAME": "alice",
        "KAFKA_SASL_PASSWORD": PASSWORD,
        **more,
    }


def test_plaintext_by_default(tmp_path: Path) -> None:
    config = load(tmp_path, {})
    options = client_options(config.kafka)
    assert options["security_protocol"] == "PLAINTEXT"
    assert not {"sasl_mechanism", "sasl_plain_password", "ssl_context"} & options.keys()


def test_sasl_ssl_with_the_password_from_the_environment(tmp_path: Path) -> None:
    config = load(tmp_path, sasl_env())
    kafka = config.kafka
    options = client_options(kafka)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "alice"
    assert options["sasl_plain_password"] == PASSWORD
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # Redacted from logs, never shown by the config itself.
    assert PASSWORD in config.secrets()
    assert PASSWORD not in repr(config) and PASSWORD not in str(kafka)


def test_the_password_from_a_file_without_its_line_end(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    env = sasl_env(CRYPTOSTREAM_KAFKA__SASL_PASSWORD_FILE=str(secret))
    del env["KAFKA_SASL_PASSWORD"]
    kafka = load(tmp_path, env).kafka
    assert kafka.sasl_password.get() == PASSWORD


@pytest.mark.parametrize(
    ("env", "toml", "message"),
    [
        (sasl_env(KAFKA_SASL_PASSWORD=""), "", "KAFKA_SASL_PASSWORD is not set"),
        (sasl_env(CRYPTOSTREAM_KAFKA__SASL_USERNAME=""), "", "SASL_USERNAME: needed"),
        (
            sasl_env(CRYPTOSTREAM_KAFKA__SASL_PASSWORD_FILE="/nonexistent/pw"),
            "",
            "are both set",
        ),
        ({"CRYPTOSTREAM_KAFKA__SASL_USERNAME": "alice"}, "", "only used with security_protocol"),
        ({"CRYPTOSTREAM_KAFKA__SASL_PASSWORD": PASSWORD}, "", "unknown configuration variable"),
        ({}, f'[kafka]\nsasl_password = "{PASSWORD}"\n', "KAFKA_SASL_PASSWORD environment"),
        (sasl_env(CRYPTOSTREAM_KAFKA__SASL_MECHANISM="GSSAPI"), "", "expected one of"),
        (
            {
                "CRYPTOSTREAM_KAFKA__SECURITY_PROTOCOL": "ssl",
                "CRYPTOSTREAM_KAFKA__SSL_CAFILE": "/nonexistent/ca.pem",
            },
            "",
            "no such file",
        ),
        ({"CRYPTOSTREAM_KAFKA__SSL_CAFILE": __file__}, "", "only used with security_protocol ssl"),
    ],
)
def test_bad_security_settings_are_one_clear_error_without_the_secret(
    tmp_path: Path, env: dict[str, str], toml: str, message: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load(tmp_path, env, toml)
    assert message in str(error.value)
    assert PASSWORD not in str(error.value)


def test_a_password_file_that_cannot_be_read(tmp_path: Path) -> None:
    env = sasl_env(CRYPTOSTREAM_KAFKA__SASL_PASSWORD_FILE=str(tmp_path / "missing"))
    del env["KAFKA_SASL_PASSWORD"]
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path, env)


def test_a_ca_file_that_is_not_pem(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    env = {
        "CRYPTOSTREAM_KAFKA__SECURITY_PROTOCOL": "ssl",
        "CRYPTOSTREAM_KAFKA__SSL_CAFILE": str(bad),
    }
    with pytest.raises(ConfigError, match="cannot be loaded"):
        load(tmp_path, env)
