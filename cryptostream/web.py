"""The small aiohttp server: health, readiness, Prometheus metrics and the dashboard."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from cryptostream.access import Refusals, access_middleware, security_headers
from cryptostream.config import WebConfig
from cryptostream.dashboard import Dashboard
from cryptostream.dashboard.api import DashboardApi
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics

log = get_logger(__name__)

Readiness = Callable[[], tuple[bool, dict[str, Any]]]


class WebServer:
    def __init__(
        self,
        config: WebConfig,
        metrics: Metrics,
        readiness: Readiness,
        dashboard: Dashboard | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._readiness = readiness
        self._dashboard = dashboard
        self._runner: web.AppRunner | None = None
        self._stopped = asyncio.Event()
        self.port: int | None = None
        refusals = Refusals(metrics)
        self.app = web.Application(middlewares=[access_middleware(config.token, refusals)])
        self.app.on_response_prepare.append(security_headers)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self.app.router.add_get("/metrics", self._metrics_view)
        if dashboard is not None:
            DashboardApi(dashboard, refusals).install(self.app)

    async def start(self) -> None:
        # Open live streams end on shutdown; the timeout only bounds a stuck handler.
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=3.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._config.host, self._config.port)
        await site.start()
        # The bound port, which differs from the configured one when that is 0.
        addresses = self._runner.addresses
        self.port = addresses[0][1] if addresses else self._config.port
        log.info(
            "web_started",
            url=f"http://{self._config.host}:{self.port}",
            dashboard=self._dashboard is not None,
            token=bool(self._config.token),
        )
        exposed = [a[0] for a in addresses if not _loopback(a[0])]
        if exposed and not self._config.token:
            # Anyone who can reach the address sees prices, metrics and the API.
            log.warning(
                "web_exposed_without_token",
                address=f"{exposed[0]}:{self.port}",
                fix="set an access token of 16+ characters: "
                "CRYPTOSTREAM_WEB__TOKEN=$(openssl rand -hex 16), "
                "or bind 127.0.0.1 (web.host)",
            )

    @property
    def connections(self) -> int:
        """HTTP connections open now (live streams included)."""
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    async def run(self) -> None:
        await self.start()
        if self._dashboard is not None:
            await self._dashboard.load()
        await self._stopped.wait()

    async def stop(self) -> None:
        self._stopped.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready, details = self._readiness()
        return web.json_response(
            {"status": "ready" if ready else "not_ready", **details}, status=200 if ready else 503
        )

    async def _metrics_view(self, _request: web.Request) -> web.Response:
        body = self._metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _loopback(address: str) -> bool:
    """Is a bound socket address reachable only from this machine?"""
    try:
        return ipaddress.ip_address(address.split("%", 1)[0]).is_loopback
    except ValueError:
        return False
