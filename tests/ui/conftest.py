"""The web console in a real browser: Debian's chromium driven by Playwright, against a served
sidecar on real PostgreSQL. Playwright never downloads a browser here: it launches the system one."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("K1S0_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
#: Set to a directory (docs/img) to save a screenshot of each page while the tests run.
SCREENSHOTS = os.environ.get("K1S0_UI_SCREENSHOTS", "")


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[object]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:  # pragma: no cover - the dev extra installs it
        pytest.fail("playwright is not installed: pip install -e '.[dev]'")
    if not CHROMIUM.exists():  # noqa: ASYNC240 - one stat at fixture set-up
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()
