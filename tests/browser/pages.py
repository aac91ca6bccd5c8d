"""What the browser tests do to a page: check it (screenshot, axe-core, CSP), walk it with the
keyboard, and sign in through the gateway's development authorization endpoint.

axe-core is the copy bundled with ``axe-playwright-python`` (``axe.min.js``; nothing is
fetched), injected through the DevTools protocol, which the page's Content-Security-Policy does
not govern, so the CSP under test stays exactly the one the gateway sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import BrowserContext, Locator, Page

from tests.support import GatewayServer

__all__ = [
    "BREAK_GLASS_SCOPE",
    "CSP_WATCH",
    "WCAG_TAGS",
    "Site",
    "axe_report",
    "focus_is_visible",
    "new_watched",
    "sign_in",
    "tab_to",
]

#: The scope that lets a practitioner break the glass (the test gateway's ``break_glass_scope``).
BREAK_GLASS_SCOPE: Final = "consentry/break-glass"
#: WCAG 2.0, 2.1 and 2.2, levels A and AA (axe-core's rule tags).
WCAG_TAGS: Final = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa")
#: Added to every document before its own scripts: collects the CSP violations the browser
#: reports (https://www.w3.org/TR/CSP3/#violation-events), read back by Site.check_page.
CSP_WATCH: Final = """
document.addEventListener('securitypolicyviolation', (e) => {
  (window.__cspViolations = window.__cspViolations || []).push(
    e.effectiveDirective + ' blocked ' + (e.blockedURI || 'inline'));
});
"""
_AXE: Final = Axe()


@dataclass(frozen=True)
class Site:
    """The gateway's web pages, checked at ``viewport``; screenshots go to ``shots``."""

    gateway: GatewayServer
    viewport: str
    shots: Path

    def url(self, path: str) -> str:
        """``path`` (``/portal/...``) on the gateway's origin."""
        return self.gateway.root_url + path

    @property
    def origin(self) -> str:
        return self.gateway.root_url

    def check_page(self, page: Page, name: str) -> None:
        """Screenshot ``page`` to ``<shots>/<name>-<viewport>.png``, then assert axe-core finds
        no WCAG 2.2 A/AA violation and the browser reported no CSP violation."""
        page.wait_for_load_state("load")
        self.shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=self.shots / f"{name}-{self.viewport}.png", full_page=True)
        results = _AXE.run(page, options={"runOnly": {"type": "tag", "values": list(WCAG_TAGS)}})
        assert results.violations_count == 0, f"{name} ({self.viewport}): " + axe_report(
            results.response
        )
        blocked = page.evaluate("window.__cspViolations || []")
        assert blocked == [], f"{name}: the browser blocked {blocked}"
        # Readable at 375 px: nothing wider than the viewport (WCAG 2.2 SC 1.4.10 reflow).
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{name} ({self.viewport}): scrolls sideways by {overflow}px"

    # -- sign-in ---------------------------------------------------------------------------

    def sign_in_patient(self, page: Page, patient: str, *, check: bool = False) -> None:
        """Open the portal, sign in as ``Patient/<patient>`` at the development authorization
        page, and come back to the portal signed in; ``check``: :meth:`check_page` the sign-in
        and authorization pages on the way."""
        page.goto(self.url("/portal/"))
        self._authorize(page, "portal", check)
        page.get_by_label("Patient id").fill(patient)
        page.get_by_role("button", name="Sign in as this patient").click()
        page.wait_for_url(self.url("/portal/"))

    def sign_in_auditor(self, page: Page, *, check: bool = False) -> None:
        """Open the dashboard and sign in as the development auditor."""
        page.goto(self.url("/compliance/"))
        self._authorize(page, "compliance", check)
        page.get_by_role("button", name="Sign in as the auditor").click()
        page.wait_for_url(self.url("/compliance/"))

    def _authorize(self, page: Page, area: str, check: bool) -> None:
        # Not signed in: the area's sign-in page, then the issuer's (development-only)
        # authorization page.
        page.wait_for_url(self.url(f"/{area}/signin") + "**")
        if check:
            self.check_page(page, f"{area}-signin")
        sign_in(page).click()
        page.wait_for_url("**/auth/authorize**")
        if check:
            self.check_page(page, f"{area}-dev-authorize")


def sign_in(page: Page) -> Locator:
    """The sign-in page's "Sign in" action (a link styled as a button)."""
    return page.locator("main").get_by_role("link", name="Sign in", exact=True)


def new_watched(context: BrowserContext) -> None:
    """Make every document of ``context`` collect its CSP violations (:data:`CSP_WATCH`)."""
    context.add_init_script(CSP_WATCH)


def axe_report(response: dict[str, Any]) -> str:
    """Each violation: rule, impact, help and the first targets, one per line."""
    lines = []
    for violation in response["violations"]:
        targets = [", ".join(node["target"]) for node in violation["nodes"][:5]]
        lines.append(f"{violation['id']} ({violation['impact']}): {violation['help']} at {targets}")
    return "\n".join(lines)


def tab_to(page: Page, target: Locator, *, limit: int = 60) -> int:
    """Press Tab from the top of the page until ``target`` has the focus; the number of
    presses. Fails when ``limit`` presses never reach it or the focus is not visible there."""
    page.evaluate("document.activeElement && document.activeElement.blur()")
    handle = target.element_handle()
    assert handle is not None
    for presses in range(1, limit + 1):
        page.keyboard.press("Tab")
        if page.evaluate("(el) => document.activeElement === el", handle):
            assert focus_is_visible(page), "the focused element shows no focus indicator"
            return presses
    raise AssertionError(f"{limit} presses of Tab never reached {target}")


def focus_is_visible(page: Page) -> bool:
    """The focused element matches ``:focus-visible`` and draws an outline or a shadow
    (WCAG 2.2 SC 2.4.7)."""
    visible: bool = page.evaluate(
        """() => {
          const el = document.activeElement;
          if (!el || !el.matches(':focus-visible')) return false;
          const s = getComputedStyle(el);
          const outline = s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0;
          return outline || s.boxShadow !== 'none';
        }"""
    )
    return visible
