"""What a write answers when the caller may write but not read what it wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import respx

from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from tests.app.consenting import AUDIENCE, DEV_ISSUER

FHIR = {"content-type": "application/fhir+json"}
OBSERVATION = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"text": "x"},
    "subject": {"reference": "Patient/p1"},
}


async def test_a_create_only_caller_gets_the_outcome_without_the_body(
    make_client: Any, router: respx.Router, dev_key_file: Path
) -> None:
    """A device feeding results holds ``system/Observation.c`` only: its create succeeds
    (201, Location) but the representation the upstream returns is not released to it."""
    created = router.post("/Observation").respond(
        201,
        json={**OBSERVATION, "id": "o9", "meta": {"versionId": "1"}},
        headers={**FHIR, "location": "http://upstream.test:8103/fhir/Observation/o9/_history/1"},
    )
    issuer = UnsafeDevelopmentIssuer.from_key_file(dev_key_file, DEV_ISSUER, enabled=True)
    token = issuer.issue("device", scopes="system/Observation.c", audience=AUDIENCE)
    async with make_client() as client:
        answer = await client.post(
            "/fhir/Observation",
            json=OBSERVATION,
            headers={
                **FHIR,
                "authorization": f"Bearer {token}",
                "prefer": "return=representation",
            },
        )
    assert created.called
    assert answer.status_code == 201
    assert answer.headers["location"] == "http://gateway.test/fhir/Observation/o9/_history/1"
    assert answer.content == b""
