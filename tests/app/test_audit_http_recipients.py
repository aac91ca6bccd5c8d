"""``Patient/<id>/$accounting`` names each recipient as 45 CFR 164.528(b)(2)(ii) asks: the name
and, where the recipient directory (``recipient_directory_file``) knows it, the address; the
token's organization claim is kept as the agent's organization. Real parts: the gateway, a
memory ledger, tokens from the development issuer; the expected names are the directory
file's, written by the test."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from pypdf import PdfReader

from middleware.app import Gateway
from tests.app.consenting import Tokens, auth_settings

AUDITOR_ROLE = "ledger-auditor"
DIRECTORY = """
[recipients."Practitioner/dr-a"]
name = "Dr Ada Lovelace"
address = "1 Main Street, Springfield"

[recipients."Organization/acme"]
name = "Acme Research Institute"
address = "2 Side Road, Shelbyville"
"""
# (sub, organization claim, expected recipient, expected address, expected organization)
CALLERS: list[tuple[str, str | None, str, str, str]] = [
    ("dr-a", "Organization/acme", "Dr Ada Lovelace", "1 Main Street, Springfield", "Organization/acme"),
    ("dr-b", "Organization/acme", "Acme Research Institute", "2 Side Road, Shelbyville", "Organization/acme"),
    ("dr-c", "County Lab", "Practitioner/dr-c", "", "County Lab"),
    ("dr-d", None, "Practitioner/dr-d", "", ""),
]  # fmt: skip


@pytest.fixture
async def client(
    make_app: Callable[..., Gateway], key_file: Any, router: respx.Router, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    router.get("/Patient/p1").respond(200, json={"resourceType": "Patient", "id": "p1"})
    directory = tmp_path / "recipients.toml"
    directory.write_text(DIRECTORY, encoding="utf-8")
    app = make_app(
        auth=auth_settings(key_file),
        consent_jurisdiction="opt-out",
        recipient_directory_file=str(directory),
    )
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        yield c
    await app.aclose()


def _auditor(tokens: Tokens) -> dict[str, str]:
    return tokens.bearer(
        "officer", "user/AuditEvent.rs", fhir_user="Practitioner/officer", roles=[AUDITOR_ROLE]
    )


async def _disclose(client: httpx.AsyncClient, tokens: Tokens) -> None:
    """Each caller reads p1 for research (HRESCH: accountable, not treatment or payment)."""
    for sub, organization, *_ in CALLERS:
        who = tokens.bearer(
            sub,
            "user/Patient.rs",
            fhir_user=f"Practitioner/{sub}",
            purpose_of_use=["HRESCH"],
            organization=organization,
        )
        assert (await client.get("/fhir/Patient/p1", headers=who)).status_code == 200


async def _accounting(client: httpx.AsyncClient, tokens: Tokens, fmt: str) -> httpx.Response:
    got = await client.get(
        "/fhir/Patient/p1/$accounting", headers=_auditor(tokens), params={"_format": fmt}
    )
    assert got.status_code == 200, got.text
    return got


async def test_the_csv_names_each_recipient_from_the_directory(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    await _disclose(client, tokens)
    got = await _accounting(client, tokens, "csv")
    lines = {row["agent"]: row for row in csv.DictReader(io.StringIO(got.text))}
    assert set(lines) == {f"Practitioner/{sub}" for sub, *_ in CALLERS}
    for sub, _, name, address, organization in CALLERS:
        line = lines[f"Practitioner/{sub}"]
        assert (line["recipient"], line["recipient_address"]) == (name, address), sub
        assert line["organization"] == organization, sub


@pytest.mark.parametrize("fmt", ["json", "pdf"], ids=["bundle", "pdf"])
async def test_the_bundle_and_pdf_name_the_directory_s_recipients(
    client: httpx.AsyncClient, tokens: Tokens, fmt: str
) -> None:
    await _disclose(client, tokens)
    got = await _accounting(client, tokens, fmt)
    if fmt == "pdf":
        text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(got.content)).pages)
        text = " ".join(text.split())  # table cells wrap
    else:
        text = got.text
    for _, _, name, address, _ in CALLERS:
        assert name in text
        if address:
            assert f"{name}, {address}" in text


@pytest.mark.parametrize(
    "organization",
    [" Acme", "Organization/a b", "x" * 257, "line\nbreak"],
    ids=["leading-space", "bad-reference", "too-long", "control-character"],
)
async def test_a_malformed_organization_claim_is_401(
    client: httpx.AsyncClient, tokens: Tokens, organization: str
) -> None:
    who = tokens.bearer(
        "dr-x", "user/Patient.rs", fhir_user="Practitioner/dr-x", organization=organization
    )
    got = await client.get("/fhir/Patient/p1", headers=who)
    assert got.status_code == 401
    assert got.json()["resourceType"] == "OperationOutcome"
    assert organization not in got.text
