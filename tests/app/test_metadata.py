"""``/metadata`` and ``/.well-known/smart-configuration`` tell clients the truth about the
gateway: every claim below is checked against what the gateway answers, not against the
upstream's statement it starts from."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from tests.app.conftest import UPSTREAM
from tests.app.consenting import AUDIENCE, DEV_ISSUER, auth_settings

MakeClient = Callable[..., httpx.AsyncClient]

#: SMART 1.0's CapabilityStatement extension naming the OAuth endpoints.
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"

IDP = "https://idp.example/realms/clinic"
AUTHORIZE = f"{IDP}/protocol/openid-connect/auth"
TOKEN = f"{IDP}/protocol/openid-connect/token"
JWKS = f"{IDP}/protocol/openid-connect/certs"

_CONDITIONAL = {
    "conditionalCreate": True,
    "conditionalRead": "full-support",
    "conditionalUpdate": True,
    "conditionalDelete": "multiple",
}
_ALL = [
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
]

#: An upstream that claims everything (as HAPI and Medplum do): XML, FHIRPath Patch, every
#: interaction on Consent, operations at every level, custom resource types, messaging.
UPSTREAM_CAPABILITY: dict[str, Any] = {
    "resourceType": "CapabilityStatement",
    "id": "upstream-statement",
    "url": f"{UPSTREAM}/metadata",
    "text": {"status": "generated", "div": "<div>Upstream FHIR in XML and JSON</div>"},
    "status": "active",
    "date": "2026-01-01",
    "kind": "instance",
    "fhirVersion": "4.0.1",
    "format": ["application/fhir+xml", "xml", "application/fhir+json", "json"],
    "patchFormat": ["application/json-patch+json", "application/fhir+json", "application/xml"],
    "software": {"name": "Upstream FHIR", "version": "9.9"},
    "implementation": {"description": "upstream", "url": UPSTREAM},
    "messaging": [{"documentation": "upstream messaging"}],
    "rest": [
        {
            "mode": "server",
            "interaction": [
                {"code": "transaction"},
                {"code": "batch"},
                {"code": "search-system"},
                {"code": "history-system"},
            ],
            "operation": [
                {"name": "export", "definition": "http://hl7.org/fhir/OperationDefinition/export"},
                {
                    "name": "graphql",
                    "definition": "http://hl7.org/fhir/OperationDefinition/Resource-graphql",
                },
            ],
            "resource": [
                {
                    "type": "Patient",
                    "interaction": [{"code": code} for code in _ALL],
                    **_CONDITIONAL,
                    "searchRevInclude": ["Consent:patient", "Observation:subject"],
                    "operation": [
                        {
                            "name": "everything",
                            "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                        },
                        {
                            "name": "match",
                            "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match",
                        },
                    ],
                },
                {
                    "type": "Observation",
                    "interaction": [{"code": code} for code in _ALL],
                    "operation": [
                        {
                            "name": "validate",
                            "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
                        }
                    ],
                },
                {
                    "type": "Consent",
                    "interaction": [{"code": code} for code in _ALL],
                    **_CONDITIONAL,
                    "searchParam": [{"name": "category", "type": "token"}],
                },
                {"type": "AuditEvent", "interaction": [{"code": "read"}, {"code": "create"}]},
                {"type": "Bot", "interaction": [{"code": "read"}]},
            ],
        }
    ],
}


@pytest.fixture
def upstream_statement(router: respx.Router) -> None:
    router.get("/metadata").respond(
        200,
        json=copy.deepcopy(UPSTREAM_CAPABILITY),
        headers={"content-type": "application/fhir+json"},
    )


def _resource(body: dict[str, Any], rtype: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [r for r in body["rest"][0]["resource"] if r["type"] == rtype]
    assert len(found) == 1
    return found[0]


def _codes(resource: dict[str, Any]) -> list[str]:
    return [i["code"] for i in resource["interaction"]]


# --- formats ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("upstream_statement")
async def test_metadata_advertises_only_the_formats_the_gateway_answers(
    client: httpx.AsyncClient,
) -> None:
    """The gateway answers FHIR JSON and FHIR XML (converted at its edge) and nothing else: it
    claims both, not Turtle (which it answers 406), nor FHIRPath Patch (415)."""
    body = (await client.get("/fhir/metadata")).json()
    assert body["format"] == ["application/fhir+json", "json", "application/fhir+xml", "xml"]
    assert body["patchFormat"] == ["application/json-patch+json"]
    turtle = await client.get("/fhir/Patient/p1", headers={"accept": "text/turtle"})
    assert turtle.status_code == 406
    assert "Upstream FHIR in XML" not in str(body)


@pytest.mark.parametrize("query", ["_format=json", "_format=application/fhir%2Bjson&_pretty=true"])
@pytest.mark.usefixtures("upstream_statement")
async def test_metadata_with_parameters_describes_the_gateway_too(
    client: httpx.AsyncClient, query: str
) -> None:
    """HAPI's generic client with JSON encoding asks ``metadata?_format=json``: the same
    question, the same truthful answer (not the upstream's statement)."""
    body = (await client.get(f"/fhir/metadata?{query}")).json()
    assert body["software"]["name"] == "Consentry"
    assert body["format"] == ["application/fhir+json", "json", "application/fhir+xml", "xml"]
    assert "patch" not in _codes(_resource(body, "Consent"))


# --- the gateway's own Consent ------------------------------------------------------------------


@pytest.mark.usefixtures("upstream_statement")
async def test_metadata_describes_the_consent_api_the_gateway_serves(
    client: httpx.AsyncClient,
) -> None:
    """Consent is served by the gateway: no patch, delete or conditional interaction (the
    API answers those 405 or refuses them), whatever the upstream claims."""
    body = (await client.get("/fhir/metadata")).json()
    consent = _resource(body, "Consent")
    codes = _codes(consent)
    assert "patch" not in codes
    assert "delete" not in codes
    assert "history-type" not in codes
    assert consent["conditionalCreate"] is False
    assert consent["conditionalUpdate"] is False
    assert consent["conditionalDelete"] == "not-supported"
    assert consent["conditionalRead"] == "not-supported"
    assert {p["name"] for p in consent["searchParam"]} == {"patient", "status"}
    for method in ("PATCH", "DELETE"):
        refused = await client.request(method, "/fhir/Consent/c1")
        assert refused.status_code == 405
    assert (await client.get("/fhir/Consent/_history")).status_code in (400, 404)


@pytest.mark.usefixtures("upstream_statement")
async def test_consent_interactions_advertised_are_routed_by_the_consent_api(
    client: httpx.AsyncClient,
) -> None:
    """Each advertised Consent interaction reaches the consent API (no 404/405 for the
    path and method), so the list is not a guess."""
    body = (await client.get("/fhir/metadata")).json()
    requests = {
        "read": ("GET", "/fhir/Consent/c1"),
        "vread": ("GET", "/fhir/Consent/c1/_history/1"),
        "update": ("PUT", "/fhir/Consent/c1"),
        "history-instance": ("GET", "/fhir/Consent/c1/_history"),
        "create": ("POST", "/fhir/Consent"),
        "search-type": ("GET", "/fhir/Consent"),
    }
    for code in _codes(_resource(body, "Consent")):
        method, path = requests[code]
        # No token: a routed request is challenged (401); an unrouted one is 404 or 405.
        answer = await client.request(method, path, headers={"authorization": ""})
        assert answer.status_code == 401, (code, answer.status_code)


# --- operations, types, system interactions ---------------------------------------------------


@pytest.mark.usefixtures("upstream_statement")
async def test_metadata_advertises_no_operation_the_gateway_refuses(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    """Only the operations the operations table lets through are advertised (``$everything``,
    ``$validate`` of a posted resource), and the gateway's own Bulk Data ``$export`` (system,
    Patient, Group); ``$match``, ``$graphql`` and the rest are 403."""
    body = (await client.get("/fhir/metadata")).json()
    rest = body["rest"][0]
    bulk = "http://hl7.org/fhir/uv/bulkdata"
    assert body["instantiates"] == [f"{bulk}/CapabilityStatement/bulk-data"]
    assert rest["operation"] == [
        {"name": "export", "definition": f"{bulk}/OperationDefinition/export"}
    ]
    patient_ops = _resource(body, "Patient")["operation"]
    assert [op["name"] for op in patient_ops] == ["everything", "export"]
    assert patient_ops[1]["definition"] == f"{bulk}/OperationDefinition/patient-export"
    assert [op["name"] for op in _resource(body, "Observation")["operation"]] == ["validate"]
    router.post("/Observation/$validate").respond(200, json={"resourceType": "OperationOutcome"})
    validate = await client.post(
        "/fhir/Observation/$validate",
        json={"resourceType": "Observation"},
        headers={"content-type": "application/fhir+json"},
    )
    assert validate.status_code == 200
    match = await client.post("/fhir/Patient/$match", json={"resourceType": "Parameters"})
    assert match.status_code == 403
    assert (await client.get("/fhir/$meta")).status_code == 403


@pytest.mark.usefixtures("upstream_statement")
async def test_metadata_drops_what_the_gateway_cannot_route(client: httpx.AsyncClient) -> None:
    """A server's custom types (Medplum's ``Bot``) are 404 through the gateway; messaging is
    an operation it refuses; a ``_revinclude`` of Consent is refused; conditional reads are
    forwarded without their headers; a conditional delete matching several records is 412
    (the upstream's ``multiple`` would be a false claim)."""
    body = (await client.get("/fhir/metadata")).json()
    types = [r["type"] for r in body["rest"][0]["resource"]]
    assert "Bot" not in types
    assert (await client.get("/fhir/Bot/b1")).status_code == 404
    assert "messaging" not in body
    patient = _resource(body, "Patient")
    assert patient["searchRevInclude"] == ["Observation:subject"]
    assert patient["conditionalRead"] == "not-supported"
    assert patient["conditionalDelete"] == "single"
    assert _codes(patient) == _ALL  # the upstream's own types keep their interactions
    for key in ("id", "url", "text"):
        assert key not in body


@pytest.mark.usefixtures("upstream_statement")
async def test_metadata_says_where_the_gateways_own_audit_trail_is(
    client: httpx.AsyncClient,
) -> None:
    """AuditEvent is the gateway's own (the upstream's entry, read and create, replaced): read
    and the ITI-81 search with its parameters, served from the ledger, and the entry says so."""
    audit = _resource((await client.get("/fhir/metadata")).json(), "AuditEvent")
    assert _codes(audit) == ["read", "search-type"]
    assert "ledger" in audit["documentation"]
    params = {p["name"] for p in audit["searchParam"]}
    assert params == {"date", "patient", "agent", "entity", "type", "subtype", "action"} | {
        "outcome",
        "purpose",
    }


# --- SMART: oauth-uris and the well-known document -----------------------------------------------


def _idp_settings(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {
        "audiences": [AUDIENCE],
        "issuers": [
            {"issuer": "https://other.example", "jwks_file": str(tmp_path / "other.json")},
            {
                "issuer": IDP,
                "jwks_url": JWKS,
                "authorization_endpoint": AUTHORIZE,
                "token_endpoint": TOKEN,
                "capabilities": ["launch-standalone", "client-public"],
                **extra,
            },
        ],
    }


@pytest.mark.usefixtures("upstream_statement")
async def test_metadata_names_the_authorization_servers_oauth_uris(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """SMART 1.0 clients (Python's fhirclient) find the endpoints in ``rest.security``."""
    async with make_client(auth=_idp_settings(tmp_path)) as c:
        body = (await c.get("/fhir/metadata")).json()
    security = body["rest"][0]["security"]
    (extension,) = [e for e in security["extension"] if e["url"] == OAUTH_URIS]
    uris = {e["url"]: e["valueUri"] for e in extension["extension"]}
    assert uris == {"authorize": AUTHORIZE, "token": TOKEN}
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"


@pytest.mark.usefixtures("upstream_statement")
async def test_metadata_names_no_oauth_uris_the_gateway_does_not_know(
    client: httpx.AsyncClient,
) -> None:
    """The development issuer has no OAuth endpoints: none is invented."""
    body = (await client.get("/fhir/metadata")).json()
    assert "extension" not in body["rest"][0]["security"]


@pytest.mark.parametrize(
    "path",
    ["/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"],
    ids=["root", "base"],
)
async def test_smart_configuration_from_the_authorization_server(
    make_client: MakeClient, tmp_path: Path, router: respx.Router, path: str
) -> None:
    """SMART App Launch 2.x discovery at the root and under the base: public (no token),
    JSON, from the configured server, never forwarded to the upstream."""
    async with make_client(auth=_idp_settings(tmp_path)) as c:
        answer = await c.get(path, headers={"authorization": ""})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/json")
    document = answer.json()
    assert document["issuer"] == IDP
    assert document["jwks_uri"] == JWKS
    assert document["authorization_endpoint"] == AUTHORIZE
    assert document["token_endpoint"] == TOKEN
    assert document["grant_types_supported"] == ["authorization_code"]
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert {"launch-standalone", "client-public", "permission-v2"} <= set(document["capabilities"])
    assert "patient/*.rs" in document["scopes_supported"]
    assert router.calls.call_count == 0


async def test_smart_configuration_of_the_development_issuer(
    make_client: MakeClient, dev_key_file: Path
) -> None:
    """With only the development issuer, the document names it and its key set (served by
    the gateway) and no endpoint it does not have."""
    async with make_client(auth=auth_settings(dev_key_file)) as c:
        document = (await c.get("/fhir/.well-known/smart-configuration")).json()
        jwks = await c.get(document["jwks_uri"].removeprefix("http://gateway.test"))
    assert document["issuer"] == DEV_ISSUER
    assert document["jwks_uri"] == "http://gateway.test/auth/jwks"
    assert jwks.status_code == 200
    assert "token_endpoint" not in document
    assert "authorization_endpoint" not in document
    assert document["grant_types_supported"] == []
    assert "consentry token issue" in document["description"]


async def test_smart_configuration_without_an_issuer_says_so(make_client: MakeClient) -> None:
    """No issuer configured: there is nothing true to advertise, and the 404 says why."""
    async with make_client(auth={}) as c:
        answer = await c.get("/.well-known/smart-configuration")
    assert answer.status_code == 404
    assert "no authorization server" in answer.text


async def test_smart_configuration_under_a_root_base(
    make_client: MakeClient, tmp_path: Path
) -> None:
    """With the FHIR base at the root, the two places are one and still answered."""
    async with make_client(
        auth=_idp_settings(tmp_path), base_path="", public_url="http://gateway.test"
    ) as c:
        answer = await c.get("/.well-known/smart-configuration")
    assert answer.status_code == 200
    assert answer.json()["token_endpoint"] == TOKEN
