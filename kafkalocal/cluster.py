"""Kafka nodes as background ``java`` processes: a cluster to start, stop, kill, restart."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from kafkalocal.common import (
    BROKER_JVM_OPTS,
    CONTROLLER_PORT_OFFSET,
    HOST,
    KAFKA_VERSION,
    LOG4J2_PROPERTIES,
    NODE_MARKER,
    PID_FILE,
    POLL_INTERVAL,
    STATE_FILE,
    KafkaLocalError,
    free_ports,
    java_binary,
    new_uuid,
    port_is_free,
    tail_of,
)
from kafkalocal.jars import cache_dir, classpath, fetch, locked
from kafkalocal.procs import pid_matches, process_exists, send_signal
from kafkalocal.protocol import probe_metadata
from kafkalocal.storage import (
    FORMAT_AFFECTING,
    format_template,
    run_storage_format,
    write_meta_properties,
)


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
            tail = tail_of(path)
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
        self.cluster_id = new_uuid()
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

    def data_dir_of(self, node_id: int) -> Path:
        """The node's ``log.dirs``: one folder of segment files per partition it holds."""
        return self._node(node_id).data_dir

    def is_running(self, node_id: int) -> bool:
        node = self._node(node_id)
        if node.process is not None:
            return node.process.poll() is None  # poll() reaps it: no zombies
        pid = node.pid()
        return pid is not None and pid_matches(pid, node.marker)

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
            ports = free_ports(2 * self.nodes)
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
        affecting = [key for key in self.extra_props if key.startswith(FORMAT_AFFECTING)]
        template = None if affecting else format_template(self.version, self._libs)
        if template is not None:
            for node in todo:
                node.data_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(template, node.data_dir / template.name)
                write_meta_properties(node.data_dir, self.cluster_id, node.node_id)
            return
        running = [
            (node, run_storage_format(self._libs, node.config, self.cluster_id)) for node in todo
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
            while not port_is_free(port) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not port_is_free(port):
                raise _PortClashError(
                    f"port {port} on {HOST} is already in use (another Kafka running? "
                    "stop it or use other ports)"
                )

    def _launch(self, node: _Node) -> None:
        assert self._libs is not None
        self._check_ports(node, wait=3.0)  # a node killed just now may still hold them
        extra_jvm = shlex.split(os.environ.get("CRYPTOSTREAM_KAFKA_JVM_OPTS", ""))
        command = [
            java_binary(),
            *self.jvm_options,
            *([f"-XX:SharedArchiveFile={self._class_data}"] if self._class_data else []),
            *extra_jvm,
            f"{NODE_MARKER}{node.directory}",
            f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={node.directory}",
            "-cp",
            classpath(self._libs),
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
        if pid is None or not pid_matches(pid, node.marker):
            return None
        send_signal(pid, signum)
        return pid

    def _gone(self, node: _Node, pid: int | None) -> bool:
        if node.process is not None:
            return node.process.poll() is not None  # poll() reaps our own child
        return pid is None or not process_exists(pid)

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
                    send_signal(pid, signal.SIGKILL)
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


def _java_fingerprint() -> str:
    """Identifies the JVM binary (an AppCDS archive only fits the JVM that wrote it)."""
    java = Path(java_binary()).resolve()
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
    with locked(cache_dir(version) / ".cds.lock"):
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
