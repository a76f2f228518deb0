#!/usr/bin/env bash
# Stand-in for Apache Kafka's bin/kafka-server-start.sh: kafka.Kafka <server.properties>
set -euo pipefail
if [[ $# -lt 1 ]]; then
    echo "USAGE: $0 [-daemon] server.properties [--override property=value]*" >&2
    exit 1
fi
base_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
export KAFKA_LOG4J_OPTS=${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=$base_dir/config/log4j2.properties}
export KAFKA_HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}
exec "$base_dir/bin/kafka-run-class.sh" -name kafkaServer kafka.Kafka "$@"
