"""Writing the Power BI Project (PBIP) folder.

Layout, as Power BI Desktop saves it::

    cryptostream.pbip                      the file to open
    cryptostream.SemanticModel/            the model: definition.pbism, .platform,
        definition/*.tmdl                  TMDL (model, expressions, tables/)
    cryptostream.Report/                   the report: definition.pbir, .platform,
        definition/...                     PBIR JSON (report, pages, visuals)
        StaticResources/...                the themes report.json names

Every file is UTF-8 without a byte order mark, with ``\\n`` line ends, and the
same input gives the same bytes (lineage tags and ids are derived, not random).
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from cryptostream.powerbi import model, report
from cryptostream.powerbi.queries import BACKFILL_INTERVALS, TICKS_SOURCES, queries

NAME = "cryptostream"
PBIP = f"{NAME}.pbip"
REPORT_DIR = f"{NAME}.Report"
MODEL_DIR = f"{NAME}.SemanticModel"
_IDS = uuid.UUID("0b6f6f3e-7d8c-4a51-a1f4-2f6a8d9c3e17")


class ProjectError(Exception):
    """The project cannot be written where asked (one line for the user)."""


@dataclass(frozen=True, slots=True)
class Options:
    out: Path
    #: The data folder as Power BI Desktop will see it (baked into DataFolder).
    data_folder: str
    ticks_from: str = "history"
    backfill_interval: str = "h1"
    force: bool = False


def default_backfill_interval(data_dir: Path) -> str:
    """h1 unless the data directory only holds other backfill intervals."""
    present = [i for i in BACKFILL_INTERVALS if (data_dir / "history" / "backfill" / i).is_dir()]
    return "h1" if not present or "h1" in present else present[0]


def clean_folder(path: str) -> str:
    """The folder without trailing separators (the queries append ``\\file``)."""
    stripped = path.rstrip("\\/")
    # Keep a drive root ("C:\") and a POSIX root whole.
    if re.fullmatch(r"[A-Za-z]:", stripped):
        return stripped + "\\"
    return stripped or path


def _json(doc: object) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def _platform(kind: str, folder: str) -> dict[str, object]:
    return {
        "$schema": report.schema("platform"),
        "metadata": {"type": kind, "displayName": NAME},
        "config": {"version": "2.0", "logicalId": str(uuid.uuid5(_IDS, f"{kind}:{folder}"))},
    }


def project_files(options: Options) -> dict[str, str]:
    """Every file of the project: path relative to the output folder -> text."""
    if options.ticks_from not in TICKS_SOURCES:
        raise ProjectError(f"ticks source must be one of {', '.join(TICKS_SOURCES)}")
    if options.backfill_interval not in BACKFILL_INTERVALS:
        raise ProjectError(f"backfill interval must be one of {', '.join(BACKFILL_INTERVALS)}")
    folder = clean_folder(options.data_folder)
    qs = queries(folder, options.ticks_from, options.backfill_interval)
    return {
        PBIP: _json(
            {
                "$schema": report.schema("pbip"),
                "version": "1.0",
                "artifacts": [{"report": {"path": REPORT_DIR}}],
                "settings": {"enableAutoRecovery": True},
            }
        ),
        f"{MODEL_DIR}/.platform": _json(_platform("SemanticModel", folder)),
        f"{MODEL_DIR}/definition.pbism": _json(
            {"$schema": report.schema("pbism"), "version": "4.0", "settings": {}}
        ),
        f"{REPORT_DIR}/.platform": _json(_platform("Report", folder)),
        f"{REPORT_DIR}/definition.pbir": _json(
            {
                "$schema": report.schema("pbir"),
                "version": "4.0",
                "datasetReference": {"byPath": {"path": f"../{MODEL_DIR}"}},
            }
        ),
        **{f"{MODEL_DIR}/definition/{path}": text for path, text in model.tmdl_files(qs).items()},
        **{f"{REPORT_DIR}/{path}": _json(doc) for path, doc in report.report_files().items()},
    }


def write_project(options: Options) -> Path:
    """Write the project into ``options.out``; returns the path of the ``.pbip`` file."""
    out = options.out.resolve()
    if out.exists() and not out.is_dir():
        raise ProjectError(f"--out {out} is a file, not a directory")
    if out.is_dir() and any(out.iterdir()) and not options.force:
        raise ProjectError(f"--out {out} exists and is not empty (add --force to replace it)")
    files = project_files(options)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # --force replaces what an earlier run wrote (and Desktop's caches inside it),
        # never anything else in the folder.
        for top in (REPORT_DIR, MODEL_DIR):
            if (out / top).is_dir():
                shutil.rmtree(out / top)
        for rel, text in files.items():
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode("utf-8"))
    except OSError as exc:
        raise ProjectError(f"cannot write to --out {out}: {exc.strerror or exc}") from exc
    return out / PBIP


def host_path(path: Path, data_dir: Path, data_folder: str | None) -> str:
    """``path`` as the user's machine names it.

    In a container the project is written under the mounted data directory
    (e.g. ``/data/powerbi``); with ``--data-folder`` (the data folder as the host
    sees it) the same file on the host is that folder plus the rest of the path.
    """
    if data_folder:
        try:
            rel = path.resolve().relative_to(data_dir.resolve())
        except ValueError:
            return str(path)
        windows = "\\" in data_folder or re.match(r"^[A-Za-z]:", data_folder) is not None
        base = PureWindowsPath(data_folder) if windows else PurePosixPath(data_folder)
        return str(base.joinpath(*rel.parts))
    return str(path)
