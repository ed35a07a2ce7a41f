"""Debian's headless chromium for the browser tests, driven by Playwright."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
# This machine's network is closed: without these, chromium waits on its own traffic.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT = 15_000  # ms, for any page condition
# chromium logs each answer that is not 2xx as "Failed to load resource": the sign-in
# probe's 401, the favicon's 404, a refused connection while the server restarts. The
# page expects those; any other console error, or an uncaught one, is a fault of the page.
NETWORK = re.compile(r"^Failed to load resource: ")


@contextmanager
def launch() -> Iterator[Browser]:
    """A chromium for the block (the test fails, not skips, when it is not installed)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)",
                    pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


def console_errors(page: Page) -> list[str]:
    """The page's console errors (but the network's) and uncaught errors, as they come."""
    errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and not NETWORK.match(message.text):
            errors.append(f"console: {message.text} ({message.location})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    return errors
