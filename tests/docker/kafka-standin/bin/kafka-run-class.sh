#!/usr/bin/env bash
# Stand-in for Apache Kafka's bin/kafka-run-class.sh.
#
# The real bin/*.sh scripts ship only in Kafka's binary tarball, which is not
# reachable from the CI machine; the jars come from Maven Central instead
# (see ../pom.xml). This wrapper honours the same environment knobs as the
# real script (KAFKA_HEAP_OPTS, KAFKA_JVM_PERFORMANCE_OPTS, KAFKA_OPTS,
# KAFKA_LOG4J_OPTS, KAFKA_GC_LOG_OPTS, KAFKA_JMX_OPTS, JMX_PORT), so
# commands such as the compose healthcheck behave as in apache/kafka.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "USAGE: $0 [-name servicename] [-loggc] classname [opts]" >&2
    exit 1
fi

base_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)

# Accepted for compatibility with the real script; ignored here.
while [[ $# -gt 0 ]]; do
    case $1 in
        -name) shift 2 ;;
        -loggc | -daemon) shift ;;
        *) break ;;
    esac
done

heap_opts=${KAFKA_HEAP_OPTS:--Xmx256M}
perf_opts=${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true}
log4j_opts=${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=$base_dir/config/tools-log4j2.properties}
jmx_opts=${KAFKA_JMX_OPTS:-}
if [[ -n ${JMX_PORT:-} ]]; then
    jmx_opts="${jmx_opts:--Dcom.sun.management.jmxremote -Dcom.sun.management.jmxremote.authenticate=false -Dcom.sun.management.jmxremote.ssl=false} -Dcom.sun.management.jmxremote.port=$JMX_PORT"
fi

# shellcheck disable=SC2086  # the *_OPTS variables are word lists on purpose
exec java $heap_opts $perf_opts ${KAFKA_GC_LOG_OPTS:-} $jmx_opts $log4j_opts \
    "-Dkafka.logs.dir=${LOG_DIR:-$base_dir/logs}" ${KAFKA_OPTS:-} \
    -cp "$base_dir/libs/*" "$@"
