"""Case 8: secrets never show — not in log lines, errors or tracebacks.

A real broker with a SASL_PLAINTEXT listener (PLAIN and SCRAM users); the
service connects with a username and a password from the environment or a
file, a CoinCap API key is set, and then things go wrong: a task fails with a
traceback, the password is wrong, the broker address is, the configuration is,
the price stream's handshake is redirected in a loop (aiohttp's error then quotes
the URL with the key in it) and rate limited. All output of every run, and every
file the runs wrote, is searched for every secret, in every spelling a renderer
could give it (as is, repr(), JSON-escaped, URL-encoded every usual way).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import socket
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

import kafkalocal
from tests.conftest import free_port, unique, wait_until
from tests.faults.harness import (
    ServiceProcess,
    assert_all_files_exact,
    audit,
    read_topic,
    row_count,
)
from tests.support.fake_coincap import FakeCoinCap, Fault
from tests.support.fake_coincap_ws import FakeCoinCapWs

pytestmark = pytest.mark.faults

# '+', '/' and '=' on purpose (base64-like keys have them): URL encoding changes them
# (%2B, %2F, %3D), so a masker that only knows the raw text misses the key in a URL.
API_KEY = "cc-live+Q7vX/2mN9=pL4sR8tK=="
USER = "cryptostream"
# Non-ASCII on purpose: a JSON renderer escapes it (\u00e4), which a masker that only
# looks for the raw text would miss.
PASSWORD = "Pässwörd-7f3e-9c2a-ßx"
WRONG_PASSWORD = "Wrong-Pässwörd-0b1d-ée"
SCRAM_USER, SCRAM_PASSWORD = "scrammer", "scram-secret-6d21c0ffee"
SECRETS = (API_KEY, PASSWORD, WRONG_PASSWORD, SCRAM_PASSWORD)


def spellings(secret: str) -> set[str]:
    quoted = {
        urllib.parse.quote(secret),
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        # aiohttp's URLs (yarl): '/' stays as is in a query, '+' and '=' are escaped.
        URL("http://h/").with_query({"k": secret}).raw_query_string.removeprefix("k="),
    }
    quoted |= {re.sub("%[0-9A-F]{2}", lambda m: m[0].lower(), form) for form in quoted}
    forms = {secret, repr(secret)[1:-1], *quoted}
    for form in list(forms):
        forms.add(json.dumps(form)[1:-1])
        forms.add(json.dumps(form, ensure_ascii=False)[1:-1])
    return forms


def leaks(text: str) -> list[str]:
    return sorted({form for secret in SECRETS for form in spellings(secret) if form in text})


def java_properties_text(value: str) -> str:
    """Kafka reads server.properties as ISO-8859-1: non-ASCII goes in as \\uXXXX."""
    return "".join(c if ord(c) < 128 else f"\\u{ord(c):04x}" for c in value)


@pytest.fixture(scope="module")
def sasl_kafka() -> Iterator[tuple[Any, str]]:
    """One broker: PLAINTEXT for the test's own clients, SASL_PLAINTEXT for the service."""
    cluster = kafkalocal.KafkaCluster(nodes=1)
    port, controller, sasl = cluster.port_of(1), cluster.controller_port_of(1), free_port()
    plain_jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'user_{USER}="{java_properties_text(PASSWORD)}";'
    )
    scram_jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
    cluster.extra_props = {
        "listeners": (
            f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller},"
            f"SASL_PLAINTEXT://127.0.0.1:{sasl}"
        ),
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port},SASL_PLAINTEXT://127.0.0.1:{sasl}",
        "listener.security.protocol.map": (
            "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
        ),
        "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256",
        "listener.name.sasl_plaintext.plain.sasl.jaas.config": plain_jaas,
        "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config": scram_jaas,
        "group.min.session.timeout.ms": "1000",
    }
    cluster.start(timeout=300)
    try:
        # A SCRAM user, created the way an operator does it (over the plain listener).
        kafkalocal.run_tool(
            "kafka.admin.ConfigCommand",
            [
                "--bootstrap-server",
                f"127.0.0.1:{port}",
                "--alter",
                "--add-config",
                f"SCRAM-SHA-256=[iterations=4096,password={SCRAM_PASSWORD}]",
                "--entity-type",
                "users",
                "--entity-name",
                SCRAM_USER,
            ],
        )
        yield cluster, f"127.0.0.1:{sasl}"
    finally:
        cluster.stop()


def sasl_env(
    fake: FakeCoinCap, bootstrap: str, data_dir: Path, topic: str, **extra: str
) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "PYTHONUNBUFFERED": "1",
        "COINCAP_API_KEY": API_KEY,
        "KAFKA_SASL_PASSWORD": PASSWORD,
        "CRYPTOSTREAM_COINCAP__BASE_URL": fake.base_url,
        "CRYPTOSTREAM_COINCAP__MAX_BACKOFF": "0.2",
        "CRYPTOSTREAM_SOURCE__POLL_INTERVAL": "0.2",
        "CRYPTOSTREAM_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "CRYPTOSTREAM_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "CRYPTOSTREAM_KAFKA__SASL_MECHANISM": "PLAIN",
        "CRYPTOSTREAM_KAFKA__SASL_USERNAME": USER,
        "CRYPTOSTREAM_KAFKA__TOPIC": topic,
        "CRYPTOSTREAM_KAFKA__GROUP_ID": unique("sasl-group"),
        "CRYPTOSTREAM_KAFKA__SESSION_TIMEOUT": "2",
        "CRYPTOSTREAM_KAFKA__REQUEST_TIMEOUT": "3",
        "CRYPTOSTREAM_KAFKA__SEND_TIMEOUT": "5",
        "CRYPTOSTREAM_STORAGE__DATA_DIR": str(data_dir),
        "CRYPTOSTREAM_WEB__PORT": "0",
        "CRYPTOSTREAM_WEB__DASHBOARD": "false",
        "CRYPTOSTREAM_LOG__FORMAT": "json",
        "CRYPTOSTREAM_LOG__LEVEL": "debug",  # everything that could be said, is
        **extra,
    }


def test_the_masker_knows_every_spelling() -> None:
    from cryptostream import logs

    out = io.StringIO()
    logs.configure("debug", "json", secrets=[PASSWORD, 'a"quote\\and-slash'], stream=out)
    log = logs.get_logger("test")
    log.info("event", text=f"password={PASSWORD}", quoted='x="a"quote\\and-slash"')

    def connect(password: str) -> None:
        raise ConnectionError(f"cannot log in with {password!r}")

    try:
        connect(PASSWORD)
    except ConnectionError:
        log.exception("failed")
    text = out.getvalue()
    assert "**********" in text
    for secret in (PASSWORD, 'a"quote\\and-slash'):
        assert not {form for form in spellings(secret) if form in text}, text


@pytest.mark.timeout(240)
async def test_secrets_never_appear_in_logs_errors_or_tracebacks(
    sasl_kafka: tuple[Any, str], tmp_path: Path
) -> None:
    cluster, sasl_bootstrap = sasl_kafka
    topic = unique("sasl")
    data_dir = tmp_path / "data"
    outputs: dict[str, str] = {}
    async with FakeCoinCap(api_key=API_KEY) as fake:
        env = sasl_env(fake, sasl_bootstrap, data_dir, topic)

        # 1. It works: SASL/PLAIN with the password from the environment.
        ok = ServiceProcess(env, tmp_path, "ok")
        await ok.start()
        try:
            await wait_until(lambda: row_count(data_dir / "crypto_data.csv") >= 12, 60, "rows")
            assert await ok.stop() == 0, ok.tail()
        finally:
            await ok.ensure_stopped()
        outputs["sasl plain, password from env"] = ok.output()

        # 2. SCRAM-SHA-256, the password from a file (a Docker/Kubernetes secret).
        secret_file = tmp_path / "kafka-password"
        secret_file.write_text(SCRAM_PASSWORD + "\n")
        scram_env = {
            **env,
            "CRYPTOSTREAM_KAFKA__SASL_MECHANISM": "SCRAM-SHA-256",
            "CRYPTOSTREAM_KAFKA__SASL_USERNAME": SCRAM_USER,
            "CRYPTOSTREAM_KAFKA__SASL_PASSWORD_FILE": str(secret_file),
        }
        del scram_env["KAFKA_SASL_PASSWORD"]
        scram = ServiceProcess(scram_env, tmp_path, "scram")
        await scram.start()
        try:
            rows = row_count(data_dir / "crypto_data.csv")
            await wait_until(
                lambda: row_count(data_dir / "crypto_data.csv") >= rows + 12, 60, "SCRAM rows"
            )
            assert await scram.stop() == 0, scram.tail()
        finally:
            await scram.ensure_stopped()
        outputs["sasl scram, password from file"] = scram.output()

        # 3. A task fails with a traceback while both secrets are loaded and in use.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            failing = ServiceProcess(
                {**env, "CRYPTOSTREAM_WEB__PORT": str(taken.getsockname()[1])}, tmp_path, "task"
            )
            await failing.start()
            assert failing.proc is not None
            assert await asyncio.wait_for(failing.proc.wait(), 60) == 1
        assert failing.events("task_failed")[0].get("exception"), "a traceback was logged"
        outputs["failing task"] = failing.output()

        # 4. The wrong password: the broker refuses, the service retries and says so.
        wrong = ServiceProcess({**env, "KAFKA_SASL_PASSWORD": WRONG_PASSWORD}, tmp_path, "wrong")
        await wrong.start()
        try:
            # Refused at the handshake: both clients say Kafka is unreachable, with
            # the broker's reason (aiokafka's own line is a debug line).
            await wrong.wait_event("kafka_unreachable", count=2, timeout=60)
            causes = {str(e.get("cause")) for e in wrong.events("kafka_unreachable")}
            assert any("SaslAuthenticationFailed" in cause for cause in causes), causes
            await wrong.stop()
        finally:
            await wrong.ensure_stopped()
        outputs["wrong password"] = wrong.output()

        # 5. The wrong address: nothing listens there.
        nowhere = ServiceProcess(
            {**env, "CRYPTOSTREAM_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"},
            tmp_path,
            "nowhere",
        )
        await nowhere.start()
        try:
            await nowhere.wait_event("kafka_unreachable", timeout=60)
            await nowhere.stop()
        finally:
            await nowhere.ensure_stopped()
        outputs["wrong address"] = nowhere.output()

    # 6. The price stream, whose key travels in the URL: a redirect loop (aiohttp's
    # error quotes the URL, key URL-encoded) and a 429, then it streams.
    async with FakeCoinCap(api_key=API_KEY) as fake, FakeCoinCapWs(api_key=API_KEY) as ws:
        ws.inject(
            Fault.status(307, headers={"Location": "/prices"}, path_prefix="/prices", times=20)
        )
        ws.rate_limit(retry_after="1")
        stream_env = {
            **sasl_env(fake, sasl_bootstrap, data_dir, topic),
            "CRYPTOSTREAM_SOURCE__NAME": "coincap-ws",
            "CRYPTOSTREAM_COINCAP__WS_URL": ws.ws_url,
        }
        stream = ServiceProcess(stream_env, tmp_path, "stream")
        await stream.start()
        try:
            await ws.wait_for_handshakes(1, timeout=60)  # through the redirects and the 429
            rows = row_count(data_dir / "crypto_data.csv")
            await wait_until(
                lambda: row_count(data_dir / "crypto_data.csv") >= rows + 12, 60, "stream rows"
            )
            assert await stream.stop() == 0, stream.tail()
        finally:
            await stream.ensure_stopped()
        assert [r.status for r in ws.requests_to("/prices")][-2:] == [429, 101]
    details = [e["detail"] for e in stream.events("ws_disconnected")]
    assert any("TooManyRedirects" in d and "apiKey=" in d for d in details), details
    outputs["price stream, key in the URL"] = stream.output()

    # 7. Bad configurations: one line on stderr, exit 2, and no secret in it.
    no_env_password = {k: v for k, v in env.items() if k != "KAFKA_SASL_PASSWORD"}
    for name, bad_env in {
        "password file missing": {
            **no_env_password,
            "CRYPTOSTREAM_KAFKA__SASL_PASSWORD_FILE": str(tmp_path / "no-such-file"),
        },
        "password twice": {**env, "CRYPTOSTREAM_KAFKA__SASL_PASSWORD_FILE": str(secret_file)},
        "password as a setting": {**env, "CRYPTOSTREAM_KAFKA__SASL_PASSWORD": PASSWORD},
        "no password": no_env_password,
    }.items():
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cryptostream",
            "run",
            env=bad_env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 2, (name, err)
        assert len(err.decode().strip().splitlines()) == 1, (name, err)
        outputs[f"config: {name}"] = (out + err).decode()

    # The files the runs wrote (CSVs, state, dead letters) hold no secret either.
    for path in sorted(data_dir.rglob("*")):
        if path.is_file():
            outputs[f"file {path.relative_to(data_dir)}"] = path.read_bytes().decode(
                "utf-8", errors="replace"
            )
    found = {name: leaks(text) for name, text in outputs.items() if leaks(text)}
    content = await read_topic(cluster.bootstrap_servers, topic)
    figures = audit("secrets", data_dir, content)
    figures.notes.update(
        runs=len(outputs),
        output_lines=sum(text.count("\n") for text in outputs.values()),
        secret_leaks=sum(len(v) for v in found.values()),
    )
    figures.report()
    assert not found, found
    assert_all_files_exact(figures)


@pytest.fixture(scope="module")
def tls_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str, Path]]:
    """One broker with an SSL listener; yields (cluster, its address, the CA's PEM file)."""
    import trustme
    from cryptography.hazmat.primitives import serialization

    certs = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    # Kafka's PEM key store: the key in PKCS#8, then the certificate chain.
    key = serialization.load_pem_private_key(server.private_key_pem.bytes(), password=None)
    pkcs8 = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    keystore = certs / "broker.pem"
    keystore.write_bytes(pkcs8 + b"".join(blob.bytes() for blob in server.cert_chain_pems))
    cafile = certs / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))

    cluster = kafkalocal.KafkaCluster(nodes=1)
    port, controller, tls = cluster.port_of(1), cluster.controller_port_of(1), free_port()
    cluster.extra_props = {
        "listeners": (
            f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller},"
            f"SSL://127.0.0.1:{tls}"
        ),
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port},SSL://127.0.0.1:{tls}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL",
        "listener.name.ssl.ssl.keystore.type": "PEM",
        "listener.name.ssl.ssl.keystore.location": str(keystore),
        "group.min.session.timeout.ms": "1000",
    }
    cluster.start(timeout=300)
    try:
        yield cluster, f"127.0.0.1:{tls}", cafile
    finally:
        cluster.stop()


@pytest.mark.timeout(180)
async def test_tls_to_the_brokers_verified_against_the_configured_ca(
    tls_kafka: tuple[Any, str, Path], tmp_path: Path
) -> None:
    cluster, tls_bootstrap, cafile = tls_kafka
    topic, data_dir = unique("tls"), tmp_path / "data"
    env = {
        "PATH": os.environ["PATH"],
        "CRYPTOSTREAM_SOURCE__NAME": "demo",
        "CRYPTOSTREAM_DEMO__RATE": "100",
        "CRYPTOSTREAM_KAFKA__BOOTSTRAP_SERVERS": tls_bootstrap,
        "CRYPTOSTREAM_KAFKA__SECURITY_PROTOCOL": "SSL",
        "CRYPTOSTREAM_KAFKA__SSL_CAFILE": str(cafile),
        "CRYPTOSTREAM_KAFKA__TOPIC": topic,
        "CRYPTOSTREAM_KAFKA__GROUP_ID": unique("tls-group"),
        "CRYPTOSTREAM_KAFKA__SESSION_TIMEOUT": "2",
        "CRYPTOSTREAM_KAFKA__REQUEST_TIMEOUT": "3",
        "CRYPTOSTREAM_STORAGE__DATA_DIR": str(data_dir),
        "CRYPTOSTREAM_WEB__PORT": "0",
        "CRYPTOSTREAM_WEB__DASHBOARD": "false",
        "CRYPTOSTREAM_LOG__FORMAT": "json",
    }
    svc = ServiceProcess(env, tmp_path, "tls")
    await svc.start()
    try:
        await wait_until(lambda: row_count(data_dir / "crypto_data.csv") >= 300, 60, "TLS rows")
        assert await svc.stop() == 0, svc.tail()
    finally:
        await svc.ensure_stopped()

    # A broker whose certificate the configured CA did not sign is refused, not trusted.
    import trustme

    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    refused = ServiceProcess({**env, "CRYPTOSTREAM_KAFKA__SSL_CAFILE": str(other_ca)}, tmp_path)
    await refused.start()
    try:
        await refused.wait_event("kafka_unreachable", timeout=60)
        # The reason, in our warning (aiokafka's line with it is a debug line).
        causes = [str(e.get("cause")) for e in refused.events("kafka_unreachable")]
        assert any("CERTIFICATE_VERIFY_FAILED" in cause for cause in causes), causes
    finally:
        await refused.ensure_stopped()

    content = await read_topic(cluster.bootstrap_servers, topic)
    figures = audit("tls", data_dir, content)
    figures.report()
    assert_all_files_exact(figures)
