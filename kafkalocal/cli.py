"""The command line: ``python3 scripts/kafka_local.py fetch | start | stop | status``."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from kafkalocal.cluster import KafkaCluster, class_data_archive
from kafkalocal.common import (
    CONTROLLER_PORT_OFFSET,
    DEFAULT_PORT,
    DEFAULT_RUN_DIR,
    KAFKA_VERSION,
    KafkaLocalError,
    info,
    out,
)
from kafkalocal.jars import fetch
from kafkalocal.protocol import probe_metadata


def _cmd_fetch(args: argparse.Namespace) -> int:
    libs = fetch(args.kafka_version, quiet=False)
    info(f"Kafka {args.kafka_version} jars are in {libs}")
    if class_data_archive(args.kafka_version, build=False) is None:
        info("preparing the class data archive (AppCDS) for faster broker starts ...")
        archive = class_data_archive(args.kafka_version)
        info(f"class data archive: {archive or 'not available (brokers start without it)'}")
    out(str(libs))
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
            info(f"already running in {work_dir}")
            out(existing.bootstrap_servers)
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
    info(
        f"starting {args.nodes} Kafka {args.kafka_version} node(s) in {work_dir} "
        f"({'fresh storage' if fresh else 'keeping existing data'}) ..."
    )
    began = time.monotonic()
    cluster.start(timeout=args.timeout, fresh=fresh)
    info(f"ready in {time.monotonic() - began:.1f}s; logs: {work_dir}/node-*/server.log")
    out(cluster.bootstrap_servers)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    work_dir = Path(args.dir).expanduser().resolve()
    cluster = KafkaCluster.attach(work_dir)
    if cluster is None:
        info(f"no cluster in {work_dir}; nothing to stop")
        return 0
    running = cluster.running_node_ids()
    if not running:
        info(f"not running (nothing to stop in {work_dir})")
        return 0
    cluster.stop(timeout=args.timeout)
    info(f"stopped node(s) {running} of {work_dir}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    work_dir = Path(args.dir).expanduser().resolve()
    cluster = KafkaCluster.attach(work_dir)
    if cluster is None:
        raise KafkaLocalError(f"no cluster in {work_dir} (start one with: start --dir {work_dir})")
    out(f"cluster {cluster.cluster_id}  Kafka {cluster.version}  dir {work_dir}")
    up = 0
    for node_id in cluster.node_ids():
        port = cluster.port_of(node_id)
        if cluster.is_running(node_id):
            metadata = probe_metadata(port, timeout=1.0)
            state = "serving" if metadata is not None else "starting/not serving"
            up += 1
            pid = cluster.pid_of(node_id)
            out(
                f"node {node_id}: running (pid {pid}, {state})  port {port}  "
                f"controller port {cluster.controller_port_of(node_id)}"
            )
        else:
            out(f"node {node_id}: stopped  port {port}")
    out(f"bootstrap servers: {cluster.bootstrap_servers}")
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
