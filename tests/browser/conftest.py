"""Fixtures of the browser tests: the web pages driven in Debian's Chromium by Playwright.

The real upstream (Medplum, carebundle-10 loaded through the gateway) behind a real gateway
process (``consentry serve``; the development issuer on, so sign-in goes through the gateway's
development authorization endpoint; a SQLite store in its working directory; the opt-out
jurisdiction, so a practitioner reads everything until a patient says no). The browser is
``/usr/bin/chromium`` (``$CHROMIUM`` to name another), headless, launched once per session;
each test gets a fresh context (no cookies) at desktop (1280x900) or phone (375x812) size.
``scripts/test.sh`` installs the browser when missing; here a missing browser fails the test,
like a missing peer (``tests/support/peers.py``): these tests never skip.

:func:`check_page` is what every page test calls: a full-page screenshot to
``build/screenshots/<name>.png`` (gitignored; CI does not collect artifacts, so they stay in
the clone's ``build/``), axe-core (the copy bundled with ``axe-playwright-python``, run in the
page) with zero violations of WCAG 2.0/2.1/2.2 A and AA, and no Content-Security-Policy
violation reported by the browser while the page loaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    ViewportSize,
    sync_playwright,
)

from tests.browser.pages import BREAK_GLASS_SCOPE, Site, new_watched
from tests.support import GatewayServer, UpstreamServer, load_carebundle
from tests.support.peers import repo_root

#: The viewports every page is checked at (a phone is WCAG 2.2 reflow's 320-375 px case).
VIEWPORTS: dict[str, ViewportSize] = {
    "desktop": {"width": 1280, "height": 900},
    "phone": {"width": 375, "height": 812},
}


def screenshots() -> Path:
    """Where :meth:`Site.check_page` saves screenshots: ``$SCREENSHOTS_DIR`` (relative to the
    repository root), else ``build/screenshots``."""
    return repo_root() / os.environ.get("SCREENSHOTS_DIR", "build/screenshots")


def chromium_path() -> str:
    """Debian's Chromium (``$CHROMIUM`` overrides); fails the test when it is not there."""
    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"{path} is missing: scripts/test.sh installs it "
            "(apt-get install --no-install-recommends chromium)"
        )
    return path


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer() as server:
        yield server


class _Gateway(GatewayServer):
    """The peers' gateway whose ``[auth]`` table (the generated file's last) also names the
    scope that may break the glass."""

    def _settings_file(self, port: int) -> str:
        return super()._settings_file(port) + f'break_glass_scope = "{BREAK_GLASS_SCOPE}"\n'


@pytest.fixture(scope="session")
def gateway(upstream: UpstreamServer) -> Iterator[GatewayServer]:
    with _Gateway(
        upstream.base_url,
        store="sqlite:consentry.db",
        consent_jurisdiction="opt-out",
    ) as server:
        yield server


@pytest.fixture(scope="session")
def carebundle(gateway: GatewayServer) -> dict[str, list[str]]:
    """Patient id -> what its transaction created (loaded through the gateway)."""
    with httpx.Client(timeout=60.0) as client:
        return load_carebundle(gateway, client)


@pytest.fixture(scope="session")
def patients(carebundle: dict[str, list[str]]) -> list[str]:
    assert len(carebundle) == 10
    return list(carebundle)


# Package scope: the driver's own event loop is gone before the asyncio tests of later
# packages run.
@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    # Chromium's sandbox refuses to start as root (CI runs as root).
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    launched = playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=args)
    yield launched
    launched.close()


@pytest.fixture(params=list(VIEWPORTS))
def viewport(request: pytest.FixtureRequest) -> str:
    """Each page test runs at each viewport."""
    name: str = request.param
    return name


def new_context(browser: Browser, viewport: str) -> BrowserContext:
    """A fresh browser profile (no cookies) at ``viewport`` that accepts downloads."""
    made = browser.new_context(
        viewport=VIEWPORTS[viewport],
        accept_downloads=True,
        locale="en-US",
        is_mobile=viewport == "phone",
        has_touch=viewport == "phone",
    )
    made.set_default_timeout(15_000)  # a page answers in well under a second
    return made


@pytest.fixture
def context(browser: Browser, viewport: str) -> Iterator[BrowserContext]:
    made = new_context(browser, viewport)
    new_watched(made)
    yield made
    made.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture
def site(gateway: GatewayServer, carebundle: dict[str, list[str]], viewport: str) -> Site:
    """The gateway's pages at this test's viewport (the carebundle is loaded first)."""
    return Site(gateway, viewport, screenshots())


@pytest.fixture
def desktop_context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh desktop-size context, for tests where the viewport does not matter."""
    made = new_context(browser, "desktop")
    new_watched(made)
    yield made
    made.close()


@pytest.fixture
def desktop(desktop_context: BrowserContext) -> Page:
    return desktop_context.new_page()


@pytest.fixture
def desktop_site(gateway: GatewayServer, carebundle: dict[str, list[str]]) -> Site:
    return Site(gateway, "desktop", screenshots())


@pytest.fixture
def open_page(browser: Browser) -> Iterator[Callable[[], Page]]:
    """Opens a page in a fresh desktop-size context (one person each); all closed after."""
    made: list[BrowserContext] = []

    def open_one() -> Page:
        context = new_context(browser, "desktop")
        new_watched(context)
        made.append(context)
        return context.new_page()

    yield open_one
    for context in made:
        context.close()
