"""Fan-out of live events to the open dashboard pages (Server-Sent Events).

Each page holds one ``GET /api/stream`` connection with its own small queue.
A page that cannot keep up (its queue is full) is disconnected rather than
allowed to hold memory: its browser reconnects at once and reloads what it
shows, so it misses nothing and the service never buffers without bound.

Open connections are capped at :data:`MAX_CLIENTS`: each holds a socket and a
queue, and a runaway script (or a page in a reload loop) must not exhaust
them. Beyond the cap a new stream is refused with 503 (see the API), counted,
and logged once per time the cap is reached.

A page is only off the count once its connection is gone: a page that stops
reading leaves the server's writes waiting, so each write has a deadline
(:data:`WRITE_TIMEOUT`) and a page dropped for falling behind has its stream
ended at once (its handler is interrupted wherever it waits, and the API aborts
the connection), never left holding a socket outside the cap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics

log = get_logger(__name__)

#: Messages a page may fall behind before it is cut off.
QUEUE_SIZE = 64
#: Live connections at most: far more than the people who watch one service, and
#: small enough that full queues stay a few MB.
MAX_CLIENTS = 100
#: Seconds one write to a page may wait for it to take the bytes.
WRITE_TIMEOUT = 10.0

Queue = asyncio.Queue[bytes | None]


def _nothing() -> None:
    pass


class Broadcaster:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        #: Each open page's queue, with what ends its stream when it is dropped.
        self._clients: dict[Queue, Callable[[], None]] = {}
        self._closed = False
        self._slow_logged = False
        self._full_logged = False
        self.max_clients = MAX_CLIENTS

    @property
    def clients(self) -> int:
        return len(self._clients)

    def admit(self) -> bool:
        """May one more page connect? Refusals are counted, and logged once per episode.

        Call it right before :meth:`subscribe`, with no ``await`` in between, so
        that two pages cannot both take the last place.
        """
        if len(self._clients) < self.max_clients:
            return True
        self._metrics.dashboard_clients_refused.inc()
        if not self._full_logged:
            self._full_logged = True
            log.warning(
                "dashboard_live_connections_full",
                limit=self.max_clients,
                action="new live connections refused with 503 until one closes",
            )
        return False

    def send(self, event: str, data: bytes) -> None:
        """Queue one event for every page; never blocks."""
        # A Server-Sent Event; ``data`` is JSON, so it holds no newline.
        message = b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"
        for queue in list(self._clients):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                self.drop(queue)

    def drop(self, queue: Queue) -> None:
        """Cut a page off that does not keep up: counted, logged once, stream ended."""
        on_drop = self._clients.pop(queue, None)
        if on_drop is None:
            return  # already gone
        self._metrics.web_rejected.labels("slow_client").inc()
        if not self._slow_logged:
            self._slow_logged = True
            log.warning("dashboard_client_too_slow", note="disconnected; it reconnects and reloads")
        _end(queue)
        self._metrics.dashboard_clients.set(len(self._clients))
        # The handler may be blocked in a write to a page that does not read: it is
        # interrupted now, not when the page reads again (perhaps never).
        on_drop()

    @asynccontextmanager
    async def subscribe(self, on_drop: Callable[[], None] = _nothing) -> AsyncIterator[Queue]:
        """A queue of messages for one page; ``None`` means: end the stream.
        ``on_drop`` is called if the page is cut off for falling behind: it must
        end the page's stream even while the handler waits in a write."""
        queue: Queue = asyncio.Queue(QUEUE_SIZE)
        if self._closed:
            queue.put_nowait(None)
        else:
            self._clients[queue] = on_drop
            self._metrics.dashboard_clients.set(len(self._clients))
        try:
            yield queue
        finally:
            self._clients.pop(queue, None)
            self._metrics.dashboard_clients.set(len(self._clients))
            if len(self._clients) < self.max_clients:
                self._full_logged = False  # the next time it fills up is worth a line

    def close(self) -> None:
        """End every stream (the web server is stopping)."""
        self._closed = True
        for queue in self._clients:
            _end(queue)
        self._clients.clear()
        self._metrics.dashboard_clients.set(0)


def _end(queue: Queue) -> None:
    """Drop what a page has not read yet and tell it to end its stream."""
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(None)
