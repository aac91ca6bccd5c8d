"""Property: whatever JSON (or almost-JSON) a client sends to the gateway's endpoints, and
whatever the upstream answers, the gateway answers with an OperationOutcome or a resource and
never a 500.

Bodies are drawn from FHIR-shaped trees whose values are the wrong JSON type as often as the
right one (``resourceType`` a list, ``contained`` a number, ``status`` an object, provisions
nested deep), from raw bracket runs deeper than any limit, and from truncations of both. The
upstream echoes what it was sent, so the same trees reach the answer side too.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from middleware.app import create_app
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.fhir import jsoncodec
from middleware.ledger.signing import SigningKey
from middleware.settings import load_settings
from middleware.storage.consent_memory import MemoryConsentStore
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.consenting import AUDIENCE, DEV_ISSUER, auth_settings

UPSTREAM: Final = "http://upstream.test:8103/fhir"
_KEYS: Final = (
    "resourceType",
    "id",
    "status",
    "contained",
    "subject",
    "patient",
    "reference",
    "provision",
    "decision",
    "entry",
    "resource",
    "type",
    "request",
    "meta",
    "security",
    "purpose",
)
_TYPES: Final = ("Observation", "Patient", "Bundle", "Consent", "Binary", "Parameters")

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([*_TYPES, "Patient/p1", "active", "batch", "permit", "#c", "²"]),
    st.text(max_size=8),
)
_trees = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(_KEYS), inner, max_size=5),
    ),
    max_leaves=25,
)
_resources = st.builds(
    lambda rtype, rest: {**rest, "resourceType": rtype},
    st.one_of(st.sampled_from(_TYPES), _trees),
    st.dictionaries(st.sampled_from(_KEYS), _trees, max_size=6),
)


def _deep(levels: int, opener: bytes) -> bytes:
    """``levels`` nested arrays or objects around a number."""
    if opener == b"[":
        return b"[" * levels + b"1" + b"]" * levels
    return b'{"a":' * levels + b"1" + b"}" * levels


_bodies = st.one_of(
    _resources.map(jsoncodec.encode),
    _trees.map(jsoncodec.encode),
    st.builds(_deep, st.integers(min_value=90, max_value=3_000), st.sampled_from([b"[", b"{"])),
    st.builds(
        lambda body, cut: body[: max(1, len(body) * cut // 100)],
        _resources.map(jsoncodec.encode),
        st.integers(min_value=1, max_value=99),
    ),
)
_TARGETS: Final = (
    ("POST", "/fhir/Observation"),
    ("PUT", "/fhir/Observation/o1"),
    ("POST", "/fhir"),
    ("POST", "/fhir/Consent"),
    ("PUT", "/fhir/Consent/c1"),
)

_workdir = Path(tempfile.mkdtemp(prefix="consentry-fuzz-"))
_key_file = _workdir / "dev-issuer.jwk"
_issuer = UnsafeDevelopmentIssuer.from_key_file(_key_file, DEV_ISSUER, enabled=True)
_signer = SigningKey.generate("gateway.test/fhir/ledger")
_TOKENS: Final = {
    "patient": _issuer.issue(
        "user-p1", scopes="launch/patient patient/*.cruds", audience=AUDIENCE, patient="p1"
    ),
    "system": _issuer.issue("ehr", scopes="system/*.cruds", audience=AUDIENCE),
    "none": "",
}


async def _status(method: str, path: str, body: bytes, token: str) -> int:
    def echo(request: httpx.Request) -> httpx.Response:
        status = 201 if request.method == "POST" else 200
        content = request.content or b'{"resourceType":"Bundle","type":"searchset"}'
        return httpx.Response(
            status, content=content, headers={"content-type": "application/fhir+json"}
        )

    app = create_app(
        load_settings(
            overrides={
                "upstream": UPSTREAM,
                "public_url": "http://gateway.test/fhir",
                "store": "memory:",
                "access_log": False,
                "consent_jurisdiction": "opt-out",
                "auth": auth_settings(_key_file),
            }
        ),
        upstream=httpx.MockTransport(echo),
        store=MemoryLogStore(),
        signer=_signer,
        consents=MemoryConsentStore(),
    )
    headers = {"content-type": "application/fhir+json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            response = await c.request(method, path, content=body, headers=headers)
    finally:
        await app.aclose()
    return response.status_code


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    target=st.sampled_from(_TARGETS),
    body=_bodies,
    caller=st.sampled_from(sorted(_TOKENS)),
)
@example(target=("POST", "/fhir"), body=_deep(1_000, b"["), caller="none")
@example(target=("POST", "/fhir/Observation"), body=_deep(1_000, b"{"), caller="system")
@example(
    target=("POST", "/fhir/Observation"),
    body=b'{"resourceType":"Observation","contained":[{"resourceType":["Patient"]}]}',
    caller="system",
)
@example(
    target=("POST", "/fhir/Consent"),
    body=b'{"resourceType":"Consent","status":["active"],"decision":"permit",'
    b'"subject":{"reference":"Patient/p1"}}',
    caller="patient",
)
def test_no_body_to_any_endpoint_gives_a_500(
    target: tuple[str, str], body: bytes, caller: str
) -> None:
    """Random nested and odd JSON bodies, with and without a token, to resource, batch and
    consent endpoints (echoed back by the upstream): never a 500."""
    method, path = target
    status = asyncio.run(_status(method, path, body, _TOKENS[caller]))
    assert status != 500, (method, path, caller, body[:200])


def _values() -> Any:
    return st.one_of(
        st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
        st.integers().map(str),
        st.sampled_from(["²", "٣", "1" * 5000, "-1", "0x10", " 7", "1e3"]),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(["_count", "_summary", "_elements", "_total", "patient"]),
    value=_values(),
)
@example(name="_count", value="²")
@example(name="_count", value="1" * 5_000)
def test_no_search_parameter_value_gives_a_500(name: str, value: str) -> None:
    """Odd values of the parameters the gateway reads itself (``_count`` as ``²``, 5,000
    digits, signs, spaces): never a 500."""
    path = f"/fhir/Observation?{name}={quote(value, safe='')}"
    status = asyncio.run(_status("GET", path, b"", _TOKENS["system"]))
    assert status != 500, (name, value[:40])
