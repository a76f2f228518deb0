"""Command line: ``cryptostream run | check``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptostream import __version__
from cryptostream.config import (
    API_KEY_ENV,
    CONFIG_PATH_ENV,
    ENV_PREFIX,
    Config,
    ConfigError,
    load_config,
)

EPILOG = f"""\
configuration:
  Settings come from config.toml (or --config / ${CONFIG_PATH_ENV}) and can each be
  overridden by an environment variable {ENV_PREFIX}<SECTION>__<KEY>, e.g.
  {ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS=broker:9092. The CoinCap API key is read
  from ${API_KEY_ENV} only.

examples:
  {API_KEY_ENV}=... cryptostream run
  cryptostream --config /etc/cryptostream.toml run
  cryptostream check && echo healthy

exit codes: 0 ok, 1 runtime failure or unhealthy, 2 bad configuration or usage,
  or the data directory in use by another cryptostream process.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cryptostream",
        description=(
            "Track cryptocurrency prices from the CoinCap API v3 in real time: "
            "every tick goes through Apache Kafka into CSV files that Power BI reads."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cryptostream {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"config file (default: ${CONFIG_PATH_ENV}, else ./config.toml if present)",
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        default=None,
        help=f"config file (default: ${CONFIG_PATH_ENV}, else ./config.toml if present)",
    )
    # Commands that run a long job: a progress bar on a terminal, log lines otherwise.
    long_job = argparse.ArgumentParser(add_help=False)
    long_job.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: on a terminal; periodic log lines otherwise)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser(
        "run",
        parents=[common],
        help="run the pipeline until SIGINT/SIGTERM, then drain and exit",
        description="Fetch prices, publish them to Kafka, consume them into the CSV files. "
        "Stops cleanly on SIGINT/SIGTERM (a second signal forces the exit).",
    )
    check = sub.add_parser(
        "check",
        parents=[common],
        help="exit 0 if the running service is ready, 1 if not (for health checks)",
        description="Ask the running service's /readyz endpoint (at web.host:web.port).",
    )
    check.add_argument("--timeout", type=float, default=3.0, help="seconds (default: 3)")
    replay = sub.add_parser(
        "replay",
        parents=[common, long_job],
        help="rebuild every CSV file from the Kafka topic's earliest offset",
        description="Read the topic from its earliest offset to its current end through the "
        "same sink the service uses, into an empty data directory. With one partition the "
        "files are byte-identical to the ones the live service wrote.",
    )
    replay.add_argument(
        "--to",
        metavar="DIR",
        type=Path,
        default=None,
        help="target directory (default: storage.data_dir, which must not hold files yet)",
    )
    bf = sub.add_parser(
        "backfill",
        parents=[common, long_job],
        help="fetch CoinCap price history into history/backfill/<interval>/ CSV files",
        description="Fetch /assets/{id}/history in windows the API accepts and write "
        "history/backfill/<interval>/YYYY-MM-DD.csv (same columns as crypto_data.csv). "
        "Idempotent: the same range twice adds nothing. Resumable: finished windows are "
        "remembered, so after Ctrl-C or a crash the same command continues.",
        epilog="example: cryptostream backfill --assets bitcoin,ethereum "
        "--start 2025-03-01 --end 2025-04-01 --interval h1",
    )
    bf.add_argument(
        "--assets",
        default=None,
        help="comma-separated CoinCap ids (default: source.assets)",
    )
    bf.add_argument("--start", required=True, help="UTC date or date-time, e.g. 2025-03-01")
    bf.add_argument("--end", default=None, help="UTC date or date-time, exclusive (default: now)")
    bf.add_argument(
        "--interval",
        default="h1",
        choices=["m1", "m5", "m15", "m30", "h1", "h2", "h6", "h12", "d1"],
        help="price step (default: h1)",
    )
    bf.add_argument(
        "--max-requests",
        type=int,
        default=None,
        metavar="N",
        help="spend at most N API requests (credits) in this run; re-run to continue",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"cryptostream: configuration error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    if args.command == "check":
        return check(config, args.timeout)
    if args.command == "backfill":
        return _locked(config.storage.data_dir, lambda: backfill(config, args))
    if args.command == "replay":
        target = args.to or config.storage.data_dir
        return _locked(target, lambda: replay(config, target, args.progress))
    return run(config)


def _locked(data_dir: Path, command: Callable[[], int]) -> int:
    """Run a command that writes ``data_dir`` holding its lock (one writer at a time)."""
    from cryptostream.datadir import DataDirError, DataDirLock

    try:
        lock = DataDirLock.acquire(data_dir)
    except DataDirError as exc:
        print(f"cryptostream: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    with lock:
        return command()


def run(config: Config) -> int:
    from cryptostream import logs
    from cryptostream.datadir import DataDirError
    from cryptostream.service import Service

    logs.configure(config.log.level, config.log.format, secrets=config.secrets())

    async def _main() -> int:
        return await Service(config).run()

    # Until the service installs its own handlers, SIGTERM (like SIGINT) stops
    # a start-up that has nothing to drain yet, cleanly instead of by the signal.
    signal.signal(signal.SIGTERM, _stop_before_start)
    try:
        return asyncio.run(_main())
    except DataDirError as exc:  # another process holds the data directory
        print(f"cryptostream: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    except _EarlyStop:
        return 0
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed
        return 130


class _EarlyStop(Exception):
    pass


def _stop_before_start(_signum: int, _frame: object) -> None:
    raise _EarlyStop


def replay(config: Config, target: Path, progress: bool | None) -> int:
    from cryptostream import logs
    from cryptostream.replay import ReplayError
    from cryptostream.replay import replay as do_replay

    logs.configure(config.log.level, config.log.format, secrets=config.secrets(), stream=sys.stderr)
    try:
        count = asyncio.run(do_replay(config, target, progress=progress))
    except ReplayError as exc:
        print(f"cryptostream: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    except KeyboardInterrupt:
        return 130
    print(f"replayed {count} messages into {target}")  # noqa: T201
    return 0


def backfill(config: Config, args: argparse.Namespace) -> int:
    import datetime as dt

    from cryptostream import logs
    from cryptostream.backfill import Backfill, BackfillError, parse_when, plan

    if not config.coincap.api_key:
        print(f"cryptostream: configuration error: {API_KEY_ENV} is not set", file=sys.stderr)  # noqa: T201
        return 2
    try:
        assets = (
            [a.strip() for a in args.assets.split(",") if a.strip()]
            if args.assets
            else list(config.source.assets)
        )
        start = parse_when(args.start)
        end = parse_when(args.end) if args.end else dt.datetime.now(tz=dt.UTC)
        windows = plan(assets, start, end, args.interval)
    except BackfillError as exc:
        print(f"cryptostream: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    logs.configure(config.log.level, config.log.format, secrets=config.secrets(), stream=sys.stderr)
    job = Backfill(config, args.interval, max_requests=args.max_requests)
    try:
        result = asyncio.run(job.run(windows, progress=args.progress))
    except KeyboardInterrupt:
        print("cryptostream: interrupted; run the same command to continue", file=sys.stderr)  # noqa: T201
        return 130
    print(  # noqa: T201
        f"backfill {args.interval}: {result.rows_added} rows added, "
        f"{result.windows - len(result.incomplete)}/{result.windows} windows done, "
        f"{result.requests} requests"
    )
    return 1 if result.incomplete else 0


def check(config: Config, timeout: float) -> int:
    host = config.web.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - we connect, not bind
        host = "127.0.0.1"
    url = f"http://{host}:{config.web.port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            ok = resp.status == 200
            body = resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        ok, body = False, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        print(f"cryptostream: not reachable at {url}: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    print(body.strip())  # noqa: T201
    return 0 if ok else 1
