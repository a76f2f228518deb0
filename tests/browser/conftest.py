"""Headless Chromium (Debian's package, driven by Playwright) for the dashboard tests.

``./scripts/test`` installs the ``chromium`` package when it is missing; no
browser is downloaded. Screenshots go to the test's temporary folder, or to
``$CRYPTOSTREAM_SCREENSHOTS`` when set (to look at them afterwards).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium is not installed: ./scripts/test installs Debian's chromium package")


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@dataclass
class Tab:
    """A page plus everything it said on its console that was an error."""

    page: Any
    errors: list[str] = field(default_factory=list)
    shots: Path = Path()

    async def screenshot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
async def tab(browser: Any, tmp_path: Path) -> AsyncIterator[Tab]:
    shots = Path(os.environ.get("CRYPTOSTREAM_SCREENSHOTS") or tmp_path / "screenshots")
    await asyncio.to_thread(shots.mkdir, parents=True, exist_ok=True)
    context = await browser.new_context(viewport={"width": 1400, "height": 1000})
    page = await context.new_page()
    tab = Tab(page, shots=shots)
    page.on(
        "console",
        lambda msg: (
            tab.errors.append(f"console {msg.type}: {msg.text}")
            if msg.type in ("error", "warning")
            else None
        ),
    )
    page.on("pageerror", lambda exc: tab.errors.append(f"page error: {exc}"))
    try:
        yield tab
    finally:
        await context.close()
