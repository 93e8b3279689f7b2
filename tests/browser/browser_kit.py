"""The browser kit shared by the UI tests: the app under uvicorn in a
thread (a test can run a dispatch tick in its loop instead of waiting for the
clock), Debian's chromium driven by Playwright, and the screenshot folder CI
keeps (``test-output/screenshots/``). Skipped when chromium or Playwright is
missing, and on the PostgreSQL run (the browser tests run once, on SQLite).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from api.app import create_app

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
JOIN = datetime(2027, 3, 2, 13, 30, tzinfo=UTC)  # Tue 21:30 in Shanghai


def _skip_reason() -> str | None:
    if os.environ.get("SOPBOT_TEST_DATABASE_URL"):
        return "the browser tests run once, on SQLite"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "pip install playwright"
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        return "chromium is not installed (apt-get install chromium)"
    return None


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    reason = _skip_reason()
    if reason is None:
        return
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.skip(reason=reason))


class LiveServer:
    """The app under uvicorn in a thread, on a free port, with its own event loop
    (so a test can run a dispatch tick in it, instead of waiting for the clock)."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.app = app
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())

    def __enter__(self) -> LiveServer:
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                return self
            threading.Event().wait(0.02)
        raise RuntimeError("the test server did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=30)


@pytest.fixture
def live(engine, clock, settings) -> Iterator[LiveServer]:
    clock.set(JOIN)
    app = create_app(settings, engine=engine, clock=clock, run_scheduler=False)
    with LiveServer(app) as server:
        yield server


@pytest.fixture
def page(live) -> Iterator[Any]:
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--headless=new",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        context = browser.new_context(viewport={"width": 1366, "height": 900}, locale="zh-CN")
        page = context.new_page()
        page.set_default_timeout(15_000)
        yield page
        context.close()
        browser.close()


def shot(page: Any, name: str, *, full_page: bool = True) -> Path:
    """Save a screenshot for CI's artifacts and return its path."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def no_horizontal_overflow(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))
