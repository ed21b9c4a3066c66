"""Browser fixtures: Debian's Chromium through Playwright, and a real `flowerbed serve` with demo data."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Server, start_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
#: Screenshots of every page land here (gitignored) as test artefacts.
ARTIFACTS = ROOT / "test-artifacts"
#: Workers silent this long are lost in these tests (the server's FLOWERBED_LOST_AFTER_S).
LOST_AFTER_S = 3


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One `flowerbed serve` for the module, on its own stream, with a short lost-worker timeout."""
    import redis

    from tests.conftest import REDIS_URL

    stream = f"fbtest:{uuid.uuid4().hex}"
    server = start_server(tmp_path_factory.mktemp("browser"), stream, extra_env={"FLOWERBED_LOST_AFTER_S": str(LOST_AFTER_S)})
    try:
        yield server
    finally:
        server.stop()
        client = redis.Redis.from_url(REDIS_URL)
        client.delete(stream)
        client.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Debian Chromium (Playwright's own download is not used)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh light-scheme page in a non-UTC timezone; fails the test on any console error."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, timezone_id="America/New_York")
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.set_default_timeout(15_000)
    yield pg
    context.close()
    assert not errors, errors


def shoot(pg: Any, name: str) -> Path:
    """Save a full-page screenshot as a test artefact."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    pg.wait_for_timeout(150)
    pg.screenshot(path=str(path), full_page=True)
    return path


def wait_live(pg: Any, timeout: float = 15.0) -> None:
    """Wait until the page's SSE connection is open (the header's live dot turns on)."""
    pg.wait_for_selector('#live-dot[data-state="on"]', timeout=timeout * 1000)


def settle(seconds: float = 0.3) -> None:
    time.sleep(seconds)
