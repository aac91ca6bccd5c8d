"""The compliance dashboard in the browser: every page, for a signed-in auditor, at desktop
and phone size, passes :meth:`~tests.browser.pages.Site.check_page` (axe-core WCAG 2.2 A/AA,
no CSP violation, no sideways scroll), with traffic on the ledger to show: a practitioner's
reads, and one break-the-glass read waiting for review (so the review form is on the page).
"""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.pages import BREAK_GLASS_SCOPE, Site, tab_to
from tests.integration.enforcing import FHIR_JSON, deny_actor
from tests.support import GatewayServer

pytestmark = [pytest.mark.integration, pytest.mark.browser]

GLASS_DR = "Practitioner/dr-glass"


@pytest.fixture(scope="module")
def traffic(gateway: GatewayServer, patients: list[str]) -> list[str]:
    """A practitioner read two patients; a third refused another practitioner in a consent of
    their own, who then broke the glass to read the record anyway."""
    reader = gateway.bearer("dr-reader", "user/*.rs", fhir_user="Practitioner/dr-reader")
    glass = gateway.bearer("dr-glass", f"user/*.rs {BREAK_GLASS_SCOPE}", fhir_user=GLASS_DR)
    refusing = patients[4]
    own = gateway.bearer(
        f"user-{refusing}", "launch/patient patient/Consent.cruds", patient=refusing
    )
    with httpx.Client(timeout=30.0, headers={"accept": "application/fhir+json"}) as http:
        for patient in patients[2:4]:
            assert http.get(f"{gateway.base_url}/Patient/{patient}", headers=reader).is_success
        made = http.post(
            f"{gateway.base_url}/Consent",
            json=deny_actor(refusing, GLASS_DR),
            headers={**own, **FHIR_JSON},
        )
        assert made.status_code == 201, made.text
        opened = http.get(
            f"{gateway.base_url}/Patient/{refusing}",
            headers={**glass, "x-break-glass-reason": "unconscious patient in the ED"},
        )
        assert opened.is_success, opened.text
    return patients[2:5]


def test_the_overview(page: Page, site: Site, traffic: list[str]) -> None:
    site.sign_in_auditor(page)
    site.check_page(page, "compliance-overview")
    tab_to(page, page.get_by_role("link", name="Search", exact=True))


def test_the_search_with_results(page: Page, site: Site, traffic: list[str]) -> None:
    site.sign_in_auditor(page)
    page.goto(site.url("/compliance/search"))
    site.check_page(page, "compliance-search")
    page.get_by_label("Patient").fill(traffic[0])
    tab_to(page, page.get_by_role("button", name="Search", exact=True))
    page.keyboard.press("Enter")
    page.wait_for_url("**/compliance/search?**")
    expect(page.get_by_role("table")).to_contain_text("Practitioner/dr-reader")
    site.check_page(page, "compliance-search-results")


def test_the_reports(page: Page, site: Site, traffic: list[str]) -> None:
    site.sign_in_auditor(page)
    page.goto(site.url("/compliance/reports"))
    site.check_page(page, "compliance-reports")


def test_the_review_queue(page: Page, site: Site, traffic: list[str]) -> None:
    site.sign_in_auditor(page)
    page.goto(site.url("/compliance/review"))
    expect(page.get_by_text(GLASS_DR).first).to_be_visible()
    site.check_page(page, "compliance-review")


def test_a_reviewer_marks_the_access_reviewed(
    desktop: Page, desktop_site: Site, traffic: list[str]
) -> None:
    """With the keyboard only: the note typed, the button pressed; the page says the review
    is on the ledger, the queue is empty and the review is listed with the note."""
    page, site = desktop, desktop_site
    site.sign_in_auditor(page)
    page.goto(site.url("/compliance/review"))
    note = page.get_by_label("What you checked").first
    tab_to(page, note)
    page.keyboard.type("Checked with the ED: patient was unconscious.")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("Review saved on the ledger as entry")
    expect(page.get_by_text("Nothing is waiting for review.")).to_be_visible()
    expect(page.locator("main table")).to_contain_text("patient was unconscious")
    site.check_page(page, "compliance-reviewed")


def test_the_ledger_status(page: Page, site: Site, traffic: list[str]) -> None:
    site.sign_in_auditor(page)
    page.goto(site.url("/compliance/ledger"))
    site.check_page(page, "compliance-ledger")
