"""``cryptostream powerbi``: write the project for the configured data directory."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from cryptostream.config import Config
from cryptostream.powerbi.project import (
    Options,
    ProjectError,
    default_backfill_interval,
    host_path,
    write_project,
)

# A drive letter (C:\ or C:/) or a UNC share (\\server\share, \\wsl$\...).
_WINDOWS_PATH = re.compile(r"^([A-Za-z]:[\\/]|\\\\)")


def run(
    config: Config,
    out: Path | None,
    data_folder: str | None,
    ticks_from: str,
    *,
    force: bool = False,
) -> int:
    """Exit code: 0 written, 2 bad ``--out`` (one line on stderr)."""
    data_dir = config.storage.data_dir.resolve()
    options = Options(
        out=out if out is not None else data_dir / "powerbi",
        data_folder=data_folder or str(data_dir),
        ticks_from=ticks_from,
        backfill_interval=default_backfill_interval(data_dir),
        force=force,
    )
    try:
        pbip = write_project(options)
    except ProjectError as exc:
        print(f"cryptostream: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    print(f"Power BI Project written to {pbip.parent}; DataFolder = {options.data_folder}")  # noqa: T201
    if not _WINDOWS_PATH.match(options.data_folder):
        print(  # noqa: T201
            "note: that is not a Windows path and Power BI Desktop runs on Windows: pass "
            "--data-folder with the folder as Windows sees it, or change DataFolder later "
            "(Transform data > Edit parameters)"
        )
    print(  # noqa: T201
        f"Open {host_path(pbip, data_dir, data_folder)} in Power BI Desktop, "
        "then click Refresh once."
    )
    return 0
