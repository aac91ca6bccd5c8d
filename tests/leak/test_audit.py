"""The audit trail under attack: every attempt of a caller who proved who it is leaves a ledger
entry (denied ones too; a 401 does not, and touches nothing), no leaf carries p1's identity,
and when the ledger cannot commit nothing is released and nothing is written (architecture
invariants 1 and 7)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from middleware.ledger.leaf import EntryFlag, EntryKind
from tests.app.conftest import raw_asgi_request
from tests.leak.upstream import SECRET
from tests.leak.world import World

P2_OBSERVATION = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"text": "weight"},
    "subject": {"reference": "Patient/p2"},
}


def _batch(*urls: str) -> dict[str, Any]:
    entries = [{"request": {"method": "GET", "url": url}} for url in urls]
    return {"resourceType": "Bundle", "type": "batch", "entry": entries}


#: (who, method, path, JSON body) of attacks that reach the enforcement stage.
ATTACKS: list[tuple[str, str, str, Any]] = [
    ("dr", "GET", "/fhir/Patient/p1", None),
    ("dr", "GET", "/fhir/Observation/obs-p1/_history/1", None),
    ("dr", "GET", "/fhir/Observation?subject=Patient/p1", None),
    ("dr", "GET", "/fhir/Observation?subject=Patient/p1&_summary=count", None),
    ("dr", "GET", "/fhir/Patient/p1/$everything", None),
    ("dr", "GET", "/fhir/Patient/p1/$summary", None),
    ("dr", "GET", "/fhir/$graphql?query=x", None),
    ("dr", "GET", "/fhir/Observation?code=x&_cursor=forged", None),
    ("dr", "POST", "/fhir/Observation", {**P2_OBSERVATION, "subject": {"reference": "Patient/p1"}}),
    ("dr", "DELETE", "/fhir/Observation/obs-p1", None),
    ("dr", "POST", "/fhir", _batch("Patient/p1", "Consent?patient=Patient/p1")),
    ("p2", "GET", "/fhir/Observation?subject=Patient/p1", None),
    ("p2", "GET", "/fhir/Patient/p1", None),
]
ATTACK_IDS = [
    "read",
    "vread",
    "search",
    "count",
    "everything",
    "unknown-op",
    "graphql",
    "forged-cursor",
    "create",
    "delete",
    "batch",
    "patient-search",
    "patient-read",
]


def _headers(world: World, who: str) -> dict[str, str]:
    return {
        "dr": world.dr,
        "p2": world.p2,
        "none": {},
        "bad": {"authorization": "Bearer not.a.token"},
    }[who]


@pytest.mark.parametrize(("who", "method", "path", "body"), ATTACKS, ids=ATTACK_IDS)
async def test_every_attempt_is_on_the_ledger(
    world: World, who: str, method: str, path: str, body: Any
) -> None:
    """An attacker probing p1 must leave a trace: each attempt, refused or not, adds ledger
    entries before it is answered."""
    before = await world.ledger_size()
    got = await world.http.request(method, path, json=body, headers=_headers(world, who))
    assert got.status_code < 500
    assert await world.ledger_size() > before


@pytest.mark.parametrize("who", ["none", "bad"], ids=["no-token", "bad-token"])
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/fhir/Patient/p1", None),
        ("GET", "/fhir/Observation?subject=Patient/p1", None),
        ("POST", "/fhir", _batch("Patient/p1")),
        ("GET", "/fhir/Patient/p1/", None),
    ],
    ids=["read", "search", "batch", "path-trick"],
)
async def test_unauthenticated_attempts_cost_nothing_durable(
    world: World, who: str, method: str, path: str, body: Any
) -> None:
    """Without a valid token nothing of p1 is touched, so nothing is recorded: a 401 (or a
    refusal before the token was checked) written to the append-only ledger one by one would
    let anyone grow it without bound. Counted in /metrics instead (tests/app)."""
    before = await world.ledger_size()
    got = await world.http.request(method, path, json=body, headers=_headers(world, who))
    assert got.status_code in (400, 401)
    assert await world.ledger_size() == before


@pytest.mark.parametrize(
    ("method", "raw_path", "extra"),
    [
        ("GET", b"/fhir/Patient/p1/", {}),
        ("HEAD", b"/fhir/Patient/p1", {}),
        ("GET", b"/fhir/Patient/p1", {"x-http-method-override": "DELETE"}),
        ("GET", b"/fhir/Patient/p1/Consent", {}),
        ("GET", b"/fhir/Patient/p1", {"accept": "text/turtle"}),
    ],
    ids=["path-trick", "head", "method-override", "consent-path", "turtle"],
)
async def test_refusals_before_enforcement_are_on_the_ledger(
    world: World, method: str, raw_path: bytes, extra: dict[str, str]
) -> None:
    """Probes the classifier refuses (a trailing slash, HEAD, an override header, the Consent
    compartment, Turtle) are attempts on p1's record too."""
    headers = [(b"host", b"gateway.test")] + [
        (k.encode(), v.encode()) for k, v in {**world.dr, **extra}.items()
    ]
    before = await world.ledger_size()
    status, _ = await raw_asgi_request(world.gateway, method, raw_path, headers)
    assert 400 <= status < 500
    assert await world.ledger_size() > before


async def test_an_internal_failure_is_still_on_the_ledger(world: World, upstream_mode: str) -> None:
    """An upstream client failing in a way nobody foresaw (here: a library error escaping
    it): the 500 must still leave an entry, or an attacker who finds such a failure can probe
    p1 without a trace."""
    if upstream_mode != "mock":
        pytest.skip("only an injected transport lets a library error escape the client")
    serve = world.fhir.handle

    def failing(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/Observation/obs-p1"):
            raise RuntimeError("unforeseen")
        return serve(request)

    world.router.routes.clear()
    world.router.route().mock(side_effect=failing)
    before = await world.ledger_size()
    answer = await world.http.get("/fhir/Observation/obs-p1", headers=world.dr)
    assert answer.status_code == 500
    assert "unforeseen" not in answer.text
    assert await world.ledger_size() > before


async def test_no_leaf_holds_p1s_identity(world: World) -> None:
    """After reads, searches and refused writes about p1, the leaves (published, never
    shredded) must hold no identifier: p1 is a random pseudonym, the rest commitments."""
    await world.http.get("/fhir/Patient/p1", headers=world.dr)
    await world.http.get("/fhir/Observation?subject=Patient/p1", headers=world.dr)
    await world.http.post(
        "/fhir/Observation",
        json={**P2_OBSERVATION, "subject": {"reference": "Patient/p1"}},
        headers=world.dr,
    )
    await world.http.get("/fhir/Observation/obs-p1", headers=world.p2)
    leaves = await world.leaves()
    p1 = next(leaf.pseudonym for _, leaf in leaves if leaf.kind is EntryKind.CONSENT)
    assert p1 is not None
    assert p1.rstrip(b"\x00") not in (b"p1", b"Patient/p1")
    for raw, leaf in leaves:
        assert len(raw) == 80
        assert b"Patient" not in raw
        assert SECRET.encode() not in raw
        assert leaf.pseudonym is None or len(leaf.pseudonym) == 16
    assert sum(1 for _, leaf in leaves if leaf.pseudonym == p1) >= 5


async def test_a_denied_read_is_recorded_against_p1_without_permit(world: World) -> None:
    """The accounting p1 can ask for must show the practitioner's attempt, as a decision that
    did not permit."""
    before = await world.ledger_size()
    await world.http.get("/fhir/Observation/obs-p1", headers=world.dr)
    leaves = await world.leaves()
    p1 = next(leaf.pseudonym for _, leaf in leaves if leaf.kind is EntryKind.CONSENT)
    new = [leaf for _, leaf in leaves[before:]]
    assert any(
        leaf.pseudonym == p1
        and leaf.kind is EntryKind.ACCESS_DECISION
        and not leaf.flags & EntryFlag.PERMIT
        for leaf in new
    )
    assert not any(leaf.kind is EntryKind.DISCLOSURE and leaf.pseudonym == p1 for leaf in new)


# --- the ledger down -------------------------------------------------------------------------


async def test_ledger_outage_releases_nothing(world: World) -> None:
    """The ledger cannot commit: an answer released anyway would be a disclosure nobody can
    account for. p2's record, fetched from the upstream, must not reach the client."""
    world.store.failing = True
    try:
        got = await world.http.get("/fhir/Patient/p2", headers=world.dr)
    finally:
        world.store.failing = False
    assert got.status_code == 503
    assert "Visible" not in got.text
    assert "p2" not in got.text


async def test_ledger_outage_does_not_tell_p1_from_a_missing_record(world: World) -> None:
    """During the outage the practitioner compares p1's record with a missing one: both must
    be the same 503."""
    world.store.failing = True
    try:
        denied = await world.http.get("/fhir/Patient/p1", headers=world.dr)
        missing = await world.http.get("/fhir/Patient/nope", headers=world.dr)
    finally:
        world.store.failing = False
    assert denied.status_code == missing.status_code == 503
    assert denied.content == missing.content


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/fhir/Observation", P2_OBSERVATION),
        ("PUT", "/fhir/Observation/obs-p2", {**P2_OBSERVATION, "id": "obs-p2"}),
        ("DELETE", "/fhir/Observation/obs-p2", None),
        (
            "POST",
            "/fhir",
            {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {
                        "request": {"method": "POST", "url": "Observation"},
                        "resource": P2_OBSERVATION,
                    }
                ],
            },
        ),
    ],
    ids=["create", "update", "delete", "transaction"],
)
async def test_ledger_outage_writes_nothing(
    world: World, method: str, path: str, body: Any
) -> None:
    """A permitted write (for p2) while the ledger is down: forwarding it would change the
    record without a durable entry of the decision."""
    world.store.failing = True
    try:
        got = await world.http.request(method, path, json=body, headers=world.dr)
    finally:
        world.store.failing = False
    assert got.status_code == 503
    assert world.writes_sent == []
    assert world.fhir.writes == []
