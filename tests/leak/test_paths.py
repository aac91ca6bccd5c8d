"""The request line and headers as weapons: path spellings, method overrides, oversize
queries, the gateway's own Consent paths, and requests without a valid token. None of them
may reach the upstream or release p1."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from tests.app.conftest import raw_asgi_request
from tests.app.consenting import AUDIENCE, DEV_ISSUER
from tests.leak.upstream import SECRET
from tests.leak.world import FORM, World, assert_nothing_of_p1, assert_same_not_found


def raw_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"gateway.test")] + [(k.encode(), v.encode()) for k, v in headers.items()]


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/fhir/Patient/p1/",
        b"/fhir/patient/p1",
        b"/fhir/PATIENT/p1",
        b"/fhir/Patient%2Fp1",
        b"/fhir/Patient%2fp1",
        b"//fhir/Patient/p1",
        b"/fhir//Patient/p1",
        b"/fhir/Observation/../Patient/p1",
        b"/fhir/Observation/%2E%2E/Patient/p1",
        b"/fhir/./Patient/p1",
        b"/fhir/Patient/p1;jsessionid=x",
        b"/fhir/Patient;/p1",
        b"/fhir/Patient/p1%00",
        b"/fhir/Patient/p1%5C",
        b"/fhir/Patient/p1%252F",
        b"/FHIR/Patient/p1",
        b"/fhir/Patient/p1/_history/",
        b"/fhir/Patient/p1/Observation/extra",
    ],
    ids=[
        "trailing-slash",
        "lower-case-type",
        "upper-case-type",
        "encoded-slash",
        "encoded-slash-lower",
        "leading-double-slash",
        "double-slash",
        "dot-dot",
        "encoded-dot-dot",
        "dot",
        "matrix-param",
        "matrix-in-type",
        "nul",
        "backslash",
        "double-encoding",
        "upper-case-base",
        "history-trailing-slash",
        "too-deep",
    ],
)
async def test_path_tricks_never_forward_and_never_release_p1(
    world: World, raw_path: bytes
) -> None:
    """A path the gateway and the upstream could normalise differently: the gateway might
    judge one resource while the upstream serves another (p1's)."""
    status, body = await raw_asgi_request(world.gateway, "GET", raw_path, raw_headers(world.dr))
    assert 400 <= status < 500
    assert SECRET.encode() not in body
    assert world.sent == []


async def test_percent_encoded_letters_read_the_plain_path(world: World) -> None:
    """``/fhir/%50atient/%70%31`` decodes to ``Patient/p1``: harmless escapes must be judged
    as the record they name, and answer its 404."""
    escaped = await raw_asgi_request(
        world.gateway, "GET", b"/fhir/%50atient/%701", raw_headers(world.dr)
    )
    missing = await raw_asgi_request(
        world.gateway, "GET", b"/fhir/Patient/nope", raw_headers(world.dr)
    )
    assert escaped == missing
    assert missing[0] == 404
    assert [r.url.path for r in world.sent] == ["/fhir/Patient/p1", "/fhir/Patient/nope"]


@pytest.mark.parametrize(
    ("method", "path", "header", "value"),
    [
        ("POST", "/fhir/Patient/p1", "x-http-method-override", "GET"),
        ("GET", "/fhir/Observation/obs-p1", "x-http-method-override", "DELETE"),
        ("POST", "/fhir/Observation/obs-p1", "x-http-method", "PUT"),
        ("POST", "/fhir/Observation/obs-p1", "x-method-override", "PATCH"),
        ("GET", "/fhir/Observation/obs-p2", "X-HTTP-Method-Override", "DELETE"),
    ],
    ids=["post-as-get", "get-as-delete", "x-http-method", "x-method-override", "mixed-case"],
)
async def test_method_override_headers_are_refused(
    world: World, method: str, path: str, header: str, value: str
) -> None:
    """An upstream honouring X-HTTP-Method-Override would perform another interaction than
    the one the gateway judged (a GET judged, a DELETE performed)."""
    body = b'{"resourceType":"Observation"}' if method == "POST" else None
    got = await world.http.request(method, path, content=body, headers={**world.dr, header: value})
    assert got.status_code == 400
    assert world.sent == []


async def test_three_hundred_parameters_are_refused(world: World) -> None:
    """300 parameters: parser and upstream exhaustion, and a way to bury a second patient
    criterion where a checker stops reading."""
    query = "&".join(f"code=c{i}" for i in range(299)) + "&subject=Patient/p1"
    got = await world.http.get(f"/fhir/Observation?{query}", headers=world.dr)
    assert got.status_code == 400
    assert world.sent == []


async def test_three_hundred_parameters_in_a_post_search_body_are_refused(world: World) -> None:
    """The same, in the form body of ``POST _search``."""
    form = "&".join(f"code=c{i}" for i in range(299)) + "&subject=Patient%2Fp1"
    got = await world.http.post(
        "/fhir/Observation/_search", content=form.encode(), headers={**world.dr, **FORM}
    )
    assert got.status_code == 400
    assert world.sent == []


@pytest.mark.parametrize(
    "size",
    [
        pytest.param(60_000, id="60kB"),
        pytest.param(100_000, id="100kB"),
    ],
)
async def test_an_oversize_query_is_refused_before_forwarding(world: World, size: int) -> None:
    """One parameter of tens of kilobytes (sent raw: httpx refuses such URLs, a socket does
    not): exhausts upstream parsers and fills the audit evidence with attacker text."""
    target = b"/fhir/Observation?subject=Patient/p1&code=" + b"x" * size
    status, _ = await raw_asgi_request(world.gateway, "GET", target, raw_headers(world.dr))
    assert status in (400, 413, 414, 431)
    assert world.sent == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/fhir/Patient/p1/Consent"),
        ("GET", "/fhir/Patient/p1/Consent?status=active"),
        ("POST", "/fhir/Patient/p1/Consent/_search"),
        ("GET", "/fhir/Consent/_history"),
    ],
    ids=["compartment", "compartment-query", "compartment-post-search", "type-history"],
)
async def test_consent_paths_never_reach_the_upstream(world: World, method: str, path: str) -> None:
    """Consent is served by the gateway itself: a proxy path that names it would read the
    upstream's copy, p1's included."""
    headers = {**world.dr, **FORM} if method == "POST" else world.dr
    got = await world.http.request(method, path, headers=headers)
    assert got.status_code in (400, 404, 405)
    assert world.sent == []


# --- tokens ------------------------------------------------------------------------------------


async def test_no_token_is_401_and_nothing_is_forwarded(world: World) -> None:
    """A request without a bearer token."""
    got = await world.http.get("/fhir/Patient/p1")
    assert got.status_code == 401
    assert world.sent == []


async def test_token_for_another_audience_is_401(world: World) -> None:
    """A valid token of the trusted issuer, minted for another server: replayed here, it
    must not be honoured."""
    token = world.tokens.issuer.issue(
        "dr",
        scopes="user/*.cruds",
        audience="http://elsewhere.test/fhir",
        fhir_user="Practitioner/dr",
    )
    got = await world.http.get("/fhir/Patient/p2", headers={"authorization": f"Bearer {token}"})
    assert got.status_code == 401
    assert world.sent == []


async def test_token_signed_by_another_key_is_401(world: World, tmp_path: Path) -> None:
    """A token naming the trusted issuer, signed with the attacker's own key."""
    forger = UnsafeDevelopmentIssuer.from_key_file(
        tmp_path / "forger.jwk", DEV_ISSUER, enabled=True
    )
    token = forger.issue(
        "dr", scopes="user/*.cruds", audience=AUDIENCE, fhir_user="Practitioner/dr"
    )
    got = await world.http.get("/fhir/Patient/p2", headers={"authorization": f"Bearer {token}"})
    assert got.status_code == 401
    assert world.sent == []


async def test_break_glass_header_without_the_right_is_refused(world: World) -> None:
    """The practitioner sends ``X-Break-Glass-Reason`` to override p1's denial; its token
    (even one claiming a break-glass scope the deployment did not configure) grants no such
    right."""
    claims = world.tokens.bearer(
        "dr", "user/*.cruds consentry/break-glass", fhir_user="Practitioner/dr"
    )
    for headers in (world.dr, claims):
        got = await world.http.get(
            "/fhir/Patient/p1", headers={**headers, "x-break-glass-reason": "emergency"}
        )
        assert got.status_code == 403
        assert SECRET not in got.text
    assert world.sent == []
    denied = await world.http.get("/fhir/Patient/p1", headers=world.dr)
    absent = await world.http.get("/fhir/Patient/nope", headers=world.dr)
    assert_same_not_found(world, denied, absent)


async def test_metadata_with_parameters_releases_only_capabilities(world: World) -> None:
    """``GET /metadata?...`` is public and released without a decision: an upstream that
    answers something else there (a misrouted query, a proxy in front of it) must not have it
    passed to an anonymous caller."""
    serve = world.fhir.handle

    def misrouted(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            return serve(httpx.Request("GET", str(request.url).replace("/metadata", "/Patient/p1")))
        return serve(request)

    world.router.routes.clear()
    world.router.route().mock(side_effect=misrouted)
    answer = await world.http.get("/fhir/metadata?mode=full")
    assert answer.status_code == 502
    assert_nothing_of_p1(answer)


# --- POST [base]/: the one trailing slash accepted ----------------------------------------------


def _transaction(patient: str) -> dict[str, object]:
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "weight"},
        "subject": {"reference": patient},
    }
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": observation, "request": {"method": "POST", "url": "Observation"}}],
    }


async def test_a_transaction_posted_to_the_base_with_a_slash_is_a_transaction(
    world: World,
) -> None:
    """Clients (SEKMET's conformance scenario) post transactions to ``[base]/``: it is the
    same interaction as ``POST [base]``, judged the same, forwarded to the upstream's base."""
    got = await world.http.post("/fhir/", json=_transaction("Patient/p2"), headers=world.dr)
    assert got.status_code == 200, got.text
    assert got.json()["type"] == "transaction-response"
    assert world.fhir.writes == [("POST", "Observation")]
    assert [r.url.path for r in world.writes_sent] == ["/fhir"]


async def test_a_transaction_at_the_base_with_a_slash_is_enforced(world: World) -> None:
    """The accepted spelling is no way around enforcement: a p1 write is refused there too."""
    got = await world.http.post("/fhir/", json=_transaction("Patient/p1"), headers=world.dr)
    assert got.status_code == 403
    assert world.sent == []
    assert world.fhir.writes == []


@pytest.mark.parametrize(
    ("method", "raw_path"),
    [
        ("POST", b"/fhir/Observation/"),
        ("POST", b"/fhir//"),
        ("POST", b"/fhir/_search/"),
        ("POST", b"/fhir%2F"),
        ("GET", b"/fhir/"),
        ("PUT", b"/fhir/"),
    ],
    ids=["type", "two-slashes", "search", "encoded-slash", "get-base", "put-base"],
)
async def test_every_other_trailing_slash_is_still_refused(
    world: World, method: str, raw_path: bytes
) -> None:
    """Only ``POST [base]/`` is accepted; a slash after a type, a second slash, or the base
    slash with another method stays a path trick (400), and nothing is forwarded."""
    status, _ = await raw_asgi_request(world.gateway, method, raw_path, raw_headers(world.dr))
    assert status == 400
    assert world.sent == []
