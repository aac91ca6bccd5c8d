"""The end-to-end story, in Chromium, against the real upstream through a real gateway:

1. a patient signs in and denies one practitioner (``Practitioner/dr``) from the portal's
   form, after a confirmation page that says what will change;
2. the practitioner's next read of the patient through the gateway is the generic 404;
3. the patient sees that refused read in "who looked at my record";
4. the patient revokes the consent (again after a confirmation), and the practitioner reads
   the record again;
5. an auditor finds those events in the dashboard's search, downloads the patient's
   accounting of disclosures as PDF and CSV, and ``consentry audit verify-export`` accepts the
   downloaded CSV.

Every page on the way passes :meth:`~tests.browser.pages.Site.check_page` (desktop size;
``test_portal.py`` checks the portal's pages at phone size too).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.pages import Site
from tests.support import GatewayServer

pytestmark = [pytest.mark.integration, pytest.mark.browser]

DR = "Practitioner/dr"


def _dr_reads(gateway: GatewayServer, patient: str) -> int:
    """The status of the practitioner's read of ``Patient/<patient>`` through the gateway."""
    token = gateway.bearer("dr", "user/*.rs", fhir_user=DR)
    answer = httpx.get(
        f"{gateway.base_url}/Patient/{patient}",
        headers={**token, "accept": "application/fhir+json"},
        timeout=30.0,
    )
    return answer.status_code


def _deny_dr(page: Page, site: Site) -> str:
    """From the portal's home: the form, its confirmation, saved; the new consent's id."""
    page.locator('main a[href="/portal/consents/new"]').click()
    page.wait_for_url(site.url("/portal/consents/new"))
    site.check_page(page, "story-consent-form")
    page.locator("#decision-deny").check()
    page.locator("#who-practitioner").check()
    page.locator("#who_id").fill("dr")
    page.locator("#what-all").check()
    page.locator("main form button[type=submit]").click()
    page.wait_for_url(site.url("/portal/consents/new/review"))
    expect(page.locator("main")).to_contain_text("dr")
    site.check_page(page, "story-consent-confirm")
    page.locator("main form button[type=submit]:not(.secondary)").click()
    page.wait_for_url(site.url("/portal/consents/new/save"))
    expect(page.get_by_role("status")).to_be_visible()
    site.check_page(page, "story-consent-saved")
    details = page.locator('main a[href^="/portal/consents/"]').first.get_attribute("href")
    assert details is not None
    return details.removeprefix("/portal/consents/")


def test_deny_read_refused_seen_revoke_read_audit_export(
    open_page: Callable[[], Page],
    gateway: GatewayServer,
    desktop_site: Site,
    patients: list[str],
    tmp_path: Path,
) -> None:
    site, patient = desktop_site, patients[1]
    assert _dr_reads(gateway, patient) == 200  # opt-out: nothing refused yet

    # 1. The patient denies dr.
    portal = open_page()
    site.sign_in_patient(portal, patient)
    consent_id = _deny_dr(portal, site)

    # 2. The very next read is the generic 404.
    assert _dr_reads(gateway, patient) == 404

    # 3. The patient sees the refused read (the page's filter on who).
    portal.goto(site.url("/portal/access"))
    portal.locator("main form").get_by_label("Who", exact=True).fill(DR)
    portal.get_by_role("button", name="Show", exact=True).click()
    portal.wait_for_url("**/portal/access?**")
    newest = portal.locator("main tbody tr").first
    expect(newest).to_contain_text(DR)
    expect(newest).to_contain_text("Stopped")
    site.check_page(portal, "story-access")

    # 4. Revoke, then dr reads again.
    portal.goto(site.url(f"/portal/consents/{consent_id}"))
    site.check_page(portal, "story-consent")
    portal.goto(site.url(f"/portal/consents/{consent_id}/revoke"))
    site.check_page(portal, "story-revoke-confirm")
    portal.locator("main form button[type=submit]").click()
    expect(portal.get_by_role("status")).to_be_visible()
    site.check_page(portal, "story-revoked")
    assert _dr_reads(gateway, patient) == 200

    # 5. The auditor finds dr's reads of the patient, refused and released.
    dashboard = open_page()
    site.sign_in_auditor(dashboard)
    dashboard.goto(site.url("/compliance/search"))
    dashboard.get_by_label("Patient").fill(patient)
    dashboard.get_by_label("Who acted").fill(DR)
    dashboard.get_by_role("button", name="Search", exact=True).click()
    dashboard.wait_for_url("**/compliance/search?**")
    rows = dashboard.locator("main tbody tr", has_text=DR)
    assert rows.count() >= 3  # read before, refused read, read after
    site.check_page(dashboard, "story-search")

    # ... downloads the accounting as PDF and CSV ...
    dashboard.goto(site.url("/compliance/reports"))
    files = {}
    for kind in ("pdf", "csv"):
        section = dashboard.locator("section", has=dashboard.locator("#r-accounting"))
        section.get_by_label("Patient").fill(patient)
        section.get_by_label("File type").select_option(kind)
        with dashboard.expect_download() as got:
            section.get_by_role("button", name="Download").click()
        files[kind] = tmp_path / f"accounting.{kind}"
        got.value.save_as(files[kind])
    assert files["pdf"].read_bytes().startswith(b"%PDF")
    assert files["csv"].read_text(encoding="utf-8").strip()

    # ... and verify-export accepts the downloaded CSV, offline.
    report = _verify_export(gateway, files["csv"], tmp_path)
    assert report["ok"] is True, report
    scope = (report["report"], report["scope"]["patient"])
    assert scope == ("accounting", f"Patient/{patient}"), report
    assert report["rows"] >= 1


def _verify_export(gateway: GatewayServer, path: Path, tmp_path: Path) -> dict[str, Any]:
    """``consentry audit verify-export`` on ``path`` with the gateway's trust policy."""
    policy = gateway.consentry(
        "keys", "policy", "--key-file", str(gateway.ledger_key_file),
        "--origin", gateway.ledger_origin,
    )  # fmt: skip
    assert policy.returncode == 0, policy.stderr
    trust = tmp_path / "trust.toml"
    trust.write_text(policy.stdout, encoding="utf-8")
    done = gateway.consentry("audit", "verify-export", str(path), "--trust", str(trust))
    assert done.returncode in (0, 1), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report
