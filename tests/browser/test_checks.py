"""The page checks themselves can fail: each is shown a page (served by Playwright for a
made-up origin, nothing leaves the machine) with the one fault it exists to find."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from playwright.sync_api import Page, Route

from tests.browser.pages import Site, tab_to

pytestmark = [pytest.mark.integration, pytest.mark.browser]

SHOWN = "http://checks.test"
_PAGE = (
    '<!DOCTYPE html><html lang="en"><head><title>Check</title>'
    '<meta name="viewport" content="width=device-width, initial-scale=1"></head>'
    "<body><main><h1>Check</h1>{body}</main></body></html>"
)


def _show(page: Page, body: str, headers: dict[str, str] | None = None) -> None:
    def answer(route: Route) -> None:
        route.fulfill(
            status=200,
            content_type="text/html",
            headers=headers or {},
            body=_PAGE.format(body=body),
        )

    page.route(f"{SHOWN}/**", answer)
    page.goto(f"{SHOWN}/page")


@pytest.mark.parametrize(
    ("body", "headers", "found"),
    [
        ('<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">', None, "image-alt"),
        ('<p style="color:#aaa">faint</p>', None, "color-contrast"),
        (
            "<script>document.title = 'x'</script>",
            {"content-security-policy": "script-src 'self'"},
            "script-src-elem blocked inline",
        ),
        ('<div style="width:900px">wide</div>', None, "scrolls sideways"),
    ],
    ids=["no-alt", "contrast", "csp", "reflow"],
)
def test_check_page_finds(
    page: Page,
    site: Site,
    viewport: str,
    body: str,
    headers: dict[str, str] | None,
    found: str,
    tmp_path: Path,
) -> None:
    if found == "scrolls sideways" and viewport != "phone":
        body = '<div style="width:2000px">wide</div>'
    _show(page, body, headers)
    with pytest.raises(AssertionError, match=found):
        replace(site, shots=tmp_path).check_page(page, "check")


def test_tab_to_finds_a_hidden_focus(page: Page) -> None:
    _show(page, '<p><a href="#x" style="outline:none">there</a></p>')
    with pytest.raises(AssertionError, match="no focus indicator"):
        tab_to(page, page.get_by_role("link", name="there"))
