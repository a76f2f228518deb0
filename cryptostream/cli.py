"""Command line: ``cryptostream [--config PATH] COMMAND``.

Commands:

``run``
    the whole pipeline (fetch, publish, consume into CSV, web server) until
    SIGINT/SIGTERM, then drain and exit 0;
``check``
    ask the running service's ``/readyz``: exit 0 if ready, 1 if not;
``backfill``
    CoinCap price history into ``history/backfill/<interval>/`` CSV files;
``replay``
    rebuild every CSV file from the Kafka topic's earliest offset;
``credits``
    the CoinCap credit ledger and the plan for the current configuration;
``powerbi``
    write a Power BI Project (PBIP) for the data directory.

Each command is a function ``(config, args) -> exit code``, bound to its
sub-parser with ``set_defaults(func=...)``; :func:`main` loads the
configuration and sets up logging once for all of them. Exit codes: 0 ok,
1 runtime failure or unhealthy, 2 bad configuration or usage, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptostream import __version__, logs
from cryptostream.config import (
    API_KEY_ENV,
    CONFIG_PATH_ENV,
    ENV_PREFIX,
    Config,
    ConfigError,
    load_config,
)

if TYPE_CHECKING:  # imported when the command runs, so --help stays quick
    from cryptostream.backfill import Backfill, BackfillResult, Window

Command = Callable[[Config, argparse.Namespace], int]

EPILOG = f"""\
configuration:
  Settings come from config.toml (or --config / ${CONFIG_PATH_ENV}) and can each be
  overridden by an environment variable {ENV_PREFIX}<SECTION>__<KEY>, e.g.
  {ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS=broker:9092. The CoinCap API key is read
  from ${API_KEY_ENV} only.

examples:
  {API_KEY_ENV}=... cryptostream run
  cryptostream run                       (no key: the keyless Binance and Kraken APIs)
  cryptostream --config /etc/cryptostream.toml run
  cryptostream check && echo healthy
  cryptostream credits --json            (CoinCap credits spent and the plan)

exit codes: 0 ok, 1 runtime failure or unhealthy, 2 bad configuration or usage,
  the data directory in use by another cryptostream process, holding another
  topic's data, or on a file system without file locks.
"""


def build_parser() -> argparse.ArgumentParser:
    # --config goes before or after the command name, so both levels take it
    # from this one parent. SUPPRESS: a command that was not given it must not
    # overwrite the value given before the command with a default.
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"config file (default: ${CONFIG_PATH_ENV}, else ./config.toml if present)",
    )
    parser = argparse.ArgumentParser(
        prog="cryptostream",
        description=(
            "Track cryptocurrency prices from the CoinCap API v3 in real time: "
            "every tick goes through Apache Kafka into CSV files that Power BI reads."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[config_option],
    )
    parser.add_argument("--version", action="version", version=f"cryptostream {__version__}")
    # Commands that run a long job: a progress bar on a terminal, log lines otherwise.
    long_job = argparse.ArgumentParser(add_help=False)
    long_job.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        help="progress bar (default: on a terminal; periodic log lines otherwise)",
    )
    sub = parser.add_subparsers(metavar="COMMAND")

    def command(
        func: Command, *parents: argparse.ArgumentParser, **text: Any
    ) -> argparse.ArgumentParser:
        """The sub-parser named like ``func`` and bound to it (``text``: help, description...)."""
        cmd = sub.add_parser(func.__name__, parents=[config_option, *parents], **text)
        cmd.set_defaults(func=func)
        return cmd

    run_cmd = command(
        run,
        help="run the pipeline until SIGINT/SIGTERM, then drain and exit",
        description="Fetch prices, publish them to Kafka, consume them into the CSV files. "
        "Stops cleanly on SIGINT/SIGTERM (a second signal forces the exit).",
    )
    run_cmd.add_argument(
        "--preflight",
        action="store_true",
        help="only check the configuration and the data directory (its topic), print "
        "the CoinCap credit plan, and exit: 0 ok, 2 if the service could not start, 1 if "
        "the credit ledger cannot be read (nothing is changed)",
    )
    check_cmd = command(
        check,
        help="exit 0 if the running service is ready, 1 if not (for health checks)",
        description="Ask the running service's /readyz endpoint (at web.host:web.port).",
    )
    check_cmd.add_argument("--timeout", type=float, default=3.0, help="seconds (default: 3)")
    replay_cmd = command(
        replay,
        long_job,
        help="rebuild every CSV file from the Kafka topic's earliest offset",
        description="Read the topic from its earliest offset to its current end through the "
        "same sink the service uses, into an empty data directory. With one partition the "
        "files are byte-identical to the ones the live service wrote.",
    )
    replay_cmd.add_argument(
        "--to",
        metavar="DIR",
        type=Path,
        help="target directory (default: storage.data_dir, which must not hold files yet)",
    )
    bf = command(
        backfill,
        long_job,
        help="fetch CoinCap price history into history/backfill/<interval>/ CSV files",
        description="Fetch /assets/{id}/history in windows the API accepts and write "
        "history/backfill/<interval>/YYYY-MM-DD.csv (same columns as crypto_data.csv). "
        "Idempotent: the same range twice adds nothing. Resumable: finished windows are "
        "remembered, so after Ctrl-C or a crash the same command continues. One backfill "
        "of an interval runs on a data directory at a time (a second one is refused, "
        "exit 2); it runs beside the service. Credits: the "
        "range's cost is estimated first and a range over what is left of "
        "coincap.monthly_credits this billing period is refused (exit 2); each request is "
        "checked again by its expected size just before it is sent; each answer's "
        "credits go into the ledger shared with the service as soon as it arrives (a "
        "kill loses at most one request's count). After CoinCap said the "
        "allowance is spent it starts only once the hourly probe is due (else exit 2, "
        "saying when), and its first request is that probe; CoinCap still saying so "
        "stops it (exit 1). A credit ledger it cannot read stops it before any request "
        "(exit 1).",
        epilog="example: cryptostream backfill --assets bitcoin,ethereum "
        "--start 2025-03-01 --end 2025-04-01 --interval h1",
    )
    bf.add_argument("--assets", help="comma-separated CoinCap ids (default: source.assets)")
    bf.add_argument("--start", required=True, help="UTC date or date-time, e.g. 2025-03-01")
    bf.add_argument(
        "--end",
        help="UTC date or date-time, exclusive (default: now; a later one is cut at now, "
        "one more than a year ahead is refused)",
    )
    bf.add_argument(
        "--interval",
        default="h1",
        choices=["m1", "m5", "m15", "m30", "h1", "h2", "h6", "h12", "d1"],
        help="price step (default: h1)",
    )
    bf.add_argument(
        "--max-requests",
        type=int,
        metavar="N",
        help="make at most N API requests in this run; re-run to continue",
    )
    bf.add_argument(
        "--allow-over-budget",
        action="store_true",
        help="start even when the range needs more CoinCap credits than are left this "
        "billing period (coincap.monthly_credits)",
    )
    cr = command(
        credits,
        help="the CoinCap credit ledger and the plan for the current configuration",
        description="What this data directory spent on CoinCap in the current billing period, "
        "the budget (coincap.monthly_credits), and what the configured poll rate needs until "
        "the reset. Reads the ledger only (it never moves or rewrites it; one it cannot read "
        "is exit 1 with a line saying what to do); safe while the service runs. The count "
        "is kept per UTC day, so a changed coincap.billing_day counts every credit spent "
        "in the period it defines.",
    )
    cr.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    pbi = command(
        powerbi,
        help="write a Power BI Project (PBIP) for the data directory",
        description="Write a Power BI Project: open its .pbip in Power BI Desktop and click "
        "Refresh once. The data directory's path is baked into the DataFolder parameter "
        "(Transform data > Edit parameters changes it later).",
        epilog="Docker: docker compose run --rm --no-deps app powerbi "
        '--data-folder "$PWD/data"  (writes ./data/powerbi/cryptostream.pbip)',
    )
    pbi.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        help="where to write the project (default: <storage.data_dir>/powerbi)",
    )
    pbi.add_argument(
        "--data-folder",
        metavar="PATH",
        help="the data folder as Power BI will see it, e.g. C:\\Users\\me\\cryptostream\\data "
        "(default: the absolute storage.data_dir)",
    )
    pbi.add_argument(
        "--ticks",
        choices=["history", "crypto_data"],
        default="history",
        help="read the ticks from the daily files history/ticks/ (default) or crypto_data.csv",
    )
    pbi.add_argument("--force", action="store_true", help="replace a project already in --out")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command: Command | None = getattr(args, "func", None)
    if command is None:
        parser.print_help()
        return 2
    try:
        config = load_config(getattr(args, "config", None))
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", 2)
    # The service logs to stdout, as a container's main process does; the other
    # commands keep stdout for their answer (a summary, the readiness report).
    logs.configure(
        config.log.level,
        config.log.format,
        secrets=config.secrets(),
        stream=sys.stdout if command is run else sys.stderr,
    )
    return command(config, args)


def _fail(message: str, code: int) -> int:
    print(f"cryptostream: {message}", file=sys.stderr)  # noqa: T201
    return code


def run(config: Config, args: argparse.Namespace) -> int:
    from cryptostream.datadir import DataDirError, DataDirLock, check_topic
    from cryptostream.service import Service

    preflight = bool(getattr(args, "preflight", False))
    try:
        # Data of another topic (kafka.topic changed in .env) is a configuration error.
        check_topic(config.storage.data_dir, config.kafka.topic)
        if preflight:
            DataDirLock.probe(config.storage.data_dir)
    except DataDirError as exc:
        return _fail(str(exc), 2)
    if preflight:
        return credits(config, argparse.Namespace(json=False))

    async def _main() -> int:
        return await Service(config).run()

    # Until the service installs its own handlers, SIGTERM (like SIGINT) stops
    # a start-up that has nothing to drain yet, cleanly instead of by the signal.
    signal.signal(signal.SIGTERM, _stop_before_start)
    try:
        return asyncio.run(_main())
    except DataDirError as exc:  # another process holds the directory, or it cannot lock
        return _fail(str(exc), 2)
    except _EarlyStop:
        return 0
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed
        return 130


class _EarlyStop(Exception):
    pass


def _stop_before_start(_signum: int, _frame: object) -> None:
    raise _EarlyStop


def replay(config: Config, args: argparse.Namespace) -> int:
    from cryptostream.datadir import DataDirError, DataDirLock
    from cryptostream.replay import ReplayError
    from cryptostream.replay import replay as do_replay

    target: Path = args.to or config.storage.data_dir
    try:
        lock = DataDirLock.acquire(target)  # one writer of the directory at a time
    except DataDirError as exc:
        return _fail(str(exc), 2)
    with lock:
        try:
            count = asyncio.run(do_replay(config, target, progress=args.progress))
        except ReplayError as exc:
            return _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            return 130
        print(f"replayed {count} messages into {target}")  # noqa: T201
    return 0


def backfill(config: Config, args: argparse.Namespace) -> int:
    import datetime as dt

    from cryptostream.backfill import Backfill, BackfillError, history_range, parse_when, plan

    if not config.coincap.api_key:
        return _fail(f"configuration error: {API_KEY_ENV} is not set", 2)
    try:
        assets = (
            [a.strip() for a in args.assets.split(",") if a.strip()]
            if args.assets
            else list(config.source.assets)
        )
        start, end, cut = history_range(
            parse_when(args.start),
            parse_when(args.end) if args.end else None,
            dt.datetime.now(tz=dt.UTC),
        )
        windows = plan(assets, start, end, args.interval)
    except BackfillError as exc:
        return _fail(str(exc), 2)
    if cut is not None:
        print(f"backfill: {cut}", file=sys.stderr)  # noqa: T201
    job = Backfill(
        config,
        args.interval,
        max_requests=args.max_requests,
        allow_over_budget=args.allow_over_budget,
    )
    try:
        job.budget.ledger.load()  # an unreadable ledger: no budget to keep, no start
    except OSError as exc:
        return _fail(str(exc), 1)
    try:
        # One backfill of the interval at a time, from the plan to the last window.
        with job.locked():
            result = _backfill_run(job, windows, args)
    except BackfillError as exc:  # another backfill of it runs; an asset CoinCap doesn't know
        return _fail(str(exc), 2)
    except KeyboardInterrupt:
        return _fail("interrupted; run the same command to continue", 130)
    if isinstance(result, int):
        return result
    print(  # noqa: T201
        f"backfill {args.interval}: {result.rows_added} rows added, "
        f"{result.windows - len(result.incomplete)}/{result.windows} windows done, "
        f"{result.requests} requests, {result.credits} credits"
    )
    if result.stopped:
        return _fail(f"stopped: {result.stopped}", 1)
    return 1 if result.incomplete else 0


def _backfill_run(
    job: Backfill, windows: list[Window], args: argparse.Namespace
) -> BackfillResult | int:
    """Plan before spending (what the range costs against what is left this period),
    then fetch; an exit code when the plan says no."""
    cost = job.estimate(windows)
    left = "no limit" if cost.left is None else f"{cost.left} of {cost.budget} left"
    print(  # noqa: T201
        f"backfill {args.interval}: {cost.windows} window{'' if cost.windows == 1 else 's'} "
        f"to fetch, about {cost.credits} "
        f"CoinCap credits ({left} this billing period)",
        file=sys.stderr,
    )
    if cost.over and not args.allow_over_budget:
        return _fail(cost.refusal(), 2)
    return asyncio.run(job.run(windows, progress=args.progress))


def credits(config: Config, args: argparse.Namespace) -> int:
    from cryptostream.credits import CreditBudget
    from cryptostream.credits.report import report_json, report_text

    budget = CreditBudget(config)
    try:
        budget.ledger.load()  # reads only: an unreadable file is said, never touched
    except OSError as exc:
        return _fail(str(exc), 1)
    print(json.dumps(report_json(budget), indent=2) if args.json else report_text(budget))  # noqa: T201
    return 0


def powerbi(config: Config, args: argparse.Namespace) -> int:
    from cryptostream.powerbi.project import (
        Options,
        ProjectError,
        default_backfill_interval,
        host_path,
        write_project,
    )

    data_dir = config.storage.data_dir.resolve()
    options = Options(
        out=args.out or data_dir / "powerbi",
        data_folder=args.data_folder or str(data_dir),
        ticks_from=args.ticks,
        backfill_interval=default_backfill_interval(data_dir),
        force=args.force,
    )
    try:
        pbip = write_project(options)
    except ProjectError as exc:  # a bad --out
        return _fail(str(exc), 2)
    print(f"Power BI Project written to {pbip.parent}; DataFolder = {options.data_folder}")  # noqa: T201
    # A drive letter (C:\ or C:/) or a UNC share (\\server\share, \\wsl$\...).
    if not re.match(r"^([A-Za-z]:[\\/]|\\\\)", options.data_folder):
        print(  # noqa: T201
            "note: that is not a Windows path and Power BI Desktop runs on Windows: pass "
            "--data-folder with the folder as Windows sees it, or change DataFolder later "
            "(Transform data > Edit parameters)"
        )
    print(  # noqa: T201
        f"Open {host_path(pbip, data_dir, args.data_folder)} in Power BI Desktop, "
        "then click Refresh once."
    )
    return 0


def check(config: Config, args: argparse.Namespace) -> int:
    host = config.web.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - we connect, not bind
        host = "127.0.0.1"
    url = f"http://{host}:{config.web.port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:
            ok = resp.status == 200
            body = resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        ok, body = False, exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return _fail(f"not reachable at {url}: {exc}", 1)
    print(body.strip())  # noqa: T201
    return 0 if ok else 1
