"""Prometheus metrics of one service instance (its own registry, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # fetcher
        self.api_requests = Counter(
            "cryptostream_api_requests", "Price API requests by outcome", ["outcome"], registry=r
        )
        self.ticks_fetched = Counter(
            "cryptostream_ticks_fetched", "Valid ticks received from the price API", registry=r
        )
        self.ticks_invalid = Counter(
            "cryptostream_ticks_invalid",
            "API records skipped as invalid, by reason",
            ["reason"],
            registry=r,
        )
        self.polls_missed = Counter(
            "cryptostream_polls_missed",
            "Poll slots skipped because an earlier poll ran past them",
            registry=r,
        )
        # price sources and failover (source/)
        self.source_requests = Counter(
            "cryptostream_source_requests",
            "Requests to each price source, by outcome (HTTP status or error kind)",
            ["source", "outcome"],
            registry=r,
        )
        self.source_switches = Counter(
            "cryptostream_source_switches",
            "Failover switches from one price source to another",
            ["from", "to"],
            registry=r,
        )
        self.source_active = Gauge(
            "cryptostream_source_active",
            "1 for the price source whose ticks are used now, 0 for the others",
            ["source"],
            registry=r,
        )
        self.source_healthy = Gauge(
            "cryptostream_source_healthy",
            "1 when the source's last request or frame succeeded, 0 while it fails",
            ["source"],
            registry=r,
        )
        self.ticks_repeated = Counter(
            "cryptostream_ticks_repeated",
            "Ticks not emitted because the source repeated an observation it had already given",
            ["source"],
            registry=r,
        )
        self.ws_reconnects = Counter(
            "cryptostream_ws_reconnects",
            "Price-stream reconnects, by reason (closed, error, silent, handshake)",
            ["reason"],
            registry=r,
        )
        self.ws_malformed_frames = Counter(
            "cryptostream_ws_malformed_frames",
            "Price-stream frames skipped as malformed, by reason",
            ["reason"],
            registry=r,
        )
        self.assets_unknown = Gauge(
            "cryptostream_assets_unknown",
            "1 for a configured asset the source's answers lack (for CoinCap: an id it "
            "does not know), 0 once it is priced",
            ["source", "asset"],
            registry=r,
        )
        # CoinCap credits (credits/)
        self.coincap_credits = Counter(
            "cryptostream_coincap_credits",
            "CoinCap credits this process spent, by kind (poll, refresh, backfill, stream)",
            ["kind"],
            registry=r,
        )
        self.coincap_credits_used = Gauge(
            "cryptostream_coincap_credits_used",
            "CoinCap credits used in the current billing period (every process of this "
            "data directory)",
            registry=r,
        )
        self.coincap_credits_budget = Gauge(
            "cryptostream_coincap_credits_budget",
            "coincap.monthly_credits: the budget per billing period (0 = no limit)",
            registry=r,
        )
        self.coincap_credits_projected = Gauge(
            "cryptostream_coincap_credits_projected",
            "CoinCap credits the billing period will have used at its end, at the current rate",
            registry=r,
        )
        self.coincap_exhausted = Gauge(
            "cryptostream_coincap_exhausted",
            "1 while CoinCap is not asked because the budget or CoinCap's allowance is spent",
            registry=r,
        )
        # queue between fetcher and producer
        self.queue_depth = Gauge(
            "cryptostream_queue_depth", "Ticks waiting to be published", registry=r
        )
        self.queue_dropped = Counter(
            "cryptostream_queue_dropped",
            "Ticks dropped because the queue was full (oldest first)",
            registry=r,
        )
        # producer
        self.ticks_published = Counter(
            "cryptostream_ticks_published", "Ticks acknowledged by Kafka", registry=r
        )
        self.publish_errors = Counter(
            "cryptostream_publish_errors", "Failed publish attempts, by kind", ["kind"], registry=r
        )
        self.spool_dropped = Counter(
            "cryptostream_spool_dropped",
            "Unpublished ticks dropped because the spool was full (oldest first)",
            registry=r,
        )
        # consumer / sink
        self.ticks_written = Counter(
            "cryptostream_ticks_written", "Rows made durable in crypto_data.csv", registry=r
        )
        self.duplicates_skipped = Counter(
            "cryptostream_duplicates_skipped",
            "Ticks seen twice on the topic and written once",
            registry=r,
        )
        self.dead_letters = Counter(
            "cryptostream_dead_letters",
            "Poison messages moved to the dead-letter file, by reason",
            ["reason"],
            registry=r,
        )
        self.sink_errors = Counter(
            "cryptostream_sink_errors", "Failed sink writes, by kind", ["kind"], registry=r
        )
        self.topic_resets = Counter(
            "cryptostream_topic_resets",
            "Partitions found reset under the stored offsets (new cluster, log end below "
            "the stored offset, log start moved back), by reason",
            ["reason"],
            registry=r,
        )
        self.records_skipped_below_offset = Counter(
            "cryptostream_records_skipped_below_offset",
            "Records delivered below the sink's stored offset and ignored (already written)",
            registry=r,
        )
        self.records_expired = Counter(
            "cryptostream_records_expired",
            "Records Kafka's retention removed before the sink read them",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "cryptostream_consumer_lag", "Messages on the topic not yet in the CSV", registry=r
        )
        self.latency = Histogram(
            "cryptostream_end_to_end_latency_seconds",
            "From the tick's observation time to its row being durable",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # web / dashboard
        self.web_rejected = Counter(
            "cryptostream_web_rejected",
            "Web requests refused, by reason (unauthorized, bad_request, not_found)",
            ["reason"],
            registry=r,
        )
        self.dashboard_rows_skipped = Counter(
            "cryptostream_dashboard_rows_skipped",
            "CSV rows the dashboard could not read at start, by reason",
            ["reason"],
            registry=r,
        )
        self.dashboard_points = Gauge(
            "cryptostream_dashboard_points",
            "Price points held in memory by the dashboard",
            registry=r,
        )
        self.dashboard_load_seconds = Gauge(
            "cryptostream_dashboard_load_seconds",
            "Time the dashboard took to load the CSV history at start",
            registry=r,
        )
        self.dashboard_clients = Gauge(
            "cryptostream_dashboard_clients", "Live dashboard connections (SSE)", registry=r
        )
        self.dashboard_clients_refused = Counter(
            "cryptostream_dashboard_clients_refused",
            "Live dashboard connections refused with 503: the cap on open ones was reached",
            registry=r,
        )
        # supervisor
        self.task_failures = Counter(
            "cryptostream_task_failures", "Tasks that ended with an error", ["task"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
