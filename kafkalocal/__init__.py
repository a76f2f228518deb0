"""A real Apache Kafka cluster (KRaft mode) on 127.0.0.1, without Docker.

The Kafka broker jars come from Maven Central through ``mvn`` into a cache folder outside
the repository; the brokers are plain ``java`` processes.  Needs Java 17+ (``java``) and
Maven 3.8+ (``mvn``) on PATH.  This package uses the Python standard library only, so
``scripts/kafka_local.py`` (its command line) runs before any virtualenv exists::

    python3 scripts/kafka_local.py fetch
    python3 scripts/kafka_local.py start --nodes 3 --port 9092
    python3 scripts/kafka_local.py status
    python3 scripts/kafka_local.py stop

The test suite and the benchmark import it from the repository root::

    from kafkalocal import KafkaCluster

    with KafkaCluster(nodes=3) as cluster:      # free ports are picked automatically
        servers = cluster.bootstrap_servers     # "127.0.0.1:41233,127.0.0.1:40111,..."
        cluster.kill_node(2)
        cluster.start_node(2)

Every node is a combined broker+controller; all nodes are controller voters (static quorum,
``controller.quorum.voters``).  Node ``i`` (1-based) listens for clients on ``port + i - 1``
and for the controller quorum on ``port + 100 + i - 1``.  A node's config, data, pid file
and logs (``server.log`` from Log4j 2, ``stdout.log`` from the JVM) are in
``<dir>/node-<i>/``.  Readiness is checked over the Kafka protocol itself
(:mod:`kafkalocal.protocol`): every node must answer a Metadata request that lists every
running broker (registered and unfenced).

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

from kafkalocal.cluster import KafkaCluster, class_data_archive
from kafkalocal.common import KAFKA_VERSION, KafkaLocalError
from kafkalocal.jars import cache_dir, fetch, run_tool
from kafkalocal.protocol import ClusterMetadata, probe_metadata

__all__ = [
    "KAFKA_VERSION",
    "ClusterMetadata",
    "KafkaCluster",
    "KafkaLocalError",
    "cache_dir",
    "class_data_archive",
    "fetch",
    "probe_metadata",
    "run_tool",
]
