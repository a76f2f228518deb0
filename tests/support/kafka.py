"""Use ``scripts/kafka_local.py`` (real Apache Kafka brokers, no Docker) from the tests.

``scripts/`` is not a package, so the script is imported by file path::

    from tests.support.kafka import load_kafka_local

    kafka_local = load_kafka_local()
    with kafka_local.KafkaCluster(nodes=3) as cluster:
        bootstrap = cluster.bootstrap_servers
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[2]
KAFKA_LOCAL_PATH = REPO_ROOT / "scripts" / "kafka_local.py"
_MODULE_NAME = "kafka_local"


def load_kafka_local() -> ModuleType:
    """Import ``scripts/kafka_local.py`` once and return the module.

    It provides ``KafkaCluster``, ``fetch``, ``probe_metadata``, ``run_tool`` and
    ``KAFKA_VERSION``.
    """
    module = sys.modules.get(_MODULE_NAME)
    if module is not None and getattr(module, "__file__", None) == str(KAFKA_LOCAL_PATH):
        return module
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, KAFKA_LOCAL_PATH)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {KAFKA_LOCAL_PATH}")
    module = importlib.util.module_from_spec(spec)
    # Registered before running it: dataclasses look their module up in sys.modules.
    sys.modules[_MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_MODULE_NAME]
        raise
    return module
