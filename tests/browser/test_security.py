"""The pages' defences, tried from a real browser with real cookies.

- CSRF: a form post without the session's token, with a wrong one, or with the right one from
  another origin is refused (403) and changes nothing; a page of another site that posts a
  form to the gateway does not carry the session cookie (SameSite=Strict) and is refused too.
- The same for the consent form's Save: a forged one makes no Consent.
- Areas: a patient's session does not open the compliance dashboard, and the dashboard's
  sign-in gives a patient no authorization code.
"""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, Route, expect

from tests.browser.pages import Site, sign_in
from tests.support import GatewayServer

pytestmark = [pytest.mark.integration, pytest.mark.browser]

#: Another site (Playwright answers for it; nothing leaves the machine).
ATTACKER = "http://attacker.test"


def _csrf(page: Page) -> str:
    token = page.locator("input[name=csrf]").first.get_attribute("value")
    assert token
    return token


def _still_signed_in(page: Page, site: Site, patient: str) -> None:
    page.goto(site.url("/portal/"))
    assert page.url == site.url("/portal/")
    expect(page.get_by_text(f"Patient/{patient}")).to_be_visible()


@pytest.mark.parametrize(
    ("case", "origin"),
    [("no token", "own"), ("wrong token", "own"), ("right token", ATTACKER)],
    ids=["no-token", "wrong-token", "foreign-origin"],
)
def test_a_forged_sign_out_is_refused(
    desktop: Page,
    desktop_context: BrowserContext,
    desktop_site: Site,
    patients: list[str],
    case: str,
    origin: str,
) -> None:
    """The attack: make the signed-in browser post the sign-out form (the session cookie goes
    along). Each post is refused with the 403 page and the person stays signed in."""
    page, site = desktop, desktop_site
    site.sign_in_patient(page, patients[0])
    form: dict[str, dict[str, str | float | bool]] = {
        "no token": {},
        "wrong token": {"csrf": "x" * 43},
        "right token": {"csrf": _csrf(page)},
    }
    answer = desktop_context.request.post(
        site.url("/portal/signout"),
        form=form[case],
        headers={"origin": site.origin if origin == "own" else origin},
        max_redirects=0,
    )
    assert answer.status == 403
    assert "Action stopped" in answer.text()
    _still_signed_in(page, site, patients[0])
    if case == "wrong token":
        # The refusal page itself, shown at the gateway's origin (its stylesheet loads).
        page.set_content(answer.text())
        site.check_page(page, "error-refused")


def test_another_sites_form_does_not_carry_the_session(
    desktop: Page, desktop_site: Site, patients: list[str]
) -> None:
    """The attack: a page on another site holding the right CSRF token (the worst case) submits
    the sign-out form to the gateway. The browser sends no session cookie with it
    (SameSite=Strict), so the gateway sees nobody signed in and sends the browser to sign in;
    the person stays signed in."""
    page, site = desktop, desktop_site
    site.sign_in_patient(page, patients[0])
    token = _csrf(page)
    evil = (
        '<!DOCTYPE html><html lang="en"><title>Win a prize</title><body>'
        f'<form method="post" action="{site.url("/portal/signout")}">'
        f'<input type="hidden" name="csrf" value="{token}">'
        '<button type="submit">Claim</button></form></body></html>'
    )

    def attacker(route: Route) -> None:
        route.fulfill(status=200, content_type="text/html", body=evil)

    page.route(f"{ATTACKER}/**", attacker)
    page.goto(f"{ATTACKER}/prize")
    with page.expect_response(site.url("/portal/signout")) as sent:
        page.get_by_role("button", name="Claim").click()
    assert sent.value.status == 303
    assert sent.value.headers["location"].startswith("/portal/signin")
    assert "cookie" not in {k.lower() for k in sent.value.request.all_headers()}
    _still_signed_in(page, site, patients[0])


def test_a_patient_session_does_not_open_the_dashboard(
    page: Page, context: BrowserContext, site: Site, patients: list[str]
) -> None:
    """Signed in to the portal, the dashboard still asks for an auditor's sign-in; its
    authorization page offers no patient sign-in, and a forged post asking for a patient
    there gets no authorization code."""
    site.sign_in_patient(page, patients[0])
    page.goto(site.url("/compliance/"))
    page.wait_for_url(site.url("/compliance/signin") + "**")
    site.check_page(page, "compliance-signin")
    sign_in(page).click()
    page.wait_for_url("**/auth/authorize**")
    expect(page.get_by_label("Patient id")).to_have_count(0)
    fields: dict[str, str | float | bool] = {}
    for hidden in page.locator("main form input[type=hidden]").all():
        name = hidden.get_attribute("name")
        assert name is not None
        fields[name] = hidden.get_attribute("value") or ""
    forged = context.request.post(
        site.url("/auth/authorize"),
        form={**fields, "who": "patient", "patient": patients[0]},
        headers={"origin": site.origin},
        max_redirects=0,
    )
    assert forged.status >= 400
    assert "code=" not in forged.headers.get("location", "")
    page.goto(site.url("/compliance/"))
    page.wait_for_url(site.url("/compliance/signin") + "**")


def _consents_of(gateway: GatewayServer, patient: str) -> int:
    """How many Consents the patient has (through the Consent API, with the patient's token)."""
    own = gateway.bearer(f"user-{patient}", "launch/patient patient/Consent.rs", patient=patient)
    found = httpx.get(
        f"{gateway.base_url}/Consent",
        params={"patient": patient},
        headers={**own, "accept": "application/fhir+json"},
        timeout=30.0,
    )
    assert found.status_code == 200, found.text
    return len(found.json().get("entry", []))


@pytest.mark.parametrize(
    ("case", "origin"),
    [("no token", "own"), ("wrong token", "own"), ("right token", ATTACKER)],
    ids=["no-token", "wrong-token", "foreign-origin"],
)
def test_a_forged_consent_is_refused(
    desktop: Page,
    desktop_context: BrowserContext,
    desktop_site: Site,
    gateway: GatewayServer,
    patients: list[str],
    case: str,
    origin: str,
) -> None:
    """The attack: make the signed-in browser post the confirmation page's Save (a consent
    that lets ``Practitioner/attacker`` see everything) without the page's token, with a wrong
    one, or from another origin. Refused with the 403 page; no Consent is made."""
    page, site, patient = desktop, desktop_site, patients[9]
    site.sign_in_patient(page, patient)
    before = _consents_of(gateway, patient)
    page.goto(site.url("/portal/consents/new"))
    page.locator("#decision-permit").check()
    page.locator("#who-practitioner").check()
    page.locator("#who_id").fill("attacker")
    page.locator("main form button[type=submit]").click()
    page.wait_for_url(site.url("/portal/consents/new/review"))
    save = page.locator("main form").first
    fields: dict[str, str | float | bool] = {}
    for hidden in save.locator("input[type=hidden]").all():
        name, value = hidden.get_attribute("name"), hidden.get_attribute("value")
        assert name is not None
        fields[name] = value or ""
    assert fields.pop("csrf")
    if case == "wrong token":
        fields["csrf"] = "x" * 43
    elif case == "right token":
        fields["csrf"] = _csrf(page)
    answer = desktop_context.request.post(
        site.url("/portal/consents/new/save"),
        form=fields,
        headers={"origin": site.origin if origin == "own" else origin},
        max_redirects=0,
    )
    assert answer.status == 403
    assert "Action stopped" in answer.text()
    assert _consents_of(gateway, patient) == before
