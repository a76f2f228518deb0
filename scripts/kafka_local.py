#!/usr/bin/env python3
"""Run a real Apache Kafka cluster (KRaft mode) on 127.0.0.1 without Docker.

    python3 scripts/kafka_local.py fetch | start | stop | status   (--help for more)

The library is the ``kafkalocal`` package at the repository root (the tests and
the benchmark import it too); this file only runs its command line. Standard
library only: it runs with the system Python, before any virtualenv exists.
"""

import sys
from pathlib import Path

# Run as a file, Python puts scripts/ on the path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kafkalocal.cli import main

if __name__ == "__main__":
    sys.exit(main())
