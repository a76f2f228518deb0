"""`cryptostream powerbi`: where it writes, what it says, and how it refuses."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from cryptostream.cli import main
from cryptostream.powerbi.project import MODEL_DIR, PBIP


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)  # no ./config.toml
    monkeypatch.delenv("CRYPTOSTREAM_CONFIG", raising=False)
    monkeypatch.delenv("COINCAP_API_KEY", raising=False)  # not needed to describe files
    data = tmp_path / "data"
    monkeypatch.setenv("CRYPTOSTREAM_STORAGE__DATA_DIR", str(data))
    yield data
    # main() pointed the logs at this test's captured stderr: not the next test's.
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def expressions(out: Path) -> str:
    return (out / MODEL_DIR / "definition" / "expressions.tmdl").read_text(encoding="utf-8")


def test_default_writes_into_the_data_dir_and_ends_with_what_to_open(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["powerbi"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    pbip = data_dir / "powerbi" / PBIP
    assert out[-1] == f"Open {pbip} in Power BI Desktop, then click Refresh once."
    assert pbip.is_file()
    # The configured data directory, made absolute, is the DataFolder parameter.
    assert f'expression DataFolder = "{data_dir}" meta [' in expressions(data_dir / "powerbi")
    assert any("not a Windows path" in line for line in out)


def test_a_second_run_needs_force(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = data_dir.parent / "report"
    assert main(["powerbi", "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")  # something of the user's beside the project
    capsys.readouterr()
    assert main(["powerbi", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err and str(out) in err
    assert main(["powerbi", "--out", str(out), "--force", "--ticks", "crypto_data"]) == 0
    assert 'expression TicksFrom = "crypto_data" meta [' in expressions(out)
    assert (out / "notes.txt").read_text() == "mine"  # --force replaces only the project


def test_an_unwritable_out_is_one_line_and_exit_2(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = data_dir.parent / "a-file"
    blocker.write_text("x")
    assert main(["powerbi", "--out", str(blocker)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    # Below a file: mkdir fails whoever runs the test (root ignores permissions).
    assert main(["powerbi", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cryptostream: cannot write to --out") and err.count("\n") == 1


def test_docker_style_data_folder_names_the_file_as_windows_sees_it(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = "C:\\Users\\me\\cryptostream\\data"
    assert main(["powerbi", "--data-folder", host]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == (
        "Open C:\\Users\\me\\cryptostream\\data\\powerbi\\cryptostream.pbip in Power BI "
        "Desktop, then click Refresh once."
    )
    assert not any("not a Windows path" in line for line in out)
    assert 'expression DataFolder = "C:\\Users\\me\\cryptostream\\data" meta [' in expressions(
        data_dir / "powerbi"
    )


def test_a_backfill_interval_present_in_the_data_dir_is_the_default(data_dir: Path) -> None:
    (data_dir / "history" / "backfill" / "d1").mkdir(parents=True)
    assert main(["powerbi"]) == 0
    assert 'expression BackfillInterval = "d1" meta [' in expressions(data_dir / "powerbi")


def test_an_empty_api_key_as_docker_compose_passes_it_is_fine(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COINCAP_API_KEY", "")
    assert main(["powerbi"]) == 0


def test_a_bad_configuration_is_still_exit_2(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CRYPTOSTREAM_STORAGE__NOPE", "1")
    assert main(["powerbi"]) == 2
    assert "configuration error" in capsys.readouterr().err
