"""The proxy end to end in one process: classification gate, forwarding, header policy,
rebasing, size caps, error mapping. The upstream is respx behind ``httpx.MockTransport``."""

from __future__ import annotations

import gzip
import json
from typing import Any

import httpx
import pytest
import respx

from middleware.pipeline.idempotency import IDEMPOTENCY_TAG
from tests.app.conftest import GATEWAY, UPSTREAM, raw_asgi_request

PATIENT = b'{"resourceType":"Patient","id":"p1","meta":{"versionId":"3"},"active":true}'


def outcome(response: httpx.Response) -> dict[str, Any]:
    """Assert ``response`` is a FHIR OperationOutcome and return it."""
    assert response.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "error"
    return body


# --- forwarding a read -----------------------------------------------------------------------


async def test_read_is_forwarded_and_released_byte_for_byte(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    body = (
        b'{"resourceType":"Observation","id":"o1","subject":{"reference":"Patient/p1"},'
        b'"valueQuantity":{"value":5.40},"z":1,"a":2}'
    )
    router.get("/Observation/o1").respond(
        200, content=body, headers={"content-type": "application/fhir+json"}
    )
    response = await client.get("/fhir/Observation/o1")
    assert response.status_code == 200
    assert response.content == body


async def test_upstream_url_is_built_from_the_classified_path_and_raw_query(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    route = router.get("/Observation").respond(
        200, json={"resourceType": "Bundle", "type": "searchset"}
    )
    await client.get("/fhir/Observation?code=http://loinc.org|8867-4&date=ge2024-01-01")
    sent = route.calls.last.request
    assert str(sent.url) == f"{UPSTREAM}/Observation?code=http://loinc.org|8867-4&date=ge2024-01-01"


# --- headers ----------------------------------------------------------------------------------


async def test_request_headers_allow_list_and_forwarded_family(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    route = router.put("/Patient/p1").respond(
        200, content=PATIENT, headers={"content-type": "application/fhir+json"}
    )
    # The gateway reads the current version first (the write is checked before and after).
    router.get("/Patient/p1").respond(
        200, content=PATIENT, headers={"content-type": "application/fhir+json"}
    )
    await client.put(
        "/fhir/Patient/p1",
        content=PATIENT,
        headers={
            "content-type": "application/fhir+json",
            "if-match": 'W/"3"',
            "prefer": "return=representation",
            "cookie": "session=1",
            "connection": "keep-alive, x-secret",
            "x-secret": "hop",
            "te": "trailers",
            "x-request-id": "client-rid-1",
            "host": "gateway.test",
        },
    )
    sent = route.calls.last.request.headers
    assert sent["if-match"] == 'W/"3"'
    assert sent["prefer"] == "return=representation"
    assert sent["x-request-id"] == "client-rid-1"
    assert sent["x-forwarded-for"] == "203.0.113.7"
    assert sent["x-forwarded-proto"] == "http"
    assert sent["x-forwarded-host"] == "gateway.test"
    assert sent["x-forwarded-prefix"] == "/fhir"
    for dropped in ("authorization", "cookie", "x-secret", "te"):
        assert dropped not in sent, dropped


async def test_client_host_header_does_not_steer_x_forwarded_host(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    """Host-header injection: a client sending ``Host: evil.example`` must not make an upstream
    that honours X-Forwarded-Host build links to evil.example."""
    route = router.get("/Patient/p1").respond(
        200, content=PATIENT, headers={"content-type": "application/fhir+json"}
    )
    await client.get("/fhir/Patient/p1", headers={"host": "evil.example"})
    sent = route.calls.last.request.headers
    assert sent["x-forwarded-host"] == "gateway.test"
    assert "evil.example" not in str(sent)


async def test_client_x_forwarded_for_is_not_trusted_by_default(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    route = router.get("/Patient/p1").respond(
        200, content=PATIENT, headers={"content-type": "application/fhir+json"}
    )
    await client.get("/fhir/Patient/p1", headers={"x-forwarded-for": "10.0.0.1"})
    assert route.calls.last.request.headers["x-forwarded-for"] == "203.0.113.7"


async def test_configured_upstream_headers_replace_client_values(
    make_client: Any, router: respx.Router
) -> None:
    route = router.get("/Patient/p1").respond(
        200, content=PATIENT, headers={"content-type": "application/fhir+json"}
    )
    async with make_client(upstream_headers={"Authorization": "Bearer gateway-secret"}) as c:
        await c.get("/fhir/Patient/p1")  # carries the client's own bearer token
    assert route.calls.last.request.headers["authorization"] == "Bearer gateway-secret"


async def test_request_id_is_generated_when_missing_or_unsafe(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    route = router.get("/Patient/p1").respond(
        200, content=PATIENT, headers={"content-type": "application/fhir+json"}
    )
    response = await client.get("/fhir/Patient/p1", headers={"x-request-id": "bad id\twith spaces"})
    rid = response.headers["x-request-id"]
    assert rid != "bad id\twith spaces"
    assert len(rid) == 32
    assert route.calls.last.request.headers["x-request-id"] == rid


async def test_response_headers_allow_list(client: httpx.AsyncClient, router: respx.Router) -> None:
    router.get("/Patient/p1").respond(
        200,
        content=PATIENT,
        headers={
            "content-type": "application/fhir+json",
            "etag": 'W/"3"',
            "last-modified": "Tue, 24 Nov 2026 18:00:00 GMT",
            "server": "upstream/1.2.3",
            "x-powered-by": "Express",
            "set-cookie": "upstream=1",
        },
    )
    response = await client.get("/fhir/Patient/p1")
    assert response.headers["etag"] == 'W/"3"'
    assert response.headers["last-modified"] == "Tue, 24 Nov 2026 18:00:00 GMT"
    for dropped in ("server", "x-powered-by", "set-cookie"):
        assert dropped not in response.headers, dropped


async def test_location_headers_are_rebased(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    router.post("/Patient").respond(
        201,
        content=PATIENT,
        headers={
            "content-type": "application/fhir+json",
            "location": f"{UPSTREAM}/Patient/p1/_history/3",
            "content-location": f"{UPSTREAM}/Patient/p1/_history/3",
        },
    )
    response = await client.post(
        "/fhir/Patient", content=PATIENT, headers={"content-type": "application/fhir+json"}
    )
    assert response.status_code == 201
    assert response.headers["location"] == f"{GATEWAY}/Patient/p1/_history/3"
    assert response.headers["content-location"] == f"{GATEWAY}/Patient/p1/_history/3"


# --- structural rebasing of bodies --------------------------------------------------------------


def searchset() -> bytes:
    """A Bundle with every place the upstream base can hide, and decimals that must survive."""
    text = (
        '{"resourceType":"Bundle","type":"searchset","total":2,'
        f'"link":[{{"relation":"self","url":"{UPSTREAM}/Observation?_count=1"}},'
        f'{{"relation":"next","url":"{UPSTREAM}/Observation?_count=1&_offset=1"}}],'
        f'"entry":[{{"fullUrl":"{UPSTREAM}/Observation/o1","resource":'
        '{"resourceType":"Observation","id":"o1","valueQuantity":{"value":5.40},'
        f'"subject":{{"reference":"{UPSTREAM}/Patient/p1"}},'
        '"note":[{"text":"see ' + UPSTREAM + '/Patient/p1"}],'
        '"extension":[{"url":"' + UPSTREAM + '/StructureDefinition/x","valueDecimal":1.000}],'
        '"component":[{"valueQuantity":{"value":12345678901234567890.12345}}]},'
        '"search":{"mode":"match"}}]}'
    )
    return text.encode()


async def test_bundle_urls_and_absolute_references_are_rebased_structurally(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    router.get("/Observation").respond(
        200, content=searchset(), headers={"content-type": "application/fhir+json"}
    )
    response = await client.get("/fhir/Observation?_count=1")
    text = response.text
    body = json.loads(text)
    # self names the client's own request; next is an opaque gateway cursor (paging state
    # and upstream URLs are never shown: enforcement issue, item 3).
    links = {link["relation"]: link["url"] for link in body["link"]}
    assert links["self"] == f"{GATEWAY}/Observation?_count=1"
    assert links["next"].startswith(f"{GATEWAY}/Observation?_count=1&_cursor=")
    assert "_offset" not in links["next"]
    entry = body["entry"][0]
    assert entry["fullUrl"] == f"{GATEWAY}/Observation/o1"
    assert entry["resource"]["subject"]["reference"] == f"{GATEWAY}/Patient/p1"
    # Narrative-like text and canonical URLs are content, not locations: untouched.
    assert entry["resource"]["note"][0]["text"] == f"see {UPSTREAM}/Patient/p1"
    assert entry["resource"]["extension"][0]["url"] == f"{UPSTREAM}/StructureDefinition/x"
    # Decimals keep their written precision; key order survives.
    assert '"value":5.40' in text
    assert '"valueDecimal":1.000' in text
    assert '"value":12345678901234567890.12345' in text
    # Key order survives; Bundle.total is stripped (a count of unfiltered matches is an oracle).
    assert list(body) == ["resourceType", "type", "link", "entry"]


async def test_nested_bundles_and_transaction_responses_are_rebased(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    nested = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            {
                "response": {
                    "status": "201 Created",
                    "location": f"{UPSTREAM}/Patient/p9/_history/1",
                }
            },
            {
                "resource": {
                    "resourceType": "Bundle",
                    "type": "collection",
                    "entry": [
                        {
                            "fullUrl": f"{UPSTREAM}/Patient/p9",
                            "resource": {"resourceType": "Patient", "id": "p9"},
                        }
                    ],
                }
            },
        ],
    }
    router.post("/").respond(200, json=nested, headers={"content-type": "application/fhir+json"})
    router.post(UPSTREAM).respond(
        200, json=nested, headers={"content-type": "application/fhir+json"}
    )
    response = await client.post(
        "/fhir",
        json={"resourceType": "Bundle", "type": "transaction", "entry": []},
        headers={"content-type": "application/fhir+json"},
    )
    body = response.json()
    assert body["entry"][0]["response"]["location"] == f"{GATEWAY}/Patient/p9/_history/1"
    assert body["entry"][1]["resource"]["entry"][0]["fullUrl"] == f"{GATEWAY}/Patient/p9"
    assert UPSTREAM not in response.text


async def test_json_escaped_slashes_are_found_and_rebased(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    escaped = UPSTREAM.replace("/", "\\/")
    content = (
        '{"resourceType":"Bundle","type":"searchset","link":[{"relation":"self","url":"'
        + escaped
        + '/Patient"}]}'
    ).encode()
    router.get("/Patient").respond(
        200, content=content, headers={"content-type": "application/fhir+json"}
    )
    response = await client.get("/fhir/Patient")
    assert response.json()["link"][0]["url"] == f"{GATEWAY}/Patient"


async def test_invalid_upstream_json_that_needs_rebasing_is_502(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    content = ('{"resourceType":"Bundle","link":[{"url":"' + UPSTREAM + '"}').encode()
    router.get("/Patient").respond(
        200, content=content, headers={"content-type": "application/fhir+json"}
    )
    response = await client.get("/fhir/Patient")
    assert response.status_code == 502
    assert UPSTREAM not in response.text
    outcome(response)


# --- refusals never reach the upstream ----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "status"),
    [
        ("GET", "/fhir/patient/1", 404),
        ("GET", "/fhir/Patient/1/", 400),
        ("GET", "/fhir/Patient/1;x=y", 400),
        ("HEAD", "/fhir/Patient/1", 405),
        ("POST", "/fhir/Patient/1", 405),
        ("DELETE", "/fhir/Patient", 400),
        ("GET", "/fhirx/Patient", 404),
        ("GET", "/elsewhere", 404),
    ],
    ids=[
        "lower-case-type",
        "trailing-slash",
        "matrix-param",
        "head",
        "post-on-instance",
        "unbounded-conditional-delete",
        "outside-base",
        "outside-everything",
    ],
)
async def test_unclassified_requests_are_refused_and_never_forwarded(
    client: httpx.AsyncClient, router: respx.Router, method: str, url: str, status: int
) -> None:
    catch_all = router.route().respond(200, json={"resourceType": "Patient"})
    response = await client.request(method, url)
    assert response.status_code == status
    if method != "HEAD":
        outcome(response)
    assert not catch_all.called


@pytest.mark.parametrize(
    ("raw_path", "status"),
    [
        (b"/fhir/Patient%2F1", 400),
        (b"/fhir/Patient%2f1", 400),
        (b"/fhir//Patient", 400),
        (b"/fhir/Patient/../Observation", 400),
        (b"/fhir/Patient/./1", 400),
        (b"/fhir/Observation/%2E%2E/Patient/1", 400),
        (b"/fhir/Patient/1%00", 400),
        (b"/fhir/Patient/1%252F", 400),
        (b"/fhir/Patient\\1", 400),
        (b"/fhir/Patient/1?_format=text/turtle", 406),
        (b"/fhir/Patient?name=a b", 400),
    ],
    ids=[
        "encoded-slash",
        "encoded-slash-lower",
        "double-slash",
        "dot-dot",
        "dot",
        "encoded-dot-dot",
        "encoded-nul",
        "double-encoding",
        "backslash",
        "format-turtle",
        "raw-space-in-query",
    ],
)
async def test_path_tricks_sent_raw_are_refused_and_never_forwarded(
    make_app: Any, router: respx.Router, raw_path: bytes, status: int
) -> None:
    catch_all = router.route().respond(200, json={"resourceType": "Patient"})
    code, body = await raw_asgi_request(make_app(), "GET", raw_path)
    assert code == status
    assert json.loads(body)["resourceType"] == "OperationOutcome"
    assert not catch_all.called


@pytest.mark.parametrize(
    "url",
    ["/fhir/Patient/p1/Consent", "/fhir/Patient/p1/Consent?status=active"],
    ids=["compartment-search", "compartment-search-with-query"],
)
async def test_consent_typed_requests_never_reach_the_upstream(
    client: httpx.AsyncClient, router: respx.Router, url: str
) -> None:
    """The gateway owns Consent: reaching the upstream's Consents through a compartment search
    would bypass the consent API (and its audit)."""
    catch_all = router.route().respond(200, json={"resourceType": "Bundle"})
    response = await client.get(url)
    assert response.status_code == 404
    outcome(response)
    assert not catch_all.called


async def test_method_override_header_is_refused(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    catch_all = router.route().respond(200, json={"resourceType": "Patient"})
    response = await client.get("/fhir/Patient/1", headers={"x-http-method-override": "DELETE"})
    assert response.status_code == 400
    assert not catch_all.called


@pytest.mark.parametrize(
    ("headers", "url", "status"),
    [
        ({"accept": "text/turtle"}, "/fhir/Patient/1", 406),
        ({}, "/fhir/Patient/1?_format=ttl", 406),
        ({"accept": "application/fhir+json; fhirVersion=4.0"}, "/fhir/Patient/1?_format=json", 200),
        ({"accept": "text/html, */*;q=0.1"}, "/fhir/Patient/1", 200),
    ],
    ids=["accept-turtle", "format-turtle", "json-with-params", "wildcard"],
)
async def test_only_json_and_xml_are_negotiated(
    client: httpx.AsyncClient, router: respx.Router, headers: dict[str, str], url: str, status: int
) -> None:
    router.get("/Patient/1").respond(
        200, content=PATIENT, headers={"content-type": "application/fhir+json"}
    )
    response = await client.get(url, headers=headers)
    assert response.status_code == status


async def test_turtle_request_body_is_415(client: httpx.AsyncClient, router: respx.Router) -> None:
    catch_all = router.route().respond(201)
    response = await client.post(
        "/fhir/Patient", content=b"<Patient/>", headers={"content-type": "text/turtle"}
    )
    assert response.status_code == 415
    outcome(response)
    assert not catch_all.called


async def test_body_on_get_is_refused(client: httpx.AsyncClient, router: respx.Router) -> None:
    catch_all = router.route().respond(200)
    response = await client.request("GET", "/fhir/Patient/1", content=b"{}")
    assert response.status_code == 400
    assert not catch_all.called


async def test_batch_body_that_is_not_a_bundle_is_400(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    catch_all = router.route().respond(200)
    response = await client.post(
        "/fhir", content=PATIENT, headers={"content-type": "application/fhir+json"}
    )
    assert response.status_code == 400
    assert not catch_all.called


# --- sizes and encodings --------------------------------------------------------------------------


async def test_declared_oversize_request_body_is_413(
    make_client: Any, router: respx.Router
) -> None:
    catch_all = router.route().respond(201)
    async with make_client(max_request_bytes=100) as c:
        response = await c.post(
            "/fhir/Patient",
            content=b"{" + b" " * 200 + b"}",
            headers={"content-type": "application/fhir+json"},
        )
    assert response.status_code == 413
    outcome(response)
    assert not catch_all.called


async def test_streamed_oversize_request_body_is_413(
    make_client: Any, router: respx.Router
) -> None:
    catch_all = router.route().respond(201)

    async def chunks() -> Any:
        for _ in range(10):
            yield b" " * 50

    async with make_client(max_request_bytes=100) as c:
        response = await c.post(
            "/fhir/Patient", content=chunks(), headers={"content-type": "application/fhir+json"}
        )
    assert response.status_code == 413
    assert not catch_all.called


async def test_gzip_request_body_is_decoded_before_forwarding(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    route = router.post("/Patient").respond(
        201, content=PATIENT, headers={"content-type": "application/fhir+json"}
    )
    await client.post(
        "/fhir/Patient",
        content=gzip.compress(PATIENT),
        headers={"content-type": "application/fhir+json", "content-encoding": "gzip"},
    )
    # The body decoded, as sent: only the create's tag added (pipeline.writes).
    sent = json.loads(route.calls.last.request.content)
    assert [tag["system"] for tag in sent["meta"].pop("tag")] == [IDEMPOTENCY_TAG]
    assert sent == json.loads(PATIENT)
    assert "content-encoding" not in route.calls.last.request.headers


async def test_gzip_bomb_is_413(make_client: Any, router: respx.Router) -> None:
    catch_all = router.route().respond(201)
    bomb = gzip.compress(b"{" + b" " * 5_000_000 + b"}")
    async with make_client(max_request_bytes=100_000) as c:
        response = await c.post(
            "/fhir/Patient",
            content=bomb,
            headers={"content-type": "application/fhir+json", "content-encoding": "gzip"},
        )
    assert response.status_code == 413
    assert not catch_all.called


async def test_unknown_content_encoding_is_refused(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    catch_all = router.route().respond(201)
    response = await client.post(
        "/fhir/Patient",
        content=PATIENT,
        headers={"content-type": "application/fhir+json", "content-encoding": "br"},
    )
    assert response.status_code == 400
    assert not catch_all.called


async def test_large_json_answers_are_gzipped_for_clients_that_ask(
    make_client: Any, router: respx.Router
) -> None:
    big = json.dumps({"resourceType": "Patient", "id": "p1", "text": {"div": "x" * 5000}}).encode()
    router.get("/Patient/p1").respond(
        200, content=big, headers={"content-type": "application/fhir+json"}
    )
    async with make_client(gzip_min_bytes=1024) as c:
        response = await c.get("/fhir/Patient/p1", headers={"accept-encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert response.content == big  # httpx decodes it


async def test_oversize_upstream_answer_is_502(make_client: Any, router: respx.Router) -> None:
    big = b'{"resourceType":"Binary","data":"' + b"A" * 2000 + b'"}'
    router.get("/Binary/b1").respond(
        200, content=big, headers={"content-type": "application/fhir+json"}
    )
    async with make_client(max_response_bytes=1000) as c:
        response = await c.get("/fhir/Binary/b1")
    assert response.status_code == 502
    outcome(response)


async def test_non_json_answers_are_withheld(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    """An answer the gateway cannot read cannot be judged: an upstream that ignores the JSON
    ``Accept`` gets its body withheld (502), never streamed to the client."""
    payload = bytes(range(256)) * 1000
    router.get("/Binary/b1").respond(
        200, content=payload, headers={"content-type": "application/pdf"}
    )
    response = await client.get("/fhir/Binary/b1")
    assert response.status_code == 502
    assert payload[:64] not in response.content


# --- upstream failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (httpx.ConnectTimeout("connect timed out to 10.1.2.3"), 504),
        (httpx.ReadTimeout("read timed out"), 504),
        (httpx.ConnectError("[Errno 111] Connection refused 10.1.2.3:8103"), 502),
        (httpx.RemoteProtocolError("peer closed connection"), 502),
    ],
    ids=["connect-timeout", "read-timeout", "refused", "protocol-error"],
)
async def test_upstream_failures_become_operation_outcomes_without_internals(
    client: httpx.AsyncClient, router: respx.Router, error: Exception, status: int
) -> None:
    router.get("/Patient/p1").mock(side_effect=error)
    response = await client.get("/fhir/Patient/p1")
    assert response.status_code == status
    body = outcome(response)
    assert body["issue"][0]["code"] == ("timeout" if status == 504 else "transient")
    for secret in ("10.1.2.3", "Errno", "Traceback", "upstream.test"):
        assert secret not in response.text


@pytest.mark.usefixtures("mock_upstream_only")
async def test_unexpected_exception_is_a_generic_500(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    router.get("/Patient/p1").mock(side_effect=RuntimeError("secret internal state p1"))
    response = await client.get("/fhir/Patient/p1")
    assert response.status_code == 500
    outcome(response)
    assert "secret" not in response.text
    assert "Traceback" not in response.text


async def test_upstream_error_statuses_pass_through_with_generic_outcomes(
    client: httpx.AsyncClient, router: respx.Router
) -> None:
    """The status passes; the upstream's own OperationOutcome does not (its diagnostics can
    name other records), and a missing record's 404 is the one a denied record gets."""
    oo = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "not-found", "diagnostics": "Patient/missing"}],
    }
    router.get("/Patient/missing").respond(
        404, json=oo, headers={"content-type": "application/fhir+json"}
    )
    response = await client.get("/fhir/Patient/missing")
    assert response.status_code == 404
    assert response.json()["issue"] == [
        {"severity": "error", "code": "not-found", "diagnostics": "not found"}
    ]
