"""Readiness over the Kafka protocol itself: one Metadata request on a plain socket."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from kafkalocal.common import HOST


@dataclass(frozen=True)
class ClusterMetadata:
    """What a broker answers to a Metadata request (only the parts needed here)."""

    brokers: dict[int, int]  # node id -> client port
    cluster_id: str | None
    controller_id: int


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        chunks += chunk
    return bytes(chunks)


def probe_metadata(port: int, host: str = HOST, timeout: float = 2.0) -> ClusterMetadata | None:
    """Ask the broker at ``host:port`` for cluster metadata (Metadata v4, no topics).

    Returns None while it does not answer (not started, still starting, shutting down).
    A broker answers only once it is unfenced and serving clients, and the broker list holds
    only the brokers that are registered and unfenced: so this is a real readiness check.
    """
    correlation_id = 0x4B4C  # "KL"
    client_id = b"kafka-local-probe"
    request = struct.pack(">hhih", 3, 4, correlation_id, len(client_id)) + client_id
    request += struct.pack(">i?", 0, False)  # zero topics, allow_auto_topic_creation=false
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(request)) + request)
            (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
            if not 0 < size <= 1 << 20:  # not a Kafka answer (some other server on the port)
                return None
            data = _recv_exactly(sock, size)
    except OSError:
        return None
    try:
        offset = 0

        def take(fmt: str) -> tuple[int, ...]:
            nonlocal offset
            values = struct.unpack_from(fmt, data, offset)
            offset += struct.calcsize(fmt)
            return values

        def take_string() -> str | None:
            nonlocal offset
            (length,) = take(">h")
            if length < 0:
                return None
            text = data[offset : offset + length].decode("utf-8")
            offset += length
            return text

        (answered_id, _throttle_ms, broker_count) = take(">iii")
        if answered_id != correlation_id:
            return None
        brokers: dict[int, int] = {}
        for _ in range(broker_count):
            (node_id,) = take(">i")
            take_string()  # host
            (broker_port,) = take(">i")
            take_string()  # rack
            brokers[node_id] = broker_port
        cluster_id = take_string()
        (controller_id,) = take(">i")
    except (struct.error, UnicodeDecodeError):
        return None
    return ClusterMetadata(brokers=brokers, cluster_id=cluster_id, controller_id=controller_id)
