"""Headless Chromium (driven by Playwright) for the explorer page's tests: the system's Chromium
(``make browser``: Debian's package) through ``executable_path``, never a browser download.
``needs_chromium`` skips a module, saying why, where none is installed; ``keep`` copies a
screenshot into ``EXPLORER_SCREENSHOTS`` when that is set."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Page, sync_playwright

from tests.support.servers import wait_until

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The binary named by ``$CHROMIUM``, else the first Chromium on the PATH."""
    named = os.environ.get("CHROMIUM")
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium here (make browser, apt-get install chromium, or set CHROMIUM=<binary>): "
    "the explorer page was not checked in a browser",
)


@dataclass
class Browser:
    """One page in headless Chromium, with every URL it requested and every error it logged
    (script exceptions, Content-Security-Policy violations, failed loads)."""

    page: Page
    requested: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} {message.location.get('url', '')}".strip())

    def wait_for(self, expression: str, timeout_s: float = 30.0) -> Any:
        """The value of ``expression`` once it is truthy. Polled with ``evaluate``: the page's CSP
        (no 'unsafe-eval') refuses the eval behind Playwright's ``wait_for_function``."""
        last: list[Any] = [None]

        def truthy() -> bool:
            last[0] = self.page.evaluate(expression)
            return bool(last[0])

        wait_until(truthy, timeout_s, lambda: f"{expression!r} still {last[0]!r}", 0.1)
        return last[0]


@contextmanager
def open_browser() -> Iterator[Browser]:
    """A fresh page (1280x1000) in headless Chromium, watched for requests and errors."""
    assert CHROMIUM is not None
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            watched = Browser(chromium.new_page(viewport={"width": 1280, "height": 1000}))
            watched.page.on("request", lambda request: watched.requested.append(request.url))
            watched.page.on("console", watched.console)
            watched.page.on("pageerror", lambda error: watched.errors.append(str(error)))
            yield watched
        finally:
            chromium.close()


def keep(screenshot: Path) -> None:
    """A copy of ``screenshot`` in ``$EXPLORER_SCREENSHOTS`` (made if missing), when set."""
    folder = os.environ.get("EXPLORER_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(folder) / screenshot.name)
