"""Constants and small helpers shared by the modules of :mod:`kafkalocal`."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import sys
from pathlib import Path

KAFKA_VERSION = "4.1.1"
"""Apache Kafka version; docker-compose.yml uses the same one."""

SCALA_VERSION = "2.13"

# Kafka 4.x logs through SLF4J 1.7 into Log4j 2 (the distribution ships slf4j-api 1.7.36,
# log4j-core and log4j-slf4j-impl).  The binding must match the log4j-core version Kafka
# depends on, so it is pinned per Kafka release here.
LOG4J_VERSIONS = {"4.0": "2.24.3", "4.1": "2.24.3"}
DEFAULT_LOG4J_VERSION = "2.24.3"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"

DEFAULT_PORT = 9092
CONTROLLER_PORT_OFFSET = 100
HOST = "127.0.0.1"
DEFAULT_RUN_DIR = Path.home() / ".cache" / "cryptostream" / "run"
POLL_INTERVAL = 0.2
LOG_TAIL_LINES = 40

BROKER_JVM_OPTS = (
    "-Xmx384m",
    "-Xms128m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
TOOL_JVM_OPTS = (
    "-Xmx128m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
)

STATE_FILE = "cluster.json"
PID_FILE = "kafka.pid"
NODE_MARKER = "-Dcryptostream.kafka.node="

LOG4J2_PROPERTIES = """\
# Written by scripts/kafka_local.py: broker logs go to <node dir>/server.log.
status = warn
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
"""


class KafkaLocalError(RuntimeError):
    """Any failure of this tool; the message is meant for humans (one line first)."""


def info(message: str) -> None:
    """Progress message for humans (stderr, so stdout stays machine-readable)."""
    sys.stderr.write(f"kafka_local: {message}\n")
    sys.stderr.flush()


def out(text: str) -> None:
    sys.stdout.write(f"{text}\n")
    sys.stdout.flush()


def which(program: str, hint: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise KafkaLocalError(f"'{program}' not found on PATH; {hint}")
    return found


def java_binary() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file():
            return str(candidate)
    return which("java", "install Java 17+ (e.g. apt-get install openjdk-17-jre-headless)")


def tail_of(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def new_uuid() -> str:
    """A random Kafka Uuid string: url-safe base64 of 16 bytes (``kafka-storage random-uuid``)."""
    while True:
        text = base64.urlsafe_b64encode(os.urandom(16)).decode("ascii").rstrip("=")
        if not text.startswith("-"):  # Kafka avoids these too: they look like CLI flags
            return text


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that are free on 127.0.0.1 right now."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
