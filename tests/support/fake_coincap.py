"""A local fake of the CoinCap REST API v3 (``https://rest.coincap.io/v3``).

The fake is a real aiohttp server bound to ``127.0.0.1`` (by default on a free port).
Its answers are built from the recorded response shapes in ``tests/fixtures/coincap/``.

Endpoints
---------
``GET /v3/assets?ids=a,b,c&limit=L&offset=O``
    Envelope ``{"data": [...], "timestamp": <epoch ms>}``.  ``ids`` filters *and orders*
    the records (unknown ids are silently absent, duplicates are dropped); without ``ids``
    every known asset is served in rank order.  ``limit`` (default 100, at most 2000) and
    ``offset`` (default 0) are applied after filtering; anything else is a 400.

    The market moves one tick per answered call: the first call serves the records of
    ``assets.json``, the second those of ``assets_later.json`` (note ``vwap24Hr`` is null
    for solana there), every later call a deterministic random walk (``seed``) on
    ``priceUsd`` starting from ``assets_later.json``.  Every step changes every price by a
    non-zero amount of at most 0.025 %.  Prices are computed with :class:`decimal.Decimal`
    and keep the number of decimals of the fixture (16), so they never show float
    artefacts or exponents.  Only ``priceUsd`` moves; the other fields stay as in
    ``assets_later.json``.  ``timestamp`` is always :attr:`FakeCoinCap.clock`, and so is
    the HTTP ``Date`` header of every answer of the API itself: set ``clock`` to serve a
    server whose clock is ahead of (or behind) the machine's.

``GET /v3/assets/{id}``
    Envelope ``{"data": {...}, "timestamp": ...}`` with the asset as of the last tick
    served by ``/v3/assets`` (the ``assets.json`` record before any such call); it does not
    advance the market.  Unknown id: 404 ``{"error": "<id> not found", "timestamp": ...}``
    like ``error_not_found.json``.

``GET /v3/assets/{id}/history?interval=I&start=MS&end=MS``
    Envelope with rows ``{"priceUsd": str, "time": int, "date": "…T…Z"}`` for every
    multiple of the interval in ``[start, end)`` (``end`` excluded) up to the fake's clock
    (no history exists after now: a window reaching past it gets the rows until now).
    Prices are a pure function of ``(asset id, time)`` (slow ±2 % daily triangle wave
    plus ±0.1 % hashed noise around the ``assets.json`` price), so overlapping windows
    and different intervals agree on shared instants; bitcoin's rows at the times
    recorded in ``history_bitcoin_m1.json`` are served exactly as recorded.
    ``interval`` is required; ``start`` and ``end`` go together (both missing: the
    largest window ending now).

    Maximum window per request (``end - start``), else 400 with an error body.  These are
    the fake's own limits, modelled on "a request covers a bounded number of rows"; they
    are not a recording of CoinCap's:

    ======== =========== ==========
    interval max window  max rows
    ======== =========== ==========
    m1       1 day       1440
    m5       5 days      1440
    m15      7 days      672
    m30      14 days     672
    h1       30 days     720
    h2       61 days     732
    h6       183 days    732
    h12      366 days    732
    d1       3660 days   3660
    ======== =========== ==========

Every other path under the server answers a JSON 404.

Authentication
--------------
Every request needs ``Authorization: Bearer <key>`` or ``?apiKey=<key>`` (either one being
right is enough).  Otherwise: 401 ``{"error": "...", "timestamp": ...}``.  The key is never
logged, printed or echoed; the access log writes the path without the query string and
:class:`~tests.support.fakehttp.RecordedRequest`'s ``repr`` masks it.

Credits
-------
The fake bills like CoinCap documents it: every answer of the API itself (after the key
is checked; faults, which stand for a gateway in front of it, are not billed) whose
status is below 500 costs 1 credit plus 1 per further 2,500 bytes (or part) of its body.
:attr:`FakeCoinCap.credits_served` is the running total, ``RecordedRequest.body_bytes``
each body's size. Sizes cross 2,500 bytes as the real API's do: ``/v3/assets`` for the
six default assets is about 2.6 KB (2 credits), for up to three assets under 1.4 KB
(1 credit), a day of ``m1`` history about 140 KB (58 credits).

Spent allowance: with ``allowance=N`` the fake serves until N credits are billed, then
answers every request (key checked first) with ``spent_status`` (default 429, no
``Retry-After``) and an error body that speaks of the monthly credit limit and the
plan — modelled on what users report, not a recording. :meth:`FakeCoinCap.spend_allowance`
switches to that at once, :meth:`FakeCoinCap.renew_allowance` back (a new period).

Fault injection
---------------
:meth:`FakeCoinCap.inject` queues :class:`~tests.support.fakehttp.Fault` objects as for
every fake (:mod:`tests.support.fakehttp`).  Faults apply before the authentication
check (like a gateway or rate limiter in front of the API); ``Fault.records`` answers
with exactly the given records in the envelope.  A faulted request does not advance the
market, except for a delayed one that ends up answered normally.

Command line
------------
``python -m tests.support.fake_coincap --host 127.0.0.1 --port 8081 --api-key KEY``
serves until SIGINT/SIGTERM and prints the base URL on one line once ready.  The key may
also come from ``$FAKE_COINCAP_API_KEY`` (keeps it out of ``ps``); default ``test-key``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import decimal
import email.utils
import hashlib
import json
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Final

from aiohttp import web

from tests.support.fakehttp import FakeHttpServer, Fault, Handler, RecordedRequest

__all__ = [
    "DEFAULT_API_KEY",
    "FIXTURES_DIR",
    "HISTORY_INTERVALS_MS",
    "HISTORY_MAX_WINDOW_MS",
    "FakeCoinCap",
    "Fault",
    "RecordedRequest",
    "main",
]

access_logger = logging.getLogger(__name__ + ".access")

DEFAULT_API_KEY: Final = "test-key"
FIXTURES_DIR: Final = Path(__file__).resolve().parent.parent / "fixtures" / "coincap"
API_PREFIX: Final = "/v3"

_MINUTE: Final = 60_000
_HOUR: Final = 60 * _MINUTE
_DAY: Final = 24 * _HOUR

#: Step of every history interval, in milliseconds.
HISTORY_INTERVALS_MS: Final[Mapping[str, int]] = {
    "m1": _MINUTE,
    "m5": 5 * _MINUTE,
    "m15": 15 * _MINUTE,
    "m30": 30 * _MINUTE,
    "h1": _HOUR,
    "h2": 2 * _HOUR,
    "h6": 6 * _HOUR,
    "h12": 12 * _HOUR,
    "d1": _DAY,
}

#: Largest ``end - start`` accepted per request for each interval, in milliseconds.
HISTORY_MAX_WINDOW_MS: Final[Mapping[str, int]] = {
    "m1": 1 * _DAY,
    "m5": 5 * _DAY,
    "m15": 7 * _DAY,
    "m30": 14 * _DAY,
    "h1": 30 * _DAY,
    "h2": 61 * _DAY,
    "h6": 183 * _DAY,
    "h12": 366 * _DAY,
    "d1": 3660 * _DAY,
}

_DEFAULT_LIMIT: Final = 100
_MAX_LIMIT: Final = 2000
_WALK_MAX_STEP_PPM: Final = 250  # 0.025 % per tick at most
_HISTORY_TREND_PPM: Final = 20_000  # ±2 % over a day
_HISTORY_NOISE_PPM: Final = 1_000  # ±0.1 % per row

JsonDict = dict[str, Any]
Clock = Callable[[], int]


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _iso_ms(epoch_ms: int) -> str:
    moment = datetime.fromtimestamp(epoch_ms // 1000, tz=UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{epoch_ms % 1000:03d}Z"


def _decimals(number: str) -> int:
    exponent = Decimal(number).as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


def _scale(price: Decimal, ppm: int, places: int) -> str:
    """``price * (1 + ppm / 1e6)`` rounded to ``places`` decimals, as a plain string."""
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        scaled = price * (Decimal(1_000_000 + ppm) / Decimal(1_000_000))
        return format(scaled.quantize(Decimal(1).scaleb(-places)), "f")


class _BadRequest(Exception):
    pass


#: CoinCap's billing rule, written out here again (the fake must not borrow the code
#: it checks): 1 credit per call plus 1 per further 2,500 bytes.
CREDIT_BYTES: Final = 2500
SPENT_MESSAGE: Final = (
    "Monthly credit limit reached for this API key. Upgrade your plan at "
    "https://pro.coincap.io/dashboard or wait for your next billing cycle."
)


def bill(nbytes: int) -> int:
    return 1 + max(0, (nbytes - 1) // CREDIT_BYTES) if nbytes > 0 else 1


class FakeCoinCap(FakeHttpServer):
    """Fake CoinCap v3 REST server; see the module docstring for the endpoints.

    >>> async with FakeCoinCap() as fake:                       # doctest: +SKIP
    ...     url = f"{fake.base_url}/assets?ids=bitcoin,ethereum"
    ...     headers = {"Authorization": f"Bearer {fake.api_key}"}
    """

    base_path: ClassVar[str] = API_PREFIX
    access_log: ClassVar[logging.Logger | None] = access_logger

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        clock: Clock | None = None,
        fixtures_dir: Path = FIXTURES_DIR,
        allowance: int | None = None,
        spent_status: int = 429,
    ) -> None:
        super().__init__(host=host, port=port)
        self.api_key = api_key
        #: Credits the key may use before every answer says the allowance is spent.
        self.allowance = allowance
        self.spent_status = spent_status
        self.spent = False
        #: Credits billed so far, and the credits of each billed answer in order.
        self.credits_served = 0
        self.bills: list[int] = []
        #: Epoch-milliseconds clock used for every ``timestamp``; assign to control time.
        self.clock: Clock = clock or _wall_clock_ms

        self._first: list[JsonDict] = self._load(fixtures_dir / "assets.json")["data"]
        self._later: list[JsonDict] = self._load(fixtures_dir / "assets_later.json")["data"]
        history = self._load(fixtures_dir / "history_bitcoin_m1.json")["data"]
        self._recorded_history: dict[tuple[str, int], str] = {
            ("bitcoin", int(row["time"])): str(row["priceUsd"]) for row in history
        }
        self._base_price: dict[str, Decimal] = {
            r["id"]: Decimal(r["priceUsd"]) for r in self._first
        }
        self._places: dict[str, int] = {r["id"]: _decimals(r["priceUsd"]) for r in self._first}

        self._rng = random.Random(seed)
        self._tick = 0
        self._current: list[JsonDict] = copy.deepcopy(self._first)
        self._walk: list[JsonDict] = copy.deepcopy(self._later)

    @staticmethod
    def _load(path: Path) -> JsonDict:
        data: JsonDict = json.loads(path.read_text(encoding="utf-8"))
        return data

    @property
    def tick(self) -> int:
        """How many ``/v3/assets`` answers the market has produced so far."""
        return self._tick

    def routes(self, app: web.Application) -> None:
        app.router.add_get(API_PREFIX + "/assets", self._handle_assets)
        app.router.add_get(API_PREFIX + "/assets/{asset_id}", self._handle_asset)
        app.router.add_get(API_PREFIX + "/assets/{asset_id}/history", self._handle_history)

    # -- HTTP plumbing -----------------------------------------------------------------

    def error_body(self, status: int, message: str) -> str:
        return json.dumps({"error": message, "timestamp": self.clock()})

    def _error(
        self, status: int, message: str, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        return web.Response(
            status=status,
            text=self.error_body(status, message),
            content_type="application/json",
            headers=headers,
        )

    def records_response(self, fault: Fault) -> web.StreamResponse:
        envelope = {"data": [dict(r) for r in fault.asset_records], "timestamp": self.clock()}
        return web.json_response(envelope, status=fault.http_status, headers=fault.headers)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip() == self.api_key:
            return True
        return request.query.get("apiKey") == self.api_key

    def spend_allowance(self) -> None:
        """From now on every request is told the allowance is spent."""
        self.spent = True

    def renew_allowance(self, allowance: int | None = None) -> None:
        """A new billing period: serve again (with a fresh ``allowance``)."""
        self.spent = False
        self.allowance = allowance
        self.credits_served = 0
        self.bills.clear()

    async def answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await self._answer(request, handler)
        # The API's clock, as a real server's Date header shows it (second resolution).
        response.headers["Date"] = email.utils.formatdate(self.clock() / 1000, usegmt=True)
        return response

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self._authorized(request):
            return self._error(
                401,
                "Unauthorized: a valid API key is required "
                "(Authorization: Bearer <key> or ?apiKey=<key>)",
                headers={"WWW-Authenticate": 'Bearer realm="coincap"'},
            )
        if self.spent:
            return self._error(self.spent_status, SPENT_MESSAGE)
        try:
            response = await handler(request)
        except _BadRequest as exc:
            response = self._error(400, str(exc))
        except web.HTTPException as exc:
            response = self._error(exc.status, exc.reason)
        body = response.body if isinstance(response, web.Response) else None
        if response.status < 500 and isinstance(body, bytes):
            credits = bill(len(body))
            self.bills.append(credits)
            self.credits_served += credits
            if self.allowance is not None and self.credits_served >= self.allowance:
                self.spent = True
        return response

    # -- /v3/assets ----------------------------------------------------------------------

    @staticmethod
    def _int_param(request: web.Request, name: str, default: int) -> int:
        raw = request.query.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise _BadRequest(f"{name} must be an integer") from None
        if value < 0:
            raise _BadRequest(f"{name} must be >= 0")
        return value

    def _advance(self) -> list[JsonDict]:
        """Produce the next market snapshot (fixture, later fixture, then random walk)."""
        if self._tick == 0:
            snapshot = copy.deepcopy(self._first)
        elif self._tick == 1:
            snapshot = copy.deepcopy(self._later)
        else:
            for record in self._walk:
                step = self._rng.randint(1, _WALK_MAX_STEP_PPM) * self._rng.choice((-1, 1))
                places = self._places.get(record["id"], _decimals(record["priceUsd"]))
                record["priceUsd"] = _scale(Decimal(record["priceUsd"]), step, places)
            snapshot = copy.deepcopy(self._walk)
        self._tick += 1
        self._current = snapshot
        return snapshot

    async def _handle_assets(self, request: web.Request) -> web.Response:
        limit = self._int_param(request, "limit", _DEFAULT_LIMIT)
        offset = self._int_param(request, "offset", 0)
        if limit > _MAX_LIMIT:
            raise _BadRequest(f"limit exceeds {_MAX_LIMIT}")
        snapshot = self._advance()
        ids_param = request.query.get("ids")
        if ids_param:
            by_id = {r["id"]: r for r in snapshot}
            wanted = dict.fromkeys(i.strip() for i in ids_param.split(",") if i.strip())
            selected = [by_id[i] for i in wanted if i in by_id]
        else:
            selected = snapshot
        return web.json_response(
            {"data": selected[offset : offset + limit], "timestamp": self.clock()}
        )

    async def _handle_asset(self, request: web.Request) -> web.Response:
        asset_id = request.match_info["asset_id"]
        record = next((r for r in self._current if r["id"] == asset_id), None)
        if record is None:
            return self._error(404, f"{asset_id} not found")
        return web.json_response({"data": copy.deepcopy(record), "timestamp": self.clock()})

    # -- /v3/assets/{id}/history -------------------------------------------------------

    def history_price(self, asset_id: str, epoch_ms: int) -> str:
        """The deterministic history price of ``asset_id`` at ``epoch_ms``."""
        recorded = self._recorded_history.get((asset_id, epoch_ms))
        if recorded is not None:
            return recorded
        phase = epoch_ms % _DAY
        trend = abs(2 * phase - _DAY) * 2 * _HISTORY_TREND_PPM // _DAY - _HISTORY_TREND_PPM
        digest = hashlib.blake2b(f"{asset_id}:{epoch_ms}".encode(), digest_size=8).digest()
        noise = int.from_bytes(digest, "big") % (2 * _HISTORY_NOISE_PPM + 1) - _HISTORY_NOISE_PPM
        return _scale(self._base_price[asset_id], trend + noise, self._places[asset_id])

    def _history_window(self, request: web.Request) -> tuple[str, int, int]:
        interval = request.query.get("interval")
        if not interval:
            raise _BadRequest("missing interval")
        if interval not in HISTORY_INTERVALS_MS:
            raise _BadRequest(f"interval must be one of {', '.join(HISTORY_INTERVALS_MS)}")
        max_window = HISTORY_MAX_WINDOW_MS[interval]
        raw_start, raw_end = request.query.get("start"), request.query.get("end")
        if raw_start is None and raw_end is None:
            end = self.clock()
            return interval, end - max_window, end
        if raw_start is None or raw_end is None:
            raise _BadRequest("start and end must be given together")
        try:
            start, end = int(raw_start), int(raw_end)
        except ValueError:
            raise _BadRequest("start and end must be integers (epoch milliseconds)") from None
        if start >= end:
            raise _BadRequest("start must be before end")
        if end - start > max_window:
            raise _BadRequest(
                f"time range too large for interval {interval}: at most "
                f"{max_window // _DAY} day(s) ({max_window} ms) per request"
            )
        return interval, start, end

    async def _handle_history(self, request: web.Request) -> web.Response:
        asset_id = request.match_info["asset_id"]
        if asset_id not in self._base_price:
            return self._error(404, f"{asset_id} not found")
        interval, start, end = self._history_window(request)
        step = HISTORY_INTERVALS_MS[interval]
        first = -(-start // step) * step
        rows = [
            {"priceUsd": self.history_price(asset_id, t), "time": t, "date": _iso_ms(t)}
            for t in range(first, min(end, self.clock() + 1), step)
        ]
        return web.json_response({"data": rows, "timestamp": self.clock()})


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.fake_coincap",
        description="Serve a fake CoinCap REST API v3 until SIGINT/SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("FAKE_COINCAP_API_KEY", DEFAULT_API_KEY),
        help=f"accepted key (default: $FAKE_COINCAP_API_KEY, else {DEFAULT_API_KEY!r})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random-walk seed")
    parser.add_argument("--quiet", action="store_true", help="no access log on stderr")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with FakeCoinCap(
        api_key=args.api_key, host=args.host, port=args.port, seed=args.seed
    ) as fake:
        print(fake.base_url, flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
