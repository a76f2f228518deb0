"""The documentation keeps up with the code: the configuration page, the version, the
changelog and the README's length."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

from cryptostream import __version__
from cryptostream.dashboard.api import load_static

REPO = Path(__file__).resolve().parents[2]
config_docs = runpy.run_path(str(REPO / "scripts" / "config_docs.py"))


def test_the_configuration_page_is_generated_from_todays_schema() -> None:
    page = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert config_docs["render"](page) == page, "run: python3 scripts/config_docs.py"


def test_every_key_of_the_schema_is_on_the_page_with_a_description() -> None:
    import msgspec

    from cryptostream import config

    page = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = config_docs["rows"]()
    keys = {key for key, _, _, _ in rows}
    for section in msgspec.structs.fields(config.Config):
        struct = type(getattr(config.Config(), section.name))
        for field in msgspec.structs.fields(struct):
            key = f"{section.name}.{field.name}"
            if key in config_docs["ENV_ONLY"]:
                assert config_docs["ENV_ONLY"][key] in page
                continue
            assert key in keys and f"| `{key}` |" in page, key
    assert all(text for _, _, _, text in rows), [k for k, _, _, t in rows if not t]


def _changelog_versions() -> list[str]:
    text = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    return re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", text, flags=re.M)


def test_the_changelogs_newest_release_is_the_package_version() -> None:
    versions = _changelog_versions()
    assert versions and versions[0] == __version__
    assert versions == sorted(versions, key=lambda v: tuple(map(int, v.split("."))))[::-1]


def test_the_image_label_and_the_dashboard_footer_show_the_package_version() -> None:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert f'org.opencontainers.image.version="{__version__}"' in dockerfile
    index = load_static()["index.html"].body.decode()
    assert f"cryptostream {__version__}" in index and "{{version}}" not in index


def test_the_readme_is_short() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200
