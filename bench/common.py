"""Helpers shared by the harness and the contender processes."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
KAFKA_LOCAL = REPO / "scripts" / "kafka_local.py"

#: The columns of crypto_data.csv; the naive consumer writes them with csv.DictWriter.
COLUMNS = (
    "timestamp",
    "id",
    "symbol",
    "name",
    "priceUsd",
    "changePercent24Hr",
    "firstValue",
    "vwap24Hr",
)


def load_kafka_local() -> ModuleType:
    """Import ``scripts/kafka_local.py`` (not a package) by its path, once."""
    name = "kafka_local"
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(name, KAFKA_LOCAL)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {KAFKA_LOCAL}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def report(result: dict[str, Any]) -> None:
    """A contender's result: one JSON line on stdout, read by the harness."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def now() -> float:
    return time.perf_counter()
