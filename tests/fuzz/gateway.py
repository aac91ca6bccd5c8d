"""A whole gateway for the API fuzzers: development issuer on, memory stores, an upstream that
answers every request (the gateway's own APIs never forward; readiness asks it for metadata),
and tokens for each kind of caller of the consent and ledger APIs."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import httpx

from middleware.app import Gateway, create_app
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.ledger.signing import SigningKey
from middleware.settings import load_settings
from middleware.storage.consent_memory import MemoryConsentStore
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.consenting import AUDIENCE, DEV_ISSUER, auth_settings

UPSTREAM: Final = "http://upstream.test:8103/fhir"
BASE: Final = "/fhir"


def _upstream(request: httpx.Request) -> httpx.Response:
    body = (
        b'{"resourceType":"CapabilityStatement","status":"active","kind":"instance",'
        b'"fhirVersion":"4.0.1","format":["json"]}'
    )
    return httpx.Response(200, content=body, headers={"content-type": "application/fhir+json"})


def make_gateway(key_file: Path) -> Gateway:
    """A gateway at ``http://gateway.test/fhir`` whose development issuer keeps its key in
    ``key_file``."""
    settings = load_settings(
        overrides={
            "upstream": UPSTREAM,
            "public_url": f"http://gateway.test{BASE}",
            "store": "memory:",
            "access_log": False,
            "ready_cache_seconds": 0,
            "auth": auth_settings(key_file),
        }
    )
    return create_app(
        settings,
        upstream=httpx.MockTransport(_upstream),
        store=MemoryLogStore(),
        signer=SigningKey.generate("gateway.test/fhir/ledger"),
        consents=MemoryConsentStore(),
    )


def bearers(key_file: Path) -> dict[str, str]:
    """``Authorization`` values by caller: a patient (p1, its consents), a consent
    administrator, a ledger auditor and an EHR backend."""
    issuer = UnsafeDevelopmentIssuer.from_key_file(key_file, DEV_ISSUER, enabled=True)
    tokens = {
        "patient": issuer.issue(
            "user-p1",
            scopes="launch/patient patient/Consent.cruds",
            audience=AUDIENCE,
            patient="p1",
        ),
        "admin": issuer.issue(
            "officer",
            scopes="user/Consent.cruds",
            audience=AUDIENCE,
            fhir_user="Practitioner/officer",
            roles=["consent-admin"],
        ),
        "auditor": issuer.issue(
            "auditor",
            scopes="user/AuditEvent.rs",
            audience=AUDIENCE,
            fhir_user="Practitioner/auditor",
            roles=["ledger-auditor"],
        ),
        "system": issuer.issue("ehr", scopes="system/*.cruds", audience=AUDIENCE),
    }
    return {caller: f"Bearer {token}" for caller, token in tokens.items()}
