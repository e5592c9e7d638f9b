"""Headless Chromium (Debian's, driven by Playwright) and a place for the screenshots.

Locally the browser tests skip when /usr/bin/chromium or Playwright is missing; in CI
(``CI`` set) that is a failure: scripts/setup.sh installs both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
# Every CSP violation a page reports, readable from the test (the init script runs before the
# page's own scripts and is not subject to its Content-Security-Policy).
CSP_WATCH = (
    "window.__cspViolations = [];"
    "document.addEventListener('securitypolicyviolation', e =>"
    " window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));"
)

_saved: list[Path] = []


def _missing(what: str) -> None:
    message = f"{what} (scripts/setup.sh installs it)"
    if os.environ.get("CI"):
        pytest.fail(f"browser tests in CI: {message}")
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the run."""
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} is missing: apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright is not installed: pip install -e '.[dev]'")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Any]:
    """``new_page(base_url)``: a page in a fresh context (its own cookies), watching CSP."""
    contexts = []

    def make(base_url: str) -> Any:
        context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(15_000)
        context.add_init_script(CSP_WATCH)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def screenshot() -> Any:
    """``screenshot(page, name)``: a full-page PNG at artifacts/screenshots/<name>.png (the
    folder is git-ignored); the paths are listed at the end of the run."""

    def save(page: Any, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        _saved.append(path)
        return path

    return save


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Where the screenshots of this run are."""
    if _saved:
        terminalreporter.write_sep("-", "dashboard screenshots")
        for path in _saved:
            terminalreporter.write_line(str(path))
