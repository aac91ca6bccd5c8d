"""Two small guarantees of the AuditEvent API: a search's cursor is bound to the token's launch
patient as well as its login (one login, two patient contexts, two principals), and a refusal
never names the configured auditor role."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway
from tests.app.consenting import Tokens, auth_settings
from tests.app.test_audit_http import auditor, clinician

ROLE = "secret-auditor-role-name"


@pytest.fixture
async def client(
    make_app: Callable[..., Gateway], key_file: Any, router: respx.Router
) -> AsyncIterator[httpx.AsyncClient]:
    router.get("/Patient/p1").respond(200, json={"resourceType": "Patient", "id": "p1"})
    app = make_app(auth=auth_settings(key_file), consent_jurisdiction="opt-out", audit_role=ROLE)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        yield c
    await app.aclose()


def in_context(tokens: Tokens, patient: str) -> dict[str, str]:
    """One login (``family``) with an app launched for ``patient``."""
    return tokens.bearer("family", "launch/patient patient/AuditEvent.rs", patient=patient)


async def test_a_cursor_is_bound_to_the_launch_patient(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    for _ in range(2):
        assert (await client.get("/fhir/Patient/p1", headers=clinician(tokens, "dr"))).is_success
    first = await client.get(
        "/fhir/AuditEvent", params={"_count": "1"}, headers=in_context(tokens, "p1")
    )
    assert first.status_code == 200
    nxt = next(link["url"] for link in first.json()["link"] if link["relation"] == "next")
    assert (await client.get(nxt, headers=in_context(tokens, "p2"))).status_code == 400
    assert (await client.get(nxt, headers=in_context(tokens, "p1"))).status_code == 200


REFUSED = [
    ("clinician", lambda t: clinician(t, "dr")),
    ("scope without the role", lambda t: t.bearer("x", "user/AuditEvent.rs")),
    ("role without the scope", lambda t: t.bearer("x", "user/Patient.rs", roles=[ROLE])),
]


@pytest.mark.parametrize("caller", [r[1] for r in REFUSED], ids=[r[0] for r in REFUSED])
@pytest.mark.parametrize(
    "path", ["/fhir/AuditEvent", "/fhir/AuditEvent/0-0"], ids=["search", "read"]
)
async def test_a_refusal_does_not_name_the_auditor_role(
    client: httpx.AsyncClient, tokens: Tokens, caller: Callable[[Tokens], dict[str, str]], path: str
) -> None:
    got = await client.get(path, headers=caller(tokens))
    assert got.status_code == 403
    assert got.json()["resourceType"] == "OperationOutcome"
    assert ROLE not in got.text


async def test_the_configured_role_makes_an_auditor(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    """The role setting took (so the refusals above are about the message, not the role)."""
    officer = tokens.bearer("o", "user/AuditEvent.rs", roles=[ROLE])
    assert (await client.get("/fhir/AuditEvent", headers=officer)).status_code == 200
    assert (await client.get("/fhir/AuditEvent", headers=auditor(tokens))).status_code == 403
