"""Helpers shared by the harness and the contender processes."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

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
