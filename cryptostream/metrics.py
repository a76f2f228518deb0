"""Prometheus metrics of one service instance (its own registry, so tests can run several).

Every metric name gets the ``cryptostream_`` prefix (and a counter the ``_total`` suffix).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        counter, gauge = self._counter, self._gauge
        # fetcher
        self.api_requests = counter("api_requests", "Price API requests by outcome", "outcome")
        self.ticks_fetched = counter("ticks_fetched", "Valid ticks received from the price API")
        self.ticks_invalid = counter(
            "ticks_invalid", "API records skipped as invalid, by reason", "reason"
        )
        self.polls_missed = counter(
            "polls_missed", "Poll slots skipped because an earlier poll ran past them"
        )
        # price sources and failover (source/)
        self.source_requests = counter(
            "source_requests",
            "Requests to each price source, by outcome (HTTP status or error kind)",
            "source",
            "outcome",
        )
        self.source_switches = counter(
            "source_switches", "Failover switches from one price source to another", "from", "to"
        )
        self.source_active = gauge(
            "source_active",
            "1 for the price source whose ticks are used now, 0 for the others",
            "source",
        )
        self.source_healthy = gauge(
            "source_healthy",
            "1 when the source's last request or frame succeeded, 0 while it fails",
            "source",
        )
        self.ticks_repeated = counter(
            "ticks_repeated",
            "Ticks not emitted because the source repeated an observation it had already given",
            "source",
        )
        self.ws_reconnects = counter(
            "ws_reconnects",
            "Price-stream reconnects, by reason (closed, error, silent, handshake)",
            "reason",
        )
        self.ws_malformed_frames = counter(
            "ws_malformed_frames", "Price-stream frames skipped as malformed, by reason", "reason"
        )
        self.assets_unknown = gauge(
            "assets_unknown",
            "1 for a configured asset the source's answers lack (for CoinCap: an id it "
            "does not know), 0 once it is priced",
            "source",
            "asset",
        )
        self.clock_skew = gauge(
            "clock_skew_seconds",
            "How far the source's clock is ahead of this machine's (negative: behind), "
            "from its newest answer",
            "source",
        )
        # CoinCap credits (credits/)
        self.coincap_credits = counter(
            "coincap_credits",
            "CoinCap credits this process spent, by kind (poll, refresh, backfill, stream)",
            "kind",
        )
        self.coincap_credits_used = gauge(
            "coincap_credits_used",
            "CoinCap credits used in the current billing period (every process of this "
            "data directory)",
        )
        self.coincap_credits_budget = gauge(
            "coincap_credits_budget",
            "coincap.monthly_credits: the budget per billing period (0 = no limit)",
        )
        self.coincap_credits_projected = gauge(
            "coincap_credits_projected",
            "CoinCap credits the billing period will have used at its end, at the current rate",
        )
        self.coincap_exhausted = gauge(
            "coincap_exhausted",
            "1 while CoinCap is not asked because the budget or CoinCap's allowance is spent",
        )
        # queue between fetcher and producer
        self.queue_depth = gauge("queue_depth", "Ticks waiting to be published")
        self.queue_dropped = counter(
            "queue_dropped", "Ticks dropped because the queue was full (oldest first)"
        )
        # producer
        self.ticks_published = counter("ticks_published", "Ticks acknowledged by Kafka")
        self.publish_errors = counter("publish_errors", "Failed publish attempts, by kind", "kind")
        self.spool_dropped = counter(
            "spool_dropped", "Unpublished ticks dropped because the spool was full (oldest first)"
        )
        # consumer / sink
        self.ticks_written = counter("ticks_written", "Rows made durable in crypto_data.csv")
        self.duplicates_skipped = counter(
            "duplicates_skipped", "Ticks seen twice on the topic and written once"
        )
        self.dead_letters = counter(
            "dead_letters", "Poison messages moved to the dead-letter file, by reason", "reason"
        )
        self.sink_errors = counter("sink_errors", "Failed sink writes, by kind", "kind")
        self.topic_resets = counter(
            "topic_resets",
            "Partitions found reset under the stored offsets (new cluster, log end below "
            "the stored offset, log start moved back), by reason",
            "reason",
        )
        self.files_set_aside = counter(
            "files_set_aside",
            "Files a person changed under the sink (appended to, replaced, shortened, "
            "emptied, deleted): kept under an .edited- name, a fresh one started; by file "
            "(crypto_data.csv, daily, dead_letters.jsonl) and reason",
            "file",
            "reason",
        )
        self.rows_unreadable = counter(
            "rows_unreadable",
            "Lines the sink could not parse when reading its files back (skipped, bytes "
            "kept), by reader (retention, first_value, candles, recovery) and reason",
            "reader",
            "reason",
        )
        self.records_skipped_below_offset = counter(
            "records_skipped_below_offset",
            "Records delivered below the sink's stored offset and ignored (already written)",
        )
        self.records_expired = counter(
            "records_expired", "Records Kafka's retention removed before the sink read them"
        )
        self.records_truncated = counter(
            "records_truncated",
            "Records a partition's log lost at its end (a broker's unflushed tail, an "
            "unclean leader election) after the sink had written them",
        )
        self.consumer_lag = gauge("consumer_lag", "Messages on the topic not yet in the CSV")
        self.latency = Histogram(
            "cryptostream_end_to_end_latency_seconds",
            "From the tick's observation time to its row being durable",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        # web / dashboard
        self.web_rejected = counter(
            "web_rejected",
            "Web requests refused, by reason (unauthorized, bad_request, not_found)",
            "reason",
        )
        self.dashboard_rows_skipped = counter(
            "dashboard_rows_skipped",
            "CSV rows the dashboard could not read at start, by reason",
            "reason",
        )
        self.dashboard_points = gauge(
            "dashboard_points", "Price points held in memory by the dashboard"
        )
        self.dashboard_load_seconds = gauge(
            "dashboard_load_seconds", "Time the dashboard took to load the CSV history at start"
        )
        self.dashboard_clients = gauge("dashboard_clients", "Live dashboard connections (SSE)")
        self.dashboard_clients_refused = counter(
            "dashboard_clients_refused",
            "Live dashboard connections refused with 503: the cap on open ones was reached",
        )
        # supervisor
        self.task_failures = counter("task_failures", "Tasks that ended with an error", "task")

    def _counter(self, name: str, documentation: str, *labels: str) -> Counter:
        return Counter(f"cryptostream_{name}", documentation, labels, registry=self.registry)

    def _gauge(self, name: str, documentation: str, *labels: str) -> Gauge:
        return Gauge(f"cryptostream_{name}", documentation, labels, registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
