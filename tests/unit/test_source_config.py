"""Configuration of the sources: names, the failover chain, ``auto``, market mappings."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cryptostream.chain import asset_mapping
from cryptostream.config import DEFAULT_BINANCE_SYMBOLS, ConfigError, load_config


def load(tmp_path: Path, toml: str = "", **env: str):
    path = tmp_path / "config.toml"
    path.write_text(toml)
    return load_config(path, env)


@pytest.mark.parametrize(
    ("env", "chain"),
    [
        # The default is auto: CoinCap with its keyless fallbacks, or those alone.
        ({"COINCAP_API_KEY": "k"}, ("coincap", "binance", "kraken")),
        ({}, ("binance", "kraken")),
        ({"COINCAP_API_KEY": "k", "CRYPTOSTREAM_SOURCE__NAME": "coincap"}, ("coincap",)),
        ({"COINCAP_API_KEY": "k", "CRYPTOSTREAM_SOURCE__NAME": "coincap-ws"}, ("coincap-ws",)),
        ({"CRYPTOSTREAM_SOURCE__NAME": "binance"}, ("binance",)),
        ({"CRYPTOSTREAM_SOURCE__NAME": "kraken"}, ("kraken",)),
        # auto: CoinCap when the key is set, else the keyless sources.
        (
            {"COINCAP_API_KEY": "k", "CRYPTOSTREAM_SOURCE__NAME": "auto"},
            ("coincap", "binance", "kraken"),
        ),
        ({"CRYPTOSTREAM_SOURCE__NAME": "AUTO"}, ("binance", "kraken")),
        (
            {"CRYPTOSTREAM_SOURCE__NAME": "auto", "CRYPTOSTREAM_SOURCE__FALLBACKS": "kraken"},
            ("binance", "kraken"),
        ),
        (
            {
                "COINCAP_API_KEY": "k",
                "CRYPTOSTREAM_SOURCE__NAME": "coincap-ws",
                "CRYPTOSTREAM_SOURCE__FALLBACKS": '["coincap", "kraken"]',
            },
            ("coincap-ws", "coincap", "kraken"),
        ),
    ],
)
def test_the_chain_in_effect(tmp_path: Path, env: dict[str, str], chain: tuple[str, ...]) -> None:
    assert load(tmp_path, **env).source_chain() == chain


def test_keyless_sources_need_no_api_key(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[source]\nname = "binance"\nfallbacks = ["kraken"]\nfailover_after = 2.5\n',
    )
    assert cfg.source.fallbacks == ("kraken",)
    assert cfg.source.failover_after == 2.5
    assert not cfg.coincap.api_key


CHAIN_CHOICES = "[source] fallbacks: expected one of coincap, coincap-ws, binance, kraken, got "


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ('[source]\nname = "bitstamp"\n', {}, "[source] name: expected one of coincap, coincap-ws"),
        (
            '[source]\nname = "binance"\nfallbacks = ["coinbase"]\n',
            {},
            CHAIN_CHOICES + "'coinbase'",
        ),
        ('[source]\nname = "binance"\nfallbacks = ["auto"]\n', {}, CHAIN_CHOICES + "'auto'"),
        ('[source]\nname = "binance"\nfallbacks = ["demo"]\n', {}, CHAIN_CHOICES + "'demo'"),
        ('[source]\nname = "binance"\nfallbacks = ["binance"]\n', {}, "listed twice"),
        ('[source]\nname = "demo"\nfallbacks = ["kraken"]\n', {}, "cannot be mixed"),
        ('[source]\nname = "binance"\nfailover_after = 0\n', {}, "failover_after: must be greater"),
        # A CoinCap source anywhere in the chain needs the key, and says which one.
        (
            '[source]\nname = "binance"\nfallbacks = ["coincap"]\n',
            {},
            "needs a key for source coincap",
        ),
        ('[source]\nname = "coincap-ws"\n', {}, "COINCAP_API_KEY is not set"),
        (
            '[coincap]\nws_url = "https://x"\n',
            {"COINCAP_API_KEY": "k"},
            "ws_url: must start with ws://",
        ),
        ("[coincap]\nws_silence_timeout = 0\n", {"COINCAP_API_KEY": "k"}, "ws_silence_timeout"),
        (
            '[binance]\nbase_url = "api.binance.com"\n',
            {"COINCAP_API_KEY": "k"},
            "[binance] base_url: must start with http",
        ),
        (
            "[kraken]\ntimeout = -1\n",
            {"COINCAP_API_KEY": "k"},
            "[kraken] timeout: must be greater than 0",
        ),
        (
            "[binance]\nmax_weight = 0\n",
            {"COINCAP_API_KEY": "k"},
            "[binance] max_weight: must be greater than 0",
        ),
        ('[binance]\nsymbols = ["bitcoin:BTCUSDT"]\n', {}, "expected coincap-id=MARKET"),
        ('[binance]\nsymbols = ["Bitcoin=BTCUSDT"]\n', {}, "invalid asset id 'Bitcoin'"),
        ('[kraken]\npairs = ["bitcoin=XBT/USD"]\n', {}, "invalid market name 'XBT/USD'"),
        ('[kraken]\npairs = ["bitcoin=XBTUSD", "bitcoin=XXBTZUSD"]\n', {}, "mapped twice"),
        (
            '[source]\nname = "binance"\nassets = ["tether"]\n',
            {},
            "[binance] symbols: no asset of source.assets has a Binance symbol",
        ),
    ],
)
def test_bad_source_configuration_is_one_clear_line(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load(tmp_path, toml, **env)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_mappings_from_the_environment(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        CRYPTOSTREAM_SOURCE__NAME="kraken",
        CRYPTOSTREAM_KRAKEN__PAIRS="bitcoin=XBTUSD, ethereum=ETHUSD",
    )
    assert asset_mapping(cfg.kraken.pairs) == {"bitcoin": "XBTUSD", "ethereum": "ETHUSD"}
    assert asset_mapping(DEFAULT_BINANCE_SYMBOLS)["binance-coin"] == "BNBUSDT"


def test_an_implicit_fallback_that_prices_none_of_the_assets_never_vetoes_coincap(
    tmp_path: Path,
) -> None:
    # A new coin only CoinCap knows, with a key and source.name = auto: before, the
    # implicit Binance fallback stopped the service at start ("[binance] symbols: no
    # asset of source.assets has a Binance symbol") although CoinCap prices it.
    cfg = load(tmp_path, '[source]\nassets = ["newcoin"]\n', COINCAP_API_KEY="k")
    assert cfg.full_chain() == ("coincap", "binance", "kraken")
    assert cfg.source_chain() == ("coincap",)
    # One that prices some of them stays in the chain (it prices what it can).
    cfg = load(tmp_path, '[source]\nassets = ["newcoin", "tether"]\n', COINCAP_API_KEY="k")
    assert cfg.source_chain() == ("coincap", "kraken")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        # Named by the user and able to price none: still a configuration error.
        (
            '[source]\nname = "auto"\nfallbacks = ["binance"]\nassets = ["newcoin"]\n',
            "[binance] symbols: no asset of source.assets has a Binance symbol",
        ),
        # Nothing at all can price them: no key, and no exchange lists them.
        ('[source]\nassets = ["newcoin"]\n', "no source can price these assets"),
    ],
)
def test_a_named_source_that_prices_nothing_is_still_an_error(
    tmp_path: Path, toml: str, message: str
) -> None:
    env = {"COINCAP_API_KEY": "k"} if "fallbacks" in toml else {}
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(tmp_path, toml, **env)
