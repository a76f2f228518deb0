"""The log masker hides a secret in every spelling a log line or an error text can give it."""

from __future__ import annotations

import io
import json
import logging
import urllib.parse
from collections.abc import Iterator

import aiohttp
import pytest
import structlog
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from cryptostream import logs
from cryptostream.logs import MASK, SecretMasker

# Every character that URL encoding changes, and more than once: CoinCap keys are
# base64-like, so '+', '/' and '=' are what a real key holds.
KEY = "cc+Live/Q7vX=2mN9+pL4/sR8tK=="
NON_ASCII = "Pässwörd 7f3e/ß"


def url_spellings(secret: str) -> set[str]:
    """What URL encoders make of a secret: each quoting style, upper- and lowercase hex."""
    forms = {
        urllib.parse.quote(secret),
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        urllib.parse.quote_plus(secret, safe="/"),
        # How aiohttp (yarl) writes a query value: '/' stays, '+' and '=' are escaped.
        URL("http://h/p").with_query({"k": secret}).raw_query_string.removeprefix("k="),
    }
    lower = {_lower_hex(form) for form in forms}
    return (forms | lower) - {secret}


def _lower_hex(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "%":
            out.append(text[i : i + 3].lower())
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@pytest.mark.parametrize("secret", [KEY, NON_ASCII])
def test_every_url_encoded_spelling_is_masked(secret: str) -> None:
    masker = SecretMasker()
    masker.add([secret])
    spellings = url_spellings(secret)
    assert len(spellings) >= 3, spellings  # the key really has characters that get encoded
    for form in sorted(spellings):
        line = f'{{"event": "failed", "url": "ws://h/prices?assets=bitcoin&apiKey={form}&x=1"}}'
        masked = masker.mask(line)
        assert form not in masked, (form, masked)
        assert masked.endswith(f"apiKey={MASK}&x=1" + '"}'), masked


def test_raw_repr_and_json_spellings_stay_masked() -> None:
    masker = SecretMasker()
    masker.add([KEY, 'a"quote\\and-slash'])
    for form in (KEY, repr(KEY)[1:-1], json.dumps('a"quote\\and-slash')[1:-1]):
        assert masker.mask(f"x {form} y") == f"x {MASK} y"


def test_innocent_text_is_left_alone() -> None:
    masker = SecretMasker()
    masker.add([KEY])
    text = "cc+Live/Q7vX=2mN9 and cc%2BLive%2FQ7 and 100%2B of the rest"
    assert masker.mask(text) == text


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """``logs.configure`` sets process-wide state: put it back for the tests that follow."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    config = structlog.get_config()
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.configure(**config)


@pytest.mark.usefixtures("restore_logging")
def test_an_aiohttp_error_with_the_key_in_its_url_never_leaks() -> None:
    """The text aiohttp gives a failed websocket handshake, rendered by the real set-up."""
    out = io.StringIO()
    logs.configure("debug", "json", secrets=[KEY], stream=out)
    url = URL("ws://127.0.0.1:9/prices").with_query({"assets": "bitcoin", "apiKey": KEY})
    info = aiohttp.RequestInfo(url, "GET", CIMultiDictProxy(CIMultiDict()), url)
    error = aiohttp.TooManyRedirects(info, (), status=307, message="Temporary Redirect")
    assert "%2B" in str(error) and KEY not in str(error)  # the encoded spelling, not the raw
    log = logs.get_logger("test")
    log.warning("ws_disconnected", detail=str(error))
    try:
        raise error
    except aiohttp.ClientError:
        log.exception("task_failed")
    text = out.getvalue()
    assert text.count(MASK) >= 2, text
    leaked = {form for form in url_spellings(KEY) | {KEY} if form in text}
    assert not leaked, text
