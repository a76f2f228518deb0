"""The cryptostream benchmark: ``./scripts/bench`` (see docs/performance.md).

Every contender runs in its own process against the same local Apache Kafka
broker, so their CPU time and memory are their own and measured by the kernel.
"""
