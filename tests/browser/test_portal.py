"""The patient portal in the browser.

- Every page (home with a consent, the form, its confirmation, the saved result, a consent's
  details, the change form, the revoke confirmation, "who looked at my record", a receipt and
  the receipt check) passes :meth:`~tests.browser.pages.Site.check_page` at desktop and phone
  size, and the keyboard reaches the main action.
- A patient never reaches another patient's data: with a signed-in session of one patient,
  another patient's consent (its page, change form, revoke confirmation, a forged revoke) and
  receipt answer the generic not-found page; a forged revoke of it is refused and the other
  consent stays as it was.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.browser.pages import BREAK_GLASS_SCOPE, Site, tab_to
from tests.integration.enforcing import FHIR_JSON, deny_actor
from tests.support import GatewayServer

pytestmark = [pytest.mark.integration, pytest.mark.browser]

NOT_FOUND = "Page not found"


@dataclass(frozen=True)
class Theirs:
    """Another patient's consent, made through the Consent API with that patient's token."""

    patient: str
    consent: str
    index: int
    headers: dict[str, str]


@pytest.fixture(scope="module")
def theirs(gateway: GatewayServer, patients: list[str]) -> Theirs:
    patient = patients[5]
    own = gateway.bearer(f"user-{patient}", "launch/patient patient/Consent.cruds", patient=patient)
    made = httpx.post(
        f"{gateway.base_url}/Consent",
        json=deny_actor(patient, "Practitioner/someone"),
        headers={**own, **FHIR_JSON, "accept": "application/fhir+json"},
        timeout=30.0,
    )
    assert made.status_code == 201, made.text
    index = int(made.headers["x-consentry-ledger-index"])
    return Theirs(patient, made.json()["id"], index, own)


def _make_consent(page: Page, site: Site, who: str) -> None:
    """Deny practitioner ``who`` from the form, through its confirmation (each page checked)."""
    page.goto(site.url("/portal/consents/new"))
    site.check_page(page, "portal-form")
    page.locator("#decision-deny").check()
    page.locator("#who-practitioner").check()
    page.locator("#who_id").fill(who)
    page.locator("#what-all").check()
    tab_to(page, page.locator("main form button[type=submit]"))
    page.keyboard.press("Enter")
    page.wait_for_url(site.url("/portal/consents/new/review"))
    site.check_page(page, "portal-confirm")
    page.locator("main form button[type=submit]:not(.secondary)").click()
    page.wait_for_url(site.url("/portal/consents/new/save"))
    expect(page.get_by_role("status")).to_be_visible()
    site.check_page(page, "portal-saved")


def test_every_portal_page(page: Page, site: Site, patients: list[str]) -> None:
    patient = patients[6]
    site.sign_in_patient(page, patient)
    _make_consent(page, site, f"nurse-{site.viewport}")

    page.goto(site.url("/portal/"))
    expect(page.locator("main section.card").first).to_be_visible()
    site.check_page(page, "portal-home-with-consent")
    tab_to(page, page.locator('main a[href="/portal/consents/new"]'))

    consent = page.locator("main section.card a[href$='/change']").first.get_attribute("href")
    assert consent is not None
    base = consent.removesuffix("/change")
    page.goto(site.url(base))
    site.check_page(page, "portal-consent")
    page.goto(site.url(f"{base}/change"))
    site.check_page(page, "portal-change-form")
    page.goto(site.url(f"{base}/revoke"))
    site.check_page(page, "portal-revoke-confirm")

    page.goto(site.url("/portal/access"))
    site.check_page(page, "portal-access")

    page.goto(site.url("/portal/"))
    receipt = page.locator('main a[href^="/portal/receipts/"]').first.get_attribute("href")
    assert receipt is not None
    page.goto(site.url(receipt))
    site.check_page(page, "portal-receipt")
    page.goto(site.url("/portal/receipts/check"))
    site.check_page(page, "portal-receipt-check")


def _choose(page: Page, name: str, value: str) -> None:
    """With the keyboard: Tab into the radio group ``name``, then arrow keys to ``value``."""
    for _ in range(60):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.name") == name:
            break
    else:
        raise AssertionError(f"Tab never reached the {name} choices")
    for _ in range(6):
        if page.evaluate("document.activeElement.value") == value:
            page.keyboard.press("Space")
            return
        page.keyboard.press("ArrowDown")
    raise AssertionError(f"the arrow keys never reached {name}={value}")


def test_a_consent_made_with_the_keyboard_only(
    desktop: Page, desktop_site: Site, patients: list[str]
) -> None:
    """No mouse: from the home page to the saved consent, Tab, arrows, Space, typing, Enter."""
    page, site = desktop, desktop_site
    site.sign_in_patient(page, patients[3])
    tab_to(page, page.locator('main a[href="/portal/consents/new"]'))
    page.keyboard.press("Enter")
    page.wait_for_url(site.url("/portal/consents/new"))
    page.evaluate("document.activeElement && document.activeElement.blur()")
    _choose(page, "decision", "deny")
    _choose(page, "who", "practitioner")
    tab_to(page, page.locator("#who_id"))
    page.keyboard.type("keyboard-dr")
    tab_to(page, page.locator("main form button[type=submit]"))
    page.keyboard.press("Enter")
    page.wait_for_url(site.url("/portal/consents/new/review"))
    expect(page.locator("main")).to_contain_text("keyboard-dr")
    tab_to(page, page.locator("main form button[type=submit]:not(.secondary)"))
    page.keyboard.press("Enter")
    page.wait_for_url(site.url("/portal/consents/new/save"))
    expect(page.get_by_role("status")).to_be_visible()
    assert page.locator("main").inner_text().count("keyboard-dr") >= 1


def test_another_patients_consent_and_receipt_are_not_found(
    desktop: Page,
    desktop_site: Site,
    patients: list[str],
    theirs: Theirs,
) -> None:
    """The attack: a signed-in patient puts another patient's consent id or ledger index in
    the URL: the generic not-found page, as for one that does not exist."""
    page, site = desktop, desktop_site
    site.sign_in_patient(page, patients[7])
    for path in (
        f"/portal/consents/{theirs.consent}",
        f"/portal/consents/{theirs.consent}/change",
        f"/portal/consents/{theirs.consent}/revoke",
        f"/portal/receipts/{theirs.index}",
        f"/portal/receipts/{theirs.index}/download",
        f"/portal/receipts/{theirs.index}/check",
    ):
        answer = page.goto(site.url(path))
        assert answer is not None
        assert answer.status == 404, path
        expect(page.get_by_role("heading", level=1)).to_have_text(NOT_FOUND)
    site.check_page(page, "portal-not-found")


def test_a_forged_revoke_of_another_patients_consent_is_answered_as_a_missing_one(
    desktop: Page,
    desktop_context: BrowserContext,
    desktop_site: Site,
    patients: list[str],
    theirs: Theirs,
) -> None:
    """The attack: a signed-in patient posts the revoke form of another patient's consent with
    their own valid CSRF token. Refused, the other consent stays active, and the answer is the
    one for a consent that does not exist (no oracle of existence)."""
    page, site = desktop, desktop_site
    site.sign_in_patient(page, patients[7])
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    assert csrf

    def revoke(consent: str) -> int:
        answer = desktop_context.request.post(
            site.url(f"/portal/consents/{consent}/revoke"),
            form={"csrf": csrf},
            headers={"origin": site.origin},
            max_redirects=0,
        )
        return answer.status

    # Refused, and answered as for a consent that does not exist (no oracle of existence).
    forged, missing = revoke(theirs.consent), revoke(str(uuid.uuid4()))
    assert forged in (403, 404)
    still = httpx.get(
        f"{site.gateway.base_url}/Consent/{theirs.consent}",
        headers={**theirs.headers, "accept": "application/fhir+json"},
        timeout=30.0,
    )
    assert (still.status_code, still.json()["status"]) == (200, "active")
    assert forged == missing


@pytest.fixture(scope="module")
def glass_broken(gateway: GatewayServer, patients: list[str]) -> str:
    """A patient who refused a practitioner, who then broke the glass to read the record."""
    patient, dr = patients[8], "Practitioner/dr-emergency"
    own = gateway.bearer(f"user-{patient}", "launch/patient patient/Consent.cruds", patient=patient)
    glass = gateway.bearer("dr-emergency", f"user/*.rs {BREAK_GLASS_SCOPE}", fhir_user=dr)
    with httpx.Client(timeout=30.0, headers={"accept": "application/fhir+json"}) as http:
        made = http.post(
            f"{gateway.base_url}/Consent",
            json=deny_actor(patient, dr),
            headers={**own, **FHIR_JSON},
        )
        assert made.status_code == 201, made.text
        read = http.get(
            f"{gateway.base_url}/Patient/{patient}",
            headers={**glass, "x-break-glass-reason": "unconscious patient in the ED"},
        )
        assert read.is_success, read.text
    return patient


def test_an_emergency_access_is_explained(page: Page, site: Site, glass_broken: str) -> None:
    """The patient whose refusal was overridden sees the practitioner's read of the record as
    allowed and marked as an emergency access (it was released: the read answered 200), and
    the words that say what breaking the glass means."""
    site.sign_in_patient(page, glass_broken)
    page.goto(site.url("/portal/access"))
    read = page.locator("main tbody tr", has_text="Practitioner/dr-emergency").filter(
        has_text="Looked at"
    )
    expect(read).to_have_count(1)
    expect(read).to_contain_text("Emergency access")
    expect(read).to_contain_text("Allowed")
    expect(page.get_by_role("heading", name="Emergency access")).to_be_visible()
    site.check_page(page, "portal-access-emergency")
