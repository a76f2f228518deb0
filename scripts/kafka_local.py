#!/usr/bin/env python3
"""Run a real Apache Kafka cluster (KRaft mode) on 127.0.0.1 without Docker.

The Kafka broker jars come from Maven Central through ``mvn`` into a cache folder outside
the repository; the brokers are plain ``java`` processes.  Needs Java 17+ (``java``) and
Maven 3.8+ (``mvn``) on PATH; this file uses the Python standard library only, so it runs
before any virtualenv exists.

Command line (see ``--help`` of each command)::

    python3 scripts/kafka_local.py fetch
    python3 scripts/kafka_local.py start --nodes 3 --port 9092
    python3 scripts/kafka_local.py status
    python3 scripts/kafka_local.py stop

Python API (the test suite loads this file by path, see ``tests/support/kafka.py``)::

    with KafkaCluster(nodes=3) as cluster:      # free ports are picked automatically
        servers = cluster.bootstrap_servers     # "127.0.0.1:41233,127.0.0.1:40111,..."
        cluster.kill_node(2)
        cluster.start_node(2)

Every node is a combined broker+controller; all nodes are controller voters (static quorum,
``controller.quorum.voters``).  Node ``i`` (1-based) listens for clients on ``port + i - 1``
and for the controller quorum on ``port + 100 + i - 1``.  A node's config, data, pid file
and logs (``server.log`` from Log4j 2, ``stdout.log`` from the JVM) are in
``<dir>/node-<i>/``.  Readiness is checked over the Kafka protocol itself: every node must
answer a Metadata request that lists every running broker (registered and unfenced).

Start-up speed (it matters to the test suite): storage is formatted by copying the
``bootstrap.checkpoint`` that ``kafka-storage format`` wrote once per version (cached) and
writing ``meta.properties``, instead of one StorageTool JVM per node; and the brokers share
an AppCDS class data archive made once per version and JVM.

Environment:
    CRYPTOSTREAM_KAFKA_CACHE     cache folder for the jars
                                 (default ~/.cache/cryptostream/kafka-<version>)
    CRYPTOSTREAM_KAFKA_JVM_OPTS  extra JVM options for the brokers, appended to the defaults
    CRYPTOSTREAM_KAFKA_CDS=0     do not use (or make) the class data sharing archive
    JAVA_HOME                    Java installation to use (default: ``java`` on PATH)
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

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


# --------------------------------------------------------------------------- helpers


def _info(message: str) -> None:
    """Progress message for humans (stderr, so stdout stays machine-readable)."""
    sys.stderr.write(f"kafka_local: {message}\n")
    sys.stderr.flush()


def _out(text: str) -> None:
    sys.stdout.write(f"{text}\n")
    sys.stdout.flush()


def _which(program: str, hint: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise KafkaLocalError(f"'{program}' not found on PATH; {hint}")
    return found


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file():
            return str(candidate)
    return _which("java", "install Java 17+ (e.g. apt-get install openjdk-17-jre-headless)")


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _new_uuid() -> str:
    """A random Kafka Uuid string: url-safe base64 of 16 bytes (``kafka-storage random-uuid``)."""
    while True:
        text = base64.urlsafe_b64encode(os.urandom(16)).decode("ascii").rstrip("=")
        if not text.startswith("-"):  # Kafka avoids these too: they look like CLI flags
            return text


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
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


def cache_dir(version: str = KAFKA_VERSION) -> Path:
    """Where the jars of ``version`` are cached (``$CRYPTOSTREAM_KAFKA_CACHE`` wins)."""
    configured = os.environ.get("CRYPTOSTREAM_KAFKA_CACHE")
    if configured:
        return Path(configured).expanduser().resolve()
    return Path.home() / ".cache" / "cryptostream" / f"kafka-{version}"


def _log4j_version(version: str) -> str:
    major_minor = ".".join(version.split(".")[:2])
    return LOG4J_VERSIONS.get(major_minor, DEFAULT_LOG4J_VERSION)


def _pom(version: str) -> str:
    log4j = _log4j_version(version)
    return f"""\
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by cryptostream scripts/kafka_local.py: the jars of an Apache Kafka broker. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.cryptostream</groupId>
  <artifactId>kafka-local</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{SCALA_VERSION}</artifactId>
      <version>{version}</version>
    </dependency>
    <!-- Command line tools (TopicCommand, ConsumerGroupCommand, ...) without Connect. -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>{version}</version>
      <exclusions>
        <exclusion>
          <groupId>org.apache.kafka</groupId>
          <artifactId>connect-runtime</artifactId>
        </exclusion>
        <exclusion>
          <groupId>com.fasterxml.jackson.jakarta.rs</groupId>
          <artifactId>jackson-jakarta-rs-json-provider</artifactId>
        </exclusion>
      </exclusions>
    </dependency>
    <!-- SLF4J 1.7 binding to Log4j 2, as in the Kafka distribution. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (serialises parallel fetches and test workers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _libs_complete(libs: Path, version: str) -> bool:
    marker = libs / ".complete"
    try:
        return marker.read_text(encoding="utf-8").strip() == version and any(
            libs.glob(f"kafka_{SCALA_VERSION}-{version}.jar")
        )
    except OSError:
        return False


def fetch(version: str = KAFKA_VERSION, *, quiet: bool = True) -> Path:
    """Download the Kafka jars of ``version`` into the cache (once) and return the libs dir."""
    if int(version.split(".")[0]) < 4:
        raise KafkaLocalError(f"Kafka {version} is not supported: this tool needs Kafka 4.x")
    cache = cache_dir(version)
    libs = cache / "libs"
    if _libs_complete(libs, version):
        return libs
    with _locked(cache / ".lock"):
        if _libs_complete(libs, version):  # another process fetched while we waited
            return libs
        mvn = _which("mvn", "install Maven 3.8+ (e.g. apt-get install maven)")
        if not quiet:
            _info(f"downloading Apache Kafka {version} jars into {libs} (Maven Central) ...")
        pom = cache / "pom.xml"
        pom.write_text(_pom(version), encoding="utf-8")
        staging = Path(tempfile.mkdtemp(prefix="libs.", dir=cache))
        command = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            f"{DEPENDENCY_PLUGIN}:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        try:
            result = subprocess.run(
                command,
                cwd=cache,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                output = "\n".join((result.stdout + result.stderr).splitlines()[-LOG_TAIL_LINES:])
                raise KafkaLocalError(
                    f"mvn failed to fetch Kafka {version} (exit {result.returncode}); "
                    f"command: {shlex.join(command)}\n{output}"
                )
            if not any(staging.glob(f"kafka_{SCALA_VERSION}-{version}.jar")):
                raise KafkaLocalError(f"mvn did not produce kafka_{SCALA_VERSION}-{version}.jar")
            (staging / ".complete").write_text(f"{version}\n", encoding="utf-8")
            if libs.exists():
                shutil.rmtree(libs)
            staging.rename(libs)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return libs


def _classpath(libs: Path) -> str:
    return f"{libs}/*"


def run_tool(
    main_class: str,
    args: Sequence[str],
    *,
    version: str = KAFKA_VERSION,
    timeout: float = 120,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a Java command line tool shipped in the Kafka jars, e.g.

    ``run_tool("org.apache.kafka.tools.TopicCommand", ["--bootstrap-server", s, "--list"])``.
    """
    libs = fetch(version)
    command = [
        _java(),
        *TOOL_JVM_OPTS,
        "-Dlog4j2.level=WARN",
        "-cp",
        _classpath(libs),
        main_class,
        *args,
    ]
    result = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise KafkaLocalError(
            f"{main_class} failed (exit {result.returncode}): "
            f"{(result.stderr or result.stdout).strip()[-2000:]}"
        )
    return result


# ----------------------------------------------------------------- Kafka wire protocol


@dataclass(frozen=True)
class ClusterMetadata:
    """What a broker answers to a Metadata request (only the parts needed here)."""

    brokers: dict[int, int]  # node id -> client port
    cluster_id: str | None
    controller_id: int


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        chunks += chunk
    return bytes(chunks)


def probe_metadata(port: int, host: str = HOST, timeout: float = 2.0) -> ClusterMetadata | None:
    """Ask the broker at ``host:port`` for cluster metadata (Metadata v4, no topics).

    Returns None while it does not answer (not started, still starting, shutting down).
    A broker answers only once it is unfenced and serving clients, and the broker list holds
    only the brokers that are registered and unfenced: so this is a real readiness check.
    """
    correlation_id = 0x4B4C  # "KL"
    client_id = b"kafka-local-probe"
    request = struct.pack(">hhih", 3, 4, correlation_id, len(client_id)) + client_id
    request += struct.pack(">i?", 0, False)  # zero topics, allow_auto_topic_creation=false
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(request)) + request)
            (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
            if not 0 < size <= 1 << 20:  # not a Kafka answer (some other server on the port)
                return None
            data = _recv_exactly(sock, size)
    except OSError:
        return None
    try:
        offset = 0

        def take(fmt: str) -> tuple[int, ...]:
            nonlocal offset
            values = struct.unpack_from(fmt, data, offset)
            offset += struct.calcsize(fmt)
            return values

        def take_string() -> str | None:
            nonlocal offset
            (length,) = take(">h")
            if length < 0:
                return None
            text = data[offset : offset + length].decode("utf-8")
            offset += length
            return text

        (answered_id, _throttle_ms, broker_count) = take(">iii")
        if answered_id != correlation_id:
            return None
        brokers: dict[int, int] = {}
        for _ in range(broker_count):
            (node_id,) = take(">i")
            take_string()  # host
            (broker_port,) = take(">i")
            take_string()  # rack
            brokers[node_id] = broker_port
        cluster_id = take_string()
        (controller_id,) = take(">i")
    except (struct.error, UnicodeDecodeError):
        return None
    return ClusterMetadata(brokers=brokers, cluster_id=cluster_id, controller_id=controller_id)


# ------------------------------------------------------------------ processes by pid


def _process_state(pid: int) -> tuple[str, str] | None:
    """(state letter, command line) of process ``pid``, or None when there is none.

    The command line is empty for a process that is exiting (after the kernel released its
    memory, before it closed its files and sockets), so it still counts as there.
    """
    proc = Path("/proc")
    if proc.is_dir():
        try:
            stat = (proc / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
            raw = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:
            return None
        state = stat.rsplit(")", 1)[-1].split()[0]
        return state, raw.replace(b"\0", b" ").decode("utf-8", "replace")
    ps = shutil.which("ps")  # macOS and other systems without /proc
    if ps is None:
        return None
    result = subprocess.run(
        [ps, "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    fields = result.stdout.strip().split(None, 1)
    if result.returncode != 0 or not fields:
        return None
    return fields[0][:1], fields[1] if len(fields) > 1 else ""


def _process_exists(pid: int) -> bool:
    """A process (not a zombie) with this id exists, even if it is just exiting."""
    state = _process_state(pid)
    return state is not None and state[0] not in {"Z", "X"}


def _read_cmdline(pid: int) -> str | None:
    """The command line of a live process, or None."""
    state = _process_state(pid)
    if state is None or state[0] in {"Z", "X"} or not state[1]:
        return None
    return state[1]


def _pid_matches(pid: int, marker: str) -> bool:
    cmdline = _read_cmdline(pid)
    return cmdline is not None and marker in cmdline


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


# ------------------------------------------------------------------- storage format

# extra_props keys that may change what ``kafka-storage format`` writes.
_FORMAT_AFFECTING = ("unstable.", "controller.quorum.", "process.roles", "log.dir", "metadata.log")
_META_KEYS = {"version", "cluster.id", "node.id", "directory.id"}


def _run_storage_format(libs: Path, config: Path, cluster_id: str) -> subprocess.Popen[str]:
    """``kafka-storage format --config CONFIG --cluster-id ID`` (static quorum: no
    ``--standalone`` / ``--initial-controllers``, as ``controller.quorum.voters`` is set)."""
    command = [
        _java(),
        *TOOL_JVM_OPTS,
        "-Dlog4j2.level=WARN",
        "-cp",
        _classpath(libs),
        "kafka.tools.StorageTool",
        "format",
        "--config",
        str(config),
        "--cluster-id",
        cluster_id,
    ]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return process


def _read_properties(path: Path) -> dict[str, str]:
    props: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "!")) and "=" in line:
            key, _, value = line.partition("=")
            props[key.strip()] = value.strip()
    return props


def _write_meta_properties(data_dir: Path, cluster_id: str, node_id: int) -> None:
    """``meta.properties`` exactly as ``kafka-storage format`` writes it (version 1)."""
    text = (
        f"#\n#Written by scripts/kafka_local.py\nnode.id={node_id}\n"
        f"directory.id={_new_uuid()}\nversion=1\ncluster.id={cluster_id}\n"
    )
    (data_dir / "meta.properties").write_text(text, encoding="utf-8")


def _format_template(version: str, libs: Path) -> Path | None:
    """The ``bootstrap.checkpoint`` that StorageTool writes for ``version`` (made once, cached).

    None when the output of StorageTool is not the expected pair of files (then every node is
    formatted by StorageTool itself)."""
    cache = cache_dir(version)
    checkpoint = cache / "format-template" / "bootstrap.checkpoint"
    if checkpoint.is_file():
        return checkpoint
    with _locked(cache / ".lock"):
        if checkpoint.is_file():
            return checkpoint
        scratch = Path(tempfile.mkdtemp(prefix="format.", dir=cache))
        try:
            data = scratch / "data"
            (scratch / "server.properties").write_text(
                "process.roles=broker,controller\nnode.id=1\n"
                f"controller.quorum.voters=1@{HOST}:9093\n"
                f"listeners=PLAINTEXT://{HOST}:9092,CONTROLLER://{HOST}:9093\n"
                "controller.listener.names=CONTROLLER\n"
                f"log.dirs={data}\n",
                encoding="utf-8",
            )
            process = _run_storage_format(libs, scratch / "server.properties", _new_uuid())
            output, _ = process.communicate()
            if process.returncode != 0:
                raise KafkaLocalError(f"kafka-storage format failed: {output.strip()}")
            files = {path.name for path in data.iterdir()}
            meta = _read_properties(data / "meta.properties")
            if files != {"meta.properties", checkpoint.name} or set(meta) != _META_KEYS:
                return None
            if meta["version"] != "1":
                return None
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            staged = checkpoint.with_suffix(".tmp")
            shutil.copyfile(data / checkpoint.name, staged)
            staged.rename(checkpoint)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return checkpoint


# --------------------------------------------------------------------------- cluster


@dataclass
class _Node:
    node_id: int
    port: int
    controller_port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.directory / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def server_log(self) -> Path:
        return self.directory / "server.log"

    @property
    def stdout_log(self) -> Path:
        return self.directory / "stdout.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / PID_FILE

    @property
    def marker(self) -> str:
        return f"{NODE_MARKER}{self.directory}"

    def pid(self) -> int | None:
        if self.process is not None:
            return self.process.pid
        try:
            return int(self.pid_file.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None

    def log_tail(self) -> str:
        parts = []
        for path in (self.server_log, self.stdout_log):
            tail = _tail(path)
            if tail.strip():
                parts.append(f"--- {path} (tail) ---\n{tail}")
        return "\n".join(parts) or f"(no log output in {self.directory})"


# Clusters with processes this interpreter started (a strong reference: a cluster that a test
# dropped without stop() still gets its brokers stopped when the interpreter exits).
_LIVE_CLUSTERS: set[KafkaCluster] = set()


@atexit.register
def _stop_owned_clusters() -> None:
    """Do not leave brokers behind when a test run ends without calling stop()."""
    for cluster in list(_LIVE_CLUSTERS):
        if cluster.stop_at_exit:
            with contextlib.suppress(Exception):
                cluster.stop(timeout=5)


def _sensible_props(nodes: int) -> dict[str, str]:
    """Replication settings that make sense for a cluster of ``nodes`` brokers."""
    replication = str(min(3, nodes))
    min_isr = "2" if nodes >= 3 else "1"
    return {
        "default.replication.factor": replication,
        "min.insync.replicas": min_isr,
        "offsets.topic.replication.factor": replication,
        "transaction.state.log.replication.factor": replication,
        "transaction.state.log.min.isr": min_isr,
        "share.coordinator.state.topic.replication.factor": replication,
        "share.coordinator.state.topic.min.isr": min_isr,
    }


class KafkaCluster:
    """A local Apache Kafka cluster of ``nodes`` combined broker+controller JVMs.

    ``base_port=None`` picks free ports on 127.0.0.1.  ``work_dir=None`` uses a temporary
    folder that :meth:`stop` deletes; a given ``work_dir`` is kept (logs, data, pid files).
    ``extra_props`` are added to (and override) every node's ``server.properties``.
    """

    def __init__(
        self,
        nodes: int = 1,
        base_port: int | None = None,
        work_dir: Path | None = None,
        version: str = KAFKA_VERSION,
        extra_props: dict[str, str] | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("nodes must be at least 1")
        if base_port is not None and not 1 <= base_port <= 65535 - CONTROLLER_PORT_OFFSET - nodes:
            raise ValueError(f"base_port {base_port} leaves no room for {nodes} node(s)")
        self.nodes = nodes
        self.base_port = base_port
        self.version = version
        self.extra_props = dict(extra_props or {})
        self._temporary = work_dir is None
        self.work_dir = (
            Path(tempfile.mkdtemp(prefix="cryptostream-kafka-"))
            if work_dir is None
            else Path(work_dir).expanduser().resolve()
        )
        self.cluster_id = _new_uuid()
        self.stop_at_exit = True
        self.jvm_options: list[str] = list(BROKER_JVM_OPTS)
        self.use_class_data_sharing = True
        self._class_data: Path | None = None
        self._ports_published = base_port is not None  # ports handed out: keep them
        self._nodes: dict[int, _Node] = {}
        self._libs: Path | None = None
        self._assign_ports()

    # ------------------------------------------------------------------ public API

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:PORT,...`` of every node; known (and fixed) before :meth:`start`."""
        self._ports_published = True
        return ",".join(f"{HOST}:{node.port}" for node in self._nodes.values())

    def node_ids(self) -> list[int]:
        return list(self._nodes)

    def port_of(self, node_id: int) -> int:
        self._ports_published = True
        return self._node(node_id).port

    def controller_port_of(self, node_id: int) -> int:
        return self._node(node_id).controller_port

    def log_path(self, node_id: int) -> Path:
        return self._node(node_id).server_log

    def is_running(self, node_id: int) -> bool:
        node = self._node(node_id)
        if node.process is not None:
            return node.process.poll() is None  # poll() reaps it: no zombies
        pid = node.pid()
        return pid is not None and _pid_matches(pid, node.marker)

    def pid_of(self, node_id: int) -> int | None:
        """The process id of a running node, else None."""
        return self._node(node_id).pid() if self.is_running(node_id) else None

    def running_node_ids(self) -> list[int]:
        return [node_id for node_id in self._nodes if self.is_running(node_id)]

    def start(self, timeout: float = 120, *, fresh: bool = True) -> None:
        """Fetch the jars if needed, format storage, start every node and wait until usable.

        ``fresh=False`` keeps storage that is already formatted (the CLI's persistent mode).
        """
        deadline = time.monotonic() + timeout
        self._prepare()
        if self.running_node_ids():  # started before: start the missing nodes only
            for node_id in self._nodes:
                if not self.is_running(node_id):
                    self._launch(self._nodes[node_id])
            self._wait_ready(list(self._nodes), deadline)
            return
        # Automatic ports nobody has seen yet are picked again if another process took one.
        attempts = 1 if self._ports_published else 3
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(deadline, fresh=fresh)
            except _PortClashError:
                self._kill_all()
                if attempt == attempts:
                    raise
                self._assign_ports()  # another process grabbed one of our free ports
            except BaseException:
                self._kill_all()
                raise
            else:
                return

    def stop(self, timeout: float | None = None) -> None:
        """Stop every node (SIGTERM, then SIGKILL after ``timeout`` seconds); idempotent.

        ``timeout=None``: 30 s, but 2 s for a temporary ``work_dir``, which is deleted anyway
        (the last voters of a 3-node quorum wait ~5 s for a new leader when stopped gently).
        """
        if timeout is None:
            timeout = 2.0 if self._temporary else 30.0
        deadline = time.monotonic() + timeout
        pids = {node_id: self._signal_node(node_id, signal.SIGTERM) for node_id in self._nodes}
        for node_id, pid in pids.items():
            self._wait_gone(node_id, pid, deadline)
        _LIVE_CLUSTERS.discard(self)
        if self._temporary:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node; returns once the process is gone."""
        pid = self._signal_node(node_id, signal.SIGKILL)
        self._wait_gone(node_id, pid, time.monotonic() + 30)

    def stop_node(self, node_id: int, timeout: float = 30) -> None:
        """Stop one node gracefully (SIGTERM; SIGKILL if it is still there after ``timeout``)."""
        pid = self._signal_node(node_id, signal.SIGTERM)
        self._wait_gone(node_id, pid, time.monotonic() + timeout)

    def start_node(self, node_id: int, timeout: float = 60) -> None:
        """(Re)start a stopped or killed node on its old storage and wait until it serves."""
        node = self._node(node_id)
        self._prepare()
        deadline = time.monotonic() + timeout
        if not self.is_running(node_id):
            self._launch(node)
        self._wait_ready([node_id], deadline)

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until every running node serves metadata that lists every running node."""
        self._wait_ready(self.running_node_ids(), time.monotonic() + timeout)

    def __enter__(self) -> KafkaCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        ports = ",".join(str(node.port) for node in self._nodes.values())
        return f"KafkaCluster(nodes={self.nodes}, ports={ports}, work_dir={str(self.work_dir)!r})"

    # ------------------------------------------------------------ persistent state

    def save_state(self) -> None:
        state = {
            "version": self.version,
            "nodes": self.nodes,
            "base_port": self.base_port,
            "cluster_id": self.cluster_id,
            "ports": {
                str(node.node_id): [node.port, node.controller_port]
                for node in self._nodes.values()
            },
            "extra_props": self.extra_props,
        }
        self.work_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", "utf-8")

    @classmethod
    def attach(cls, work_dir: Path) -> KafkaCluster | None:
        """The cluster described by ``work_dir/cluster.json`` (started earlier), or None."""
        work_dir = Path(work_dir).expanduser().resolve()
        try:
            state = json.loads((work_dir / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        cluster = cls(
            nodes=int(state["nodes"]),
            base_port=state.get("base_port"),
            work_dir=work_dir,
            version=str(state.get("version", KAFKA_VERSION)),
            extra_props={str(k): str(v) for k, v in dict(state.get("extra_props", {})).items()},
        )
        cluster.cluster_id = str(state["cluster_id"])
        for key, (port, controller_port) in dict(state["ports"]).items():
            node = cluster._nodes[int(key)]
            node.port, node.controller_port = int(port), int(controller_port)
        cluster.stop_at_exit = False
        return cluster

    # --------------------------------------------------------------------- internals

    def _prepare(self) -> None:
        if self._libs is None:
            self._libs = fetch(self.version)
            if self.use_class_data_sharing:
                self._class_data = class_data_archive(self.version)

    def _node(self, node_id: int) -> _Node:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise KeyError(f"no node {node_id}; nodes are {self.node_ids()}") from None

    def _assign_ports(self) -> None:
        if self.base_port is None:
            ports = _free_ports(2 * self.nodes)
            clients, controllers = ports[: self.nodes], ports[self.nodes :]
        else:
            clients = [self.base_port + i for i in range(self.nodes)]
            controllers = [self.base_port + CONTROLLER_PORT_OFFSET + i for i in range(self.nodes)]
        self._nodes = {
            i + 1: _Node(
                node_id=i + 1,
                port=clients[i],
                controller_port=controllers[i],
                directory=self.work_dir / f"node-{i + 1}",
            )
            for i in range(self.nodes)
        }

    def _properties(self, node: _Node) -> dict[str, str]:
        voters = ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in self._nodes.values())
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(node.data_dir),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            # Light on a small machine: several nodes share two cores and a few GB.
            "num.network.threads": "2",
            "num.io.threads": "4",
            "background.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.num.partitions": "10",
            # A killed broker is noticed (and may register again) after 5 s instead of 9 s.
            "broker.heartbeat.interval.ms": "1000",
            "broker.session.timeout.ms": "5000",
            **_sensible_props(self.nodes),
        }
        props.update(self.extra_props)
        return props

    def _write_configs(self) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES, encoding="utf-8")
        for node in self._nodes.values():
            node.directory.mkdir(parents=True, exist_ok=True)
            lines = [f"# Written by scripts/kafka_local.py for node {node.node_id}."]
            lines += [f"{key}={value}" for key, value in self._properties(node).items()]
            node.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.save_state()

    def _format(self, fresh: bool) -> None:
        """Format the storage of every node that has none (``fresh``: of every node).

        ``kafka-storage format`` on a static quorum writes two files per node: the same
        ``bootstrap.checkpoint`` (initial feature levels) and a ``meta.properties`` naming the
        cluster, node and directory ids.  The checkpoint is made once per Kafka version by
        StorageTool and cached, saving one JVM start per node per cluster start.  Settings that
        could change what the format writes fall back to running StorageTool for each node.
        """
        assert self._libs is not None
        todo: list[_Node] = []
        for node in self._nodes.values():
            if fresh and node.data_dir.exists():
                shutil.rmtree(node.data_dir)
            if not (node.data_dir / "meta.properties").exists():
                todo.append(node)
        if not todo:
            return
        affecting = [key for key in self.extra_props if key.startswith(_FORMAT_AFFECTING)]
        template = None if affecting else _format_template(self.version, self._libs)
        if template is not None:
            for node in todo:
                node.data_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(template, node.data_dir / template.name)
                _write_meta_properties(node.data_dir, self.cluster_id, node.node_id)
            return
        running = [
            (node, _run_storage_format(self._libs, node.config, self.cluster_id)) for node in todo
        ]
        errors = []
        for node, process in running:
            output, _ = process.communicate()
            if process.returncode != 0:
                errors.append(f"node {node.node_id}: {output.strip()}")
        if errors:
            raise KafkaLocalError("formatting Kafka storage failed:\n" + "\n".join(errors))

    @staticmethod
    def _check_ports(node: _Node, wait: float = 0.0) -> None:
        """Raise unless the node's ports are free (waiting up to ``wait`` s for them)."""
        deadline = time.monotonic() + wait
        for port in (node.port, node.controller_port):
            while not _port_is_free(port) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not _port_is_free(port):
                raise _PortClashError(
                    f"port {port} on {HOST} is already in use (another Kafka running? "
                    "stop it or use other ports)"
                )

    def _launch(self, node: _Node) -> None:
        assert self._libs is not None
        self._check_ports(node, wait=3.0)  # a node killed just now may still hold them
        extra_jvm = shlex.split(os.environ.get("CRYPTOSTREAM_KAFKA_JVM_OPTS", ""))
        command = [
            _java(),
            *self.jvm_options,
            *([f"-XX:SharedArchiveFile={self._class_data}"] if self._class_data else []),
            *extra_jvm,
            f"{NODE_MARKER}{node.directory}",
            f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={node.directory}",
            "-cp",
            _classpath(self._libs),
            "kafka.Kafka",
            str(node.config),
        ]
        with node.stdout_log.open("ab") as stdout:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            stdout.write(f"\n==== {stamp} starting node {node.node_id} ====\n".encode())
            stdout.flush()
            node.process = subprocess.Popen(
                command,
                cwd=node.directory,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # detached: no terminal signals, survives the CLI
                close_fds=True,
            )
        node.pid_file.write_text(f"{node.process.pid}\n", encoding="utf-8")
        _LIVE_CLUSTERS.add(self)

    def _start_once(self, deadline: float, *, fresh: bool) -> None:
        for node in self._nodes.values():
            self._check_ports(node)
        self._write_configs()
        self._format(fresh)
        for node in self._nodes.values():
            self._launch(node)
        self._wait_ready(list(self._nodes), deadline)

    def _wait_ready(self, node_ids: list[int], deadline: float) -> None:
        """Until each of ``node_ids`` answers with all running nodes, and every running node
        lists each of ``node_ids``.  Raises with the log tail when a node dies meanwhile."""
        waiting_for = set(node_ids)
        while True:
            running = set(self.running_node_ids())
            for node_id in waiting_for - running:
                self._raise_died(node_id)
            problems: list[str] = []
            for node_id in sorted(running):
                metadata = probe_metadata(self._nodes[node_id].port)
                if metadata is None:
                    problems.append(f"node {node_id} does not answer yet")
                    continue
                if metadata.cluster_id != self.cluster_id:
                    raise KafkaLocalError(
                        f"port {self._nodes[node_id].port} is served by another Kafka cluster "
                        f"({metadata.cluster_id}, expected {self.cluster_id})"
                    )
                expected = running if node_id in waiting_for else waiting_for
                missing = expected - set(metadata.brokers)
                if missing:
                    problems.append(f"node {node_id} does not list node(s) {sorted(missing)}")
            if not problems:
                return
            if time.monotonic() >= deadline:
                tails = "\n".join(self._nodes[n].log_tail() for n in sorted(waiting_for))
                raise KafkaLocalError(f"Kafka not ready in time ({'; '.join(problems)})\n{tails}")
            time.sleep(POLL_INTERVAL)

    def _raise_died(self, node_id: int) -> None:
        node = self._nodes[node_id]
        code = node.process.returncode if node.process is not None else None
        tail = node.log_tail()
        if "Address already in use" in tail or "Socket server failed to bind" in tail:
            raise _PortClashError(f"Kafka node {node_id} could not bind its ports\n{tail}")
        raise KafkaLocalError(
            f"Kafka node {node_id} died during start (exit code {code}); log: {node.directory}\n"
            f"{tail}"
        )

    def _signal_node(self, node_id: int, signum: int) -> int | None:
        """Send ``signum`` to the node's process: its pid, or None when it does not run."""
        node = self._node(node_id)
        if node.process is not None:
            if node.process.poll() is not None:
                return None
            with contextlib.suppress(ProcessLookupError):
                node.process.send_signal(signum)
            return node.process.pid
        pid = node.pid()
        if pid is None or not _pid_matches(pid, node.marker):
            return None
        _signal(pid, signum)
        return pid

    def _gone(self, node: _Node, pid: int | None) -> bool:
        if node.process is not None:
            return node.process.poll() is not None  # poll() reaps our own child
        return pid is None or not _process_exists(pid)

    def _wait_gone(self, node_id: int, pid: int | None, deadline: float) -> None:
        """Wait until the process ``pid`` of the node is gone (its sockets closed too);
        SIGKILL it at ``deadline``."""
        node = self._node(node_id)
        killed = False
        while not self._gone(node, pid):
            if not killed and time.monotonic() >= deadline:
                if node.process is not None:
                    with contextlib.suppress(ProcessLookupError):
                        node.process.kill()
                elif pid is not None:
                    _signal(pid, signal.SIGKILL)
                killed = True
                deadline = time.monotonic() + 10
            elif killed and time.monotonic() >= deadline:
                raise KafkaLocalError(f"Kafka node {node_id} (pid {pid}) does not die")
            time.sleep(0.05)
        if node.process is not None:
            node.process.wait()
            node.process = None
        with contextlib.suppress(OSError):
            node.pid_file.unlink()

    def _kill_all(self) -> None:
        pids = {node_id: self._signal_node(node_id, signal.SIGKILL) for node_id in self._nodes}
        for node_id, pid in pids.items():
            with contextlib.suppress(KafkaLocalError):
                self._wait_gone(node_id, pid, time.monotonic() + 10)


class _PortClashError(KafkaLocalError):
    """A port was taken by someone else (retried with new ports when they were automatic)."""


# ------------------------------------------------------------- class data sharing


def _java_fingerprint() -> str:
    """Identifies the JVM binary (an AppCDS archive only fits the JVM that wrote it)."""
    java = Path(_java()).resolve()
    release = java.parent.parent / "release"
    parts = [str(java), str(java.stat().st_mtime_ns)]
    with contextlib.suppress(OSError):
        parts.append(release.read_text(encoding="utf-8", errors="replace"))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def class_data_archive(version: str = KAFKA_VERSION, *, build: bool = True) -> Path | None:
    """An AppCDS archive of the classes a broker loads, so broker JVMs start ~0.5 s faster.

    Made once per Kafka version and JVM (one 1-node training start, a few seconds) in the
    cache.  Best effort: None when disabled (``CRYPTOSTREAM_KAFKA_CDS=0``) or not possible;
    a JVM that cannot use the archive ignores it.
    """
    if os.environ.get("CRYPTOSTREAM_KAFKA_CDS", "1").strip().lower() in {"0", "false", "no"}:
        return None
    fetch(version)
    cds = cache_dir(version) / "cds"
    archive = cds / f"broker-{_java_fingerprint()}.jsa"
    failed = archive.with_suffix(".failed")  # a failed training is tried again after a day
    if archive.is_file():
        return archive
    if not build or (failed.exists() and time.time() - failed.stat().st_mtime < 86400):
        return None
    with _locked(cache_dir(version) / ".cds.lock"):
        if archive.is_file():
            return archive
        cds.mkdir(parents=True, exist_ok=True)
        staged = cds / f"{archive.stem}.{os.getpid()}.tmp.jsa"
        trainer = KafkaCluster(nodes=1, version=version)
        trainer.use_class_data_sharing = False
        trainer.jvm_options.append(f"-XX:ArchiveClassesAtExit={staged}")
        try:
            try:
                trainer.start(timeout=90)
            finally:
                trainer.stop(timeout=30)  # the JVM writes the archive when it exits
        except KafkaLocalError as error:
            failed.write_text(f"{error}\n", encoding="utf-8")
        if staged.is_file() and staged.stat().st_size > 0:
            staged.rename(archive)
        else:
            staged.unlink(missing_ok=True)
            if not failed.exists():
                failed.write_text("the JVM wrote no class data archive\n", encoding="utf-8")
    return archive if archive.is_file() else None


# ------------------------------------------------------------------------------- CLI


def _cmd_fetch(args: argparse.Namespace) -> int:
    libs = fetch(args.kafka_version, quiet=False)
    _info(f"Kafka {args.kafka_version} jars are in {libs}")
    if class_data_archive(args.kafka_version, build=False) is None:
        _info("preparing the class data archive (AppCDS) for faster broker starts ...")
        archive = class_data_archive(args.kafka_version)
        _info(f"class data archive: {archive or 'not available (brokers start without it)'}")
    _out(str(libs))
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    work_dir = Path(args.dir).expanduser().resolve()
    extra: dict[str, str] = {}
    if args.partitions is not None:
        extra["num.partitions"] = str(args.partitions)
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise KafkaLocalError(f"--set needs KEY=VALUE, got {item!r}")
        extra[key.strip()] = value.strip()

    existing = KafkaCluster.attach(work_dir)
    fresh = args.fresh or existing is None
    if existing is not None:
        running = existing.running_node_ids()
        same = existing.nodes == args.nodes and existing.base_port == args.port
        if running and same and len(running) == existing.nodes and not args.fresh:
            existing.wait_ready(timeout=args.timeout)
            _info(f"already running in {work_dir}")
            _out(existing.bootstrap_servers)
            return 0
        if running:
            raise KafkaLocalError(
                f"a Kafka cluster is already running from {work_dir} (nodes {running}); "
                f"run: {sys.argv[0]} stop --dir {work_dir}"
            )
        if existing.nodes != args.nodes and not args.fresh:
            raise KafkaLocalError(
                f"{work_dir} holds data of a {existing.nodes}-node cluster; "
                "add --fresh to wipe it, or use another --dir"
            )
    cluster = KafkaCluster(
        nodes=args.nodes,
        base_port=args.port,
        work_dir=work_dir,
        extra_props=extra,
        version=args.kafka_version,
    )
    if existing is not None and not fresh:
        cluster.cluster_id = existing.cluster_id
    cluster.stop_at_exit = False
    if fresh and work_dir.exists():
        for child in work_dir.glob("node-*"):
            shutil.rmtree(child, ignore_errors=True)
    fetch(args.kafka_version, quiet=False)
    _info(
        f"starting {args.nodes} Kafka {args.kafka_version} node(s) in {work_dir} "
        f"({'fresh storage' if fresh else 'keeping existing data'}) ..."
    )
    began = time.monotonic()
    cluster.start(timeout=args.timeout, fresh=fresh)
    _info(f"ready in {time.monotonic() - began:.1f}s; logs: {work_dir}/node-*/server.log")
    _out(cluster.bootstrap_servers)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    work_dir = Path(args.dir).expanduser().resolve()
    cluster = KafkaCluster.attach(work_dir)
    if cluster is None:
        _info(f"no cluster in {work_dir}; nothing to stop")
        return 0
    running = cluster.running_node_ids()
    if not running:
        _info(f"not running (nothing to stop in {work_dir})")
        return 0
    cluster.stop(timeout=args.timeout)
    _info(f"stopped node(s) {running} of {work_dir}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    work_dir = Path(args.dir).expanduser().resolve()
    cluster = KafkaCluster.attach(work_dir)
    if cluster is None:
        raise KafkaLocalError(f"no cluster in {work_dir} (start one with: start --dir {work_dir})")
    _out(f"cluster {cluster.cluster_id}  Kafka {cluster.version}  dir {work_dir}")
    up = 0
    for node_id in cluster.node_ids():
        port = cluster.port_of(node_id)
        if cluster.is_running(node_id):
            metadata = probe_metadata(port, timeout=1.0)
            state = "serving" if metadata is not None else "starting/not serving"
            up += 1
            pid = cluster.pid_of(node_id)
            _out(
                f"node {node_id}: running (pid {pid}, {state})  port {port}  "
                f"controller port {cluster.controller_port_of(node_id)}"
            )
        else:
            _out(f"node {node_id}: stopped  port {port}")
    _out(f"bootstrap servers: {cluster.bootstrap_servers}")
    if up != cluster.nodes:
        raise KafkaLocalError(f"{up} of {cluster.nodes} node(s) running")
    return 0


_HELP_DESCRIPTION = f"""\
Run a real Apache Kafka {KAFKA_VERSION} cluster on 127.0.0.1 without Docker: KRaft mode,
every node a combined broker+controller and a controller voter. Needs java (17+) and mvn
on PATH. The jars come from Maven Central into a cache outside the repository."""

_HELP_EPILOG = """\
examples:
  python3 scripts/kafka_local.py fetch                # download the jars once
  python3 scripts/kafka_local.py start                # 1 node on 127.0.0.1:9092
  python3 scripts/kafka_local.py start --nodes 3      # 9092-9094, controllers 9192-9194
  export KAFKA_BOOTSTRAP_SERVERS=$(python3 scripts/kafka_local.py start --nodes 3)
  python3 scripts/kafka_local.py status
  python3 scripts/kafka_local.py stop

Kafka's own command line tools run from the cache, e.g.:
  java -cp "$(python3 scripts/kafka_local.py fetch)/*" org.apache.kafka.tools.TopicCommand \\
      --bootstrap-server 127.0.0.1:9092 --create --topic prices --partitions 3

broker settings: auto.create.topics.enable=false (create topics explicitly),
  group.initial.rebalance.delay.ms=0; 1 node: every replication factor and min ISR 1;
  2 nodes: replication factor 2, min ISR 1; 3+ nodes: replication factor 3, min ISR 2
  (default.replication.factor, min.insync.replicas, offsets/transaction/share-state topics).
  Override any of them with --set KEY=VALUE.

environment:
  CRYPTOSTREAM_KAFKA_CACHE     jar cache (default ~/.cache/cryptostream/kafka-<version>)
  CRYPTOSTREAM_KAFKA_JVM_OPTS  more broker JVM options, after the defaults (-Xmx384m ...)
  CRYPTOSTREAM_KAFKA_CDS=0     no class data sharing archive (it makes brokers start faster)
  JAVA_HOME                    the Java to use (default: java on PATH)

exit codes: 0 ok; 1 failure, with a one-line reason on stderr (details, such as the tail of
  a broker log, follow on the next lines); `status` exits 1 unless every node runs."""


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="kafka_local.py",
        description=_HELP_DESCRIPTION,
        epilog=_HELP_EPILOG,
        formatter_class=raw,
    )
    parser.add_argument(
        "--kafka-version",
        default=KAFKA_VERSION,
        metavar="VERSION",
        help=f"Apache Kafka version, 4.x (default {KAFKA_VERSION})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fetch_parser = commands.add_parser(
        "fetch",
        help="download the Kafka jars into the cache (skipped when present)",
        description=(
            "Download the Kafka jars into the cache (skipped when present) and prepare the class\n"
            "data archive that makes brokers start faster. Prints the folder of the jars."
        ),
        epilog='example: java -cp "$(python3 scripts/kafka_local.py fetch)/*" CLASS ARGS...',
        formatter_class=raw,
    )
    fetch_parser.set_defaults(handler=_cmd_fetch)

    dir_help = f"folder for configs, data, logs and pid files (default {DEFAULT_RUN_DIR})"
    start_parser = commands.add_parser(
        "start",
        help="start a cluster in the background and print its bootstrap servers",
        description=f"""\
Start N nodes in the background (detached from the terminal; configs, data, logs and
pid files in DIR), wait until every node serves metadata that lists all brokers, then
print the bootstrap servers: the only line on stdout. Node i listens for clients on
PORT+i-1 and for the controller quorum on PORT+{CONTROLLER_PORT_OFFSET}+i-1. The data in DIR is
kept from one start to the next unless --fresh. Broker logs: DIR/node-<i>/server.log.""",
        epilog="""\
examples:
  python3 scripts/kafka_local.py start --nodes 3 --port 19092 --dir /tmp/kafka3
  python3 scripts/kafka_local.py start --partitions 3 --set log.retention.hours=1 --fresh""",
        formatter_class=raw,
    )
    start_parser.add_argument("--nodes", type=int, default=1, help="number of nodes (default 1)")
    start_parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"client port of node 1 (default {DEFAULT_PORT})",
    )
    start_parser.add_argument("--dir", default=str(DEFAULT_RUN_DIR), help=dir_help)
    start_parser.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="partitions of a new topic that does not say (num.partitions, default 1)",
    )
    start_parser.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="broker property for every node (repeatable)",
    )
    start_parser.add_argument(
        "--fresh", action="store_true", help="wipe the data of an earlier cluster in DIR first"
    )
    start_parser.add_argument(
        "--timeout", type=float, default=120, help="seconds to wait for readiness (default 120)"
    )
    start_parser.set_defaults(handler=_cmd_start)

    stop_parser = commands.add_parser(
        "stop",
        help="stop the cluster started from DIR (idempotent)",
        description="SIGTERM every node started from DIR; SIGKILL the ones left after --timeout.",
        epilog="example: python3 scripts/kafka_local.py stop --dir /tmp/kafka3",
        formatter_class=raw,
    )
    stop_parser.add_argument("--dir", default=str(DEFAULT_RUN_DIR), help=dir_help)
    stop_parser.add_argument(
        "--timeout", type=float, default=30, help="seconds before SIGKILL (default 30)"
    )
    stop_parser.set_defaults(handler=_cmd_stop)

    status_parser = commands.add_parser(
        "status",
        help="show which nodes run, and their ports",
        description="Show the nodes of the cluster in DIR; exit 1 unless every one of them runs.",
        epilog="example: python3 scripts/kafka_local.py status --dir /tmp/kafka3",
        formatter_class=raw,
    )
    status_parser.add_argument("--dir", default=str(DEFAULT_RUN_DIR), help=dir_help)
    status_parser.set_defaults(handler=_cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "nodes", 1) < 1:
        sys.stderr.write("kafka_local: error: --nodes must be at least 1\n")
        return 1
    try:
        return int(args.handler(args))
    except (KafkaLocalError, ValueError, OSError) as error:
        lines = str(error).splitlines() or [type(error).__name__]
        sys.stderr.write(f"kafka_local: error: {lines[0]}\n")
        if len(lines) > 1:
            sys.stderr.write("\n".join(lines[1:]) + "\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("kafka_local: interrupted\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
