"""A node's storage, formatted by one ``kafka-storage format`` per version, then copied."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from kafkalocal.common import HOST, TOOL_JVM_OPTS, KafkaLocalError, java_binary, new_uuid
from kafkalocal.jars import cache_dir, classpath, locked

# extra_props keys that may change what ``kafka-storage format`` writes.
FORMAT_AFFECTING = ("unstable.", "controller.quorum.", "process.roles", "log.dir", "metadata.log")
_META_KEYS = {"version", "cluster.id", "node.id", "directory.id"}


def run_storage_format(libs: Path, config: Path, cluster_id: str) -> subprocess.Popen[str]:
    """``kafka-storage format --config CONFIG --cluster-id ID`` (static quorum: no
    ``--standalone`` / ``--initial-controllers``, as ``controller.quorum.voters`` is set)."""
    command = [
        java_binary(),
        *TOOL_JVM_OPTS,
        "-Dlog4j2.level=WARN",
        "-cp",
        classpath(libs),
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


def write_meta_properties(data_dir: Path, cluster_id: str, node_id: int) -> None:
    """``meta.properties`` exactly as ``kafka-storage format`` writes it (version 1)."""
    text = (
        f"#\n#Written by scripts/kafka_local.py\nnode.id={node_id}\n"
        f"directory.id={new_uuid()}\nversion=1\ncluster.id={cluster_id}\n"
    )
    (data_dir / "meta.properties").write_text(text, encoding="utf-8")


def format_template(version: str, libs: Path) -> Path | None:
    """The ``bootstrap.checkpoint`` that StorageTool writes for ``version`` (made once, cached).

    None when the output of StorageTool is not the expected pair of files (then every node is
    formatted by StorageTool itself)."""
    cache = cache_dir(version)
    checkpoint = cache / "format-template" / "bootstrap.checkpoint"
    if checkpoint.is_file():
        return checkpoint
    with locked(cache / ".lock"):
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
            process = run_storage_format(libs, scratch / "server.properties", new_uuid())
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
