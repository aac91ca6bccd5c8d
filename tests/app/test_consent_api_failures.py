"""Consent API requests are traceable and a bug in it fails closed: every attempt on the
ledger names the request's ``X-Request-Id`` (echoed in the answer), and an exception nobody
foresaw is an audited 500 with no detail, never an unrecorded crash."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import respx

from middleware.app import Gateway, create_app
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.consent import api as consent_api
from middleware.ledger.leaf import EntryKind
from middleware.ledger.signing import SigningKey
from middleware.settings import Settings
from middleware.storage.consent_base import ConsentRecord
from middleware.storage.consent_memory import MemoryConsentStore
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.conftest import FakeClock
from tests.app.consenting import DEV_ISSUER, Tokens, auth_settings, ledger_entries, r5_consent

SECRET = "Patient/p1 has HIV"  # what a careless exception message could carry


class BuggyConsentStore(MemoryConsentStore):
    """A consent store whose history lookup has a bug: it raises a plain exception whose
    message quotes stored data."""

    async def history(self, consent_id: str) -> list[ConsentRecord]:
        raise KeyError(SECRET)


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    key_file = tmp_path / "dev-issuer.jwk"
    return Tokens(UnsafeDevelopmentIssuer.from_key_file(key_file, DEV_ISSUER, enabled=True))


@pytest.fixture
async def api(
    router: respx.Router,
    clock: FakeClock,
    store: MemoryLogStore,
    signer: SigningKey,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    tokens: Tokens,
) -> AsyncIterator[httpx.AsyncClient]:
    gateway: Gateway = create_app(
        make_settings(auth=auth_settings(tmp_path / "dev-issuer.jwk")),
        upstream=httpx.MockTransport(router.async_handler),
        store=store,
        signer=signer,
        clock=clock,
        consents=BuggyConsentStore(),
    )
    transport = httpx.ASGITransport(app=gateway, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        yield c
    await gateway.aclose()


async def attempts(store: MemoryLogStore) -> list[dict[str, object]]:
    return [e.json() for e in await ledger_entries(store) if e.kind is EntryKind.ADMIN]


async def test_every_attempt_names_the_request_id_it_answered_with(
    api: httpx.AsyncClient, tokens: Tokens, store: MemoryLogStore
) -> None:
    """Defect: the consent API echoed ``X-Request-Id`` but its ledger entries did not name it,
    so an answer a client or an operator's log holds could not be tied to its audit entry.
    A safe client id is kept; an unsafe one (a log-injection attempt) is replaced by a fresh
    id, and the replacement is what both the answer and the ledger name."""
    me = tokens.patient("p1")
    made = await api.post(
        "/fhir/Consent", json=r5_consent(), headers={**me, "x-request-id": "client-req.42"}
    )
    assert made.status_code == 201
    assert made.headers["x-request-id"] == "client-req.42"
    refused = await api.post(
        "/fhir/Consent",
        json=r5_consent("Patient/p2"),
        headers={**me, "x-request-id": "evil\tid forged=1"},
    )
    assert refused.status_code == 403
    fresh = refused.headers["x-request-id"]
    assert fresh != "evil\tid forged=1"
    assert len(fresh) == 32
    recorded = await attempts(store)
    assert [(a["outcome"], a["requestId"]) for a in recorded] == [
        (201, "client-req.42"),
        (403, fresh),
    ]


async def test_an_unforeseen_failure_is_an_audited_500_without_detail(
    api: httpx.AsyncClient, tokens: Tokens, store: MemoryLogStore
) -> None:
    """Attack/defect: an exception that is not one of the gateway's own errors (here a bug in
    the consent store) left the API as an unrecorded 500: nothing on the ledger said a caller
    had tried, and nothing tied the answer to a log line. Now it is recorded (outcome 500,
    the exception's class only, the request id) before a 500 whose body holds no message,
    class name or stack trace."""
    me = tokens.patient("p1")
    cid = (await api.post("/fhir/Consent", json=r5_consent(), headers=me)).json()["id"]
    answer = await api.get(
        f"/fhir/Consent/{cid}/_history", headers={**me, "x-request-id": "trace-me"}
    )
    assert answer.status_code == 500
    assert answer.headers["x-request-id"] == "trace-me"
    assert answer.json()["resourceType"] == "OperationOutcome"
    for leaked in (SECRET, "KeyError", "Traceback", "HIV"):
        assert leaked not in answer.text
    last = (await attempts(store))[-1]
    assert answer.headers["x-consentry-audit-index"] == str((await ledger_entries(store))[-1].index)
    assert last["operation"] == "history"
    assert last["outcome"] == 500
    assert last["requestId"] == "trace-me"
    assert last["reason"] == "internal error: KeyError"
    assert "HIV" not in str(last)


async def test_a_failure_while_reading_the_request_is_audited_too(
    api: httpx.AsyncClient,
    tokens: Tokens,
    store: MemoryLogStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defect: a bug between the token check and the operation (negotiation, body, signature
    headers) escaped the service's recording; a verified caller is named on the ledger
    whatever step failed."""

    def broken(*_: object) -> None:
        raise ValueError(SECRET)

    monkeypatch.setattr(consent_api, "check_accept", broken)
    answer = await api.get("/fhir/Consent?patient=Patient/p1", headers=tokens.patient("p1"))
    assert answer.status_code == 500
    assert SECRET not in answer.text
    last = (await attempts(store))[-1]
    assert (last["operation"], last["outcome"]) == ("search", 500)
    assert last["requestId"] == answer.headers["x-request-id"]
    # A patient caller is named by their own chain, not their account (a shred clears it).
    assert "sub" not in last["principal"]  # type: ignore[operator]
    monkeypatch.undo()
    made = await api.post("/fhir/Consent", json=r5_consent(), headers=tokens.patient("p1"))
    assert made.status_code == 201, made.text
    entries = await ledger_entries(store)
    failed = next(e for e in entries if e.kind is EntryKind.ADMIN and e.json() == last)
    consent = next(e for e in entries if e.kind is EntryKind.CONSENT)
    assert failed.leaf.pseudonym is not None
    assert failed.leaf.pseudonym == consent.leaf.pseudonym


async def test_without_a_verified_caller_a_bug_is_a_500_and_no_entry(
    api: httpx.AsyncClient, store: MemoryLogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the token is verified there is nobody to name: as for a 401, nothing is
    appended (anyone could grow the log), the answer is a bare 500 with its request id."""

    async def broken(self: object, authorization: str | None) -> None:
        raise RuntimeError(SECRET)

    monkeypatch.setattr("middleware.auth.verify.TokenVerifier.verify", broken)
    answer = await api.get("/fhir/Consent", headers={"x-request-id": "anon-1"})
    assert answer.status_code == 500
    assert answer.headers["x-request-id"] == "anon-1"
    assert SECRET not in answer.text
    assert await store.size() == 0


async def test_fhir_user_is_read_under_the_gateway_base_only(
    api: httpx.AsyncClient, tokens: Tokens
) -> None:
    """Attack: a token whose ``fhirUser`` is ``Practitioner/../Patient/p1`` was read as
    ``Patient/p1``, and one naming a user on another server as that server's user. The
    gateway's own public base (``public_url``) is accepted; anything else is a 401 saying
    why."""
    path = "/fhir/Consent?patient=Patient/p1"
    own = tokens.bearer(
        "dr", "user/Consent.rs", fhir_user="http://gateway.test/fhir/Practitioner/dr"
    )
    assert (await api.get(path, headers=own)).status_code != 401
    for forged in ("Practitioner/../Patient/p1", "http://evil.test/fhir/Practitioner/dr"):
        answer = await api.get(
            path, headers=tokens.bearer("dr", "user/Consent.rs", fhir_user=forged)
        )
        assert answer.status_code == 401
        assert "fhirUser" in answer.headers["www-authenticate"]
