"""Who may see what on the web server: the optional access token, refusals, safe headers.

With ``web.token`` set, every path but the health checks needs the token, as
``Authorization: Bearer <token>`` (scripts, Prometheus) or once as
``/?token=<token>`` in the browser: the page answers with an HttpOnly cookie
and a redirect to ``/``, so the token leaves the address bar and the page's
scripts never see it. ``/healthz`` and ``/readyz`` stay open for container
health checks and reveal nothing but status.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from cryptostream.config import Secret
from cryptostream.logs import get_logger
from cryptostream.metrics import Metrics

log = get_logger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
COOKIE = "cryptostream_token"

# The page loads nothing from elsewhere and is never framed.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Refusals:
    """Refused requests: counted by reason, each reason logged once (then only counted)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._logged: set[str] = set()

    def refuse(self, request: web.Request, status: int, reason: str, message: str) -> web.Response:
        self._metrics.web_rejected.labels(reason).inc()
        if reason not in self._logged:
            self._logged.add(reason)
            # request.path has no query string: a token given as ?token= is never logged.
            log.warning("web_request_refused", reason=reason, path=request.path, error=message)
        headers = {"WWW-Authenticate": 'Bearer realm="cryptostream"'} if status == 401 else None
        return web.json_response({"error": message}, status=status, headers=headers)


def _equal(given: bytes, token: bytes) -> bool:
    return hmac.compare_digest(given, token)


def _utf8(*values: str) -> list[bytes] | None:
    """The values as UTF-8 (empty ones left out); None when one holds bytes that are
    not UTF-8 (aiohttp keeps them as surrogates, which cannot be encoded)."""
    try:
        return [v.encode() for v in values if v]
    except UnicodeEncodeError:
        return None


def access_middleware(token: Secret, refusals: Refusals) -> Middleware:
    secret = token.get()
    expected = secret.encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if secret and request.path not in OPEN_PATHS:
            auth = request.headers.get("Authorization", "")
            query = request.query.get("token", "")
            cookie = request.cookies.get(COOKIE, "")
            bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            given = _utf8(bearer, cookie)
            if given is None:
                return refusals.refuse(
                    request,
                    400,
                    "bad_header",
                    "the Authorization or Cookie header holds bytes that are not UTF-8",
                )
            if query and _equal(query.encode(), expected):
                if request.path == "/" and request.method in ("GET", "HEAD"):
                    response = web.Response(status=303, headers={"Location": "/"})
                    response.set_cookie(COOKIE, secret, httponly=True, samesite="Strict", path="/")
                    return response
            elif not any(_equal(v, expected) for v in given):
                return refusals.refuse(
                    request,
                    401,
                    "unauthorized",
                    "this service needs its access token: open /?token=<token> in the browser "
                    "or send 'Authorization: Bearer <token>'",
                )
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return refusals.refuse(request, 404, "not_found", "not found")
        except web.HTTPMethodNotAllowed:
            return refusals.refuse(request, 405, "method_not_allowed", "method not allowed")

    return middleware


async def security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: runs for every response, streams included."""
    h = response.headers
    h["Server"] = "cryptostream"  # not the library and Python versions
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("Referrer-Policy", "no-referrer")
    h.setdefault("X-Frame-Options", "DENY")
    if response.content_type == "text/html":
        h.setdefault("Content-Security-Policy", CSP)
