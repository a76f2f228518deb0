"""The Kafka topic both stages use: client options and creating it once."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context

from cryptostream.config import KafkaConfig
from cryptostream.logs import get_logger

log = get_logger(__name__)


def fetch_max_wait_ms(config: KafkaConfig) -> int:
    """``fetch_max_wait_ms`` for a consumer client: ``kafka.fetch_max_wait`` (see the key)."""
    return max(1, round(config.fetch_max_wait * 1000))


def client_options(config: KafkaConfig) -> dict[str, object]:
    """Options every aiokafka client of the service shares, security included."""
    options: dict[str, object] = {
        "bootstrap_servers": config.bootstrap_servers.split(","),
        "client_id": config.client_id,
        "request_timeout_ms": int(config.request_timeout * 1000),
        "security_protocol": config.security_protocol.upper(),
    }
    if config.security_protocol in ("ssl", "sasl_ssl"):
        # Verifies the brokers' certificates and host names (aiokafka's default context).
        options["ssl_context"] = create_ssl_context(
            cafile=config.ssl_cafile or None,
            certfile=config.ssl_certfile or None,
            keyfile=config.ssl_keyfile or None,
        )
    if config.security_protocol.startswith("sasl_"):
        options["sasl_mechanism"] = config.sasl_mechanism.upper()
        options["sasl_plain_username"] = config.sasl_username
        options["sasl_plain_password"] = config.sasl_password.get()
    return options


class Topic:
    """Creates the topic when missing, once per process, whichever stage asks first."""

    def __init__(self, config: KafkaConfig) -> None:
        self._config = config
        self._lock = asyncio.Lock()
        self._ready = False

    async def ensure(self) -> None:
        """Raises Kafka or timeout errors; callers retry."""
        async with self._lock:
            if not self._ready:
                await self._create()
                self._ready = True

    async def _create(self) -> None:
        config = self._config
        admin = AIOKafkaAdminClient(**client_options(config))
        try:
            async with asyncio.timeout(config.request_timeout * 2):
                await admin.start()
                min_isr = config.min_insync_replicas
                new = NewTopic(
                    config.topic,
                    num_partitions=config.partitions,
                    replication_factor=config.replication_factor,
                    topic_configs={"min.insync.replicas": str(min_isr)} if min_isr else {},
                )
                try:
                    await admin.create_topics([new])
                except TopicAlreadyExistsError:
                    log.debug("topic_exists", topic=config.topic)
                except AttributeError as exc:
                    # aiokafka's admin client, while the metadata names no controller
                    # yet (a broker just restarted), fails like this: a transient
                    # Kafka condition the callers retry, not a bug to stop for.
                    raise KafkaConnectionError(f"no controller known yet ({exc})") from exc
                else:
                    log.info(
                        "topic_created",
                        topic=config.topic,
                        partitions=config.partitions,
                        replication_factor=config.replication_factor,
                        min_insync_replicas=min_isr or None,
                    )
        finally:
            await close_admin(admin)


async def stop_client(client: Any, what: str) -> None:
    """Stop an aiokafka client within a deadline: with brokers gone it can hang."""
    try:
        async with asyncio.timeout(5):
            await client.stop()
    except (TimeoutError, KafkaError, OSError, RuntimeError, AttributeError) as exc:
        # A half-started client can fail odd ways on stop; the caller's error matters more.
        log.warning("kafka_client_stop_failed", client=what, error=str(exc) or type(exc).__name__)


async def close_admin(admin: AIOKafkaAdminClient) -> None:
    """Close within a deadline (with brokers gone it can hang); its errors do not matter."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5):
            await admin.close()
