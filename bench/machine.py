"""What the benchmark ran on, and how busy the machine was."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def _filesystem(path: Path) -> str:
    """Filesystem type of the mount holding ``path`` (fsync cost depends on it)."""
    best, kind = "", "unknown"
    target = str(path.resolve())
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) > len(
                best
            ):
                best, kind = mount, fstype
    except OSError:
        pass
    return kind


def kcat_version(kcat: str) -> str:
    out = subprocess.run([kcat, "-V"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"Version (\S+).*?librdkafka (\S+)", out, re.S)
    return f"{found.group(1)} (librdkafka {found.group(2)})" if found else "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe(data_dir: Path, kafka_version: str, kcat: str) -> dict[str, str]:
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count() or 0),
        "memory": f"{_mem_total_gib():.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "filesystem": f"{_filesystem(data_dir)} (data directory)",
        "python": platform.python_version(),
        "kafka": f"Apache Kafka {kafka_version} (one KRaft broker on 127.0.0.1)",
        "kcat": kcat_version(kcat),
        "aiokafka": _version("aiokafka"),
        "orjson": _version("orjson"),
        "quixstreams": _version("quixstreams"),
    }


def load() -> str:
    """``uptime``'s load averages (1, 5, 15 min), for the record next to each figure."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"
