"""Helpers of the consent API tests: settings enabling the development issuer on a key file,
callers' tokens, Consent bodies, and reading back what the ledger recorded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from middleware.audit.evidence import EvidenceReader
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.fhir import jsoncodec
from middleware.ledger.leaf import EntryFlag, EntryKind, Leaf, commit_evidence, decode_leaf
from middleware.ledger.signing import SigningKey, derive_box_key
from middleware.storage.ledger_base import LogStore

AUDIENCE: Final = "http://gateway.test/fhir"
DEV_ISSUER: Final = "http://gateway.test/dev-issuer"
FHIR_JSON: Final = {"content-type": "application/fhir+json"}
ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


def auth_settings(key_file: Path, **extra: Any) -> dict[str, Any]:
    """The ``auth`` table turning the development issuer on, with its key in ``key_file``."""
    return {
        "dev_issuer_enabled": True,
        "dev_issuer_url": DEV_ISSUER,
        "dev_issuer_key_file": str(key_file),
        "audiences": [AUDIENCE],
        **extra,
    }


@dataclass(frozen=True)
class Tokens:
    """Callers of the consent API, as bearer headers minted by the development issuer."""

    issuer: UnsafeDevelopmentIssuer

    def bearer(self, sub: str, scopes: str, **claims: Any) -> dict[str, str]:
        token = self.issuer.issue(sub, scopes=scopes, audience=AUDIENCE, **claims)
        return {"authorization": f"Bearer {token}", **FHIR_JSON}

    def patient(self, pid: str, scopes: str = "patient/Consent.cruds") -> dict[str, str]:
        return self.bearer(f"user-{pid}", f"launch/patient {scopes}", patient=pid)

    def practitioner(self, scopes: str = "user/Consent.cruds") -> dict[str, str]:
        return self.bearer("dr", scopes, fhir_user="Practitioner/dr")

    def admin(self, scopes: str = "user/Consent.cruds") -> dict[str, str]:
        return self.bearer(
            "officer", scopes, fhir_user="Practitioner/officer", roles=["consent-admin"]
        )


def r5_consent(
    patient: str = "Patient/p1", decision: str = "permit", **extra: Any
) -> dict[str, Any]:
    """An R5 Consent of ``patient`` with a base ``decision`` and no provisions."""
    return {
        "resourceType": "Consent",
        "status": "active",
        "subject": {"reference": patient},
        "decision": decision,
        **extra,
    }


def treat_only(patient: str = "Patient/p1", **extra: Any) -> dict[str, Any]:
    """R5: permit only for treatment (deny base, one permitting provision)."""
    provision = {"purpose": [{"system": ACT_REASON, "code": "TREAT"}]}
    return r5_consent(patient, "deny", provision=[provision], **extra)


@dataclass(frozen=True)
class Recorded:
    """One ledger entry read back: leaf, evidence bytes, and whether the commitment holds.
    ``events``: an audit entry's AuditEvents rendered from its sealed facts (read with the
    ledger key), None otherwise or without the key; ``text``: their canonical JSON, else the
    evidence bytes (what a test searches for a request id or a code)."""

    index: int
    leaf: Leaf
    evidence: bytes
    verified: bool
    events: list[Any] | None = None

    @property
    def text(self) -> bytes:
        return self.evidence if self.events is None else jsoncodec.encode_canonical(self.events)

    @property
    def kind(self) -> EntryKind:
        return self.leaf.kind

    @property
    def permitted(self) -> bool:
        return bool(self.leaf.flags & EntryFlag.PERMIT)

    def json(self) -> Any:
        return jsoncodec.decode(self.evidence)


async def ledger_entries(store: LogStore, signer: SigningKey | None = None) -> list[Recorded]:
    """Every entry of ``store`` with its evidence, the evidence commitment checked; with the
    ledger key ``signer``, audit entries with their rendered events."""
    size = await store.size()
    reader = None if signer is None else EvidenceReader(store, derive_box_key(signer, "evidence"))
    out = []
    for index, raw in enumerate(await store.leaves(0, size)):
        leaf = decode_leaf(raw)
        evidence = await store.evidence(index)
        assert evidence is not None
        verified = commit_evidence(evidence.salt, evidence.data) == leaf.commitment
        events = None if reader is None else await reader.events(index)
        out.append(Recorded(index, leaf, evidence.data, verified, events))
    return out


def observation(patient: str = "Patient/p1") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": patient},
    }
