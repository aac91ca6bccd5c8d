"""Sign-in and sign-out in the browser, for both areas, at both viewports: each page on the way
(the area's sign-in page, the development authorization page, the home page) passes
:meth:`~tests.browser.pages.Site.check_page`, and the keyboard reaches the main action."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.pages import Site, tab_to

pytestmark = [pytest.mark.integration, pytest.mark.browser]


def test_a_patient_signs_in_and_out(page: Page, site: Site, patients: list[str]) -> None:
    site.sign_in_patient(page, patients[0], check=True)
    expect(page.get_by_text(f"Patient/{patients[0]}")).to_be_visible()
    site.check_page(page, "portal-home")
    # The first Tab reaches the skip link, and Tab reaches signing out.
    assert tab_to(page, page.get_by_role("link", name="Skip to main content")) == 1
    sign_out = page.get_by_role("button", name="Sign out")
    tab_to(page, sign_out)
    page.keyboard.press("Enter")
    page.wait_for_url(site.url("/portal/signin") + "**")
    # Signed out: the portal sends the browser to sign in again.
    page.goto(site.url("/portal/"))
    page.wait_for_url(site.url("/portal/signin") + "**")


def test_an_auditor_signs_in_and_out(page: Page, site: Site) -> None:
    site.sign_in_auditor(page, check=True)
    site.check_page(page, "compliance-home")
    page.get_by_role("button", name="Sign out").click()
    page.goto(site.url("/compliance/"))
    page.wait_for_url(site.url("/compliance/signin") + "**")
