"""The command line's parsing and the progress reporting of its long commands."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from cryptostream import cli, progress
from cryptostream.progress import Progress


@pytest.mark.parametrize(
    ("argv", "config"),
    [
        (["--config", "a.toml", "run"], "a.toml"),
        (["run", "--config", "a.toml"], "a.toml"),
        (["-c", "a.toml", "replay", "-c", "b.toml"], "b.toml"),
        (["check"], None),
    ],
)
def test_config_before_or_after_the_command(argv: list[str], config: str | None) -> None:
    args = cli.build_parser().parse_args(argv)
    assert getattr(args, "config", None) == config


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["run"], cli.run),
        (["check", "--timeout", "1"], cli.check),
        (["replay", "--to", "out"], cli.replay),
        (["backfill", "--start", "2025-03-01"], cli.backfill),
        (["credits", "--json"], cli.credits),
        (["powerbi"], cli.powerbi),
    ],
)
def test_each_command_dispatches_to_its_function(argv: list[str], command: cli.Command) -> None:
    assert cli.build_parser().parse_args(argv).func is command


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_help_and_module_docstring_name_every_command() -> None:
    usage = cli.build_parser().format_help()
    assert cli.__doc__ is not None
    for name in ("run", "check", "backfill", "replay", "credits", "powerbi"):
        assert f"``{name}``" in cli.__doc__
        assert f"\n    {name} " in usage


def test_progress_without_a_bar_logs_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)
    with (
        capture_logs() as events,
        Progress(3, desc="t", unit="x", event="t_progress", count_key="done_x", show=False) as bar,
    ):
        bar.update()
        bar.update(2)
    assert bar.done == 3
    assert [(e["event"], e["done_x"], e["of"]) for e in events] == [
        ("t_progress", 1, 3),
        ("t_progress", 3, 3),
    ]


def test_progress_with_a_bar_logs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)
    with (
        capture_logs() as events,
        Progress(2, desc="t", unit="x", event="t_progress", count_key="n", show=True) as bar,
    ):
        bar.update(2)
    assert events == []
