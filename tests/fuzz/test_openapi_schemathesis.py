"""schemathesis against the OpenAPI document the gateway serves, in-process.

The document is loaded from the running app (``GET /openapi.json``, so what is served is what
is tested) and every operation in it is driven with generated paths, queries, headers and
bodies, each request sent without a token, with the patient's and with a privileged one (the
consent administrator for the consent API, the auditor for the ledger). Consents ``c1`` and
``c2`` of the patient exist, and generated ids and ledger indexes are sometimes bent onto them,
so reads, history, ``$revoke``, receipts and proofs also reach their success paths. Every
answer must be one the document lists, with the content type and body schema it gives, and
no answer may be a 5xx but the documented 503: a 500 is a client input the gateway did not
foresee.
"""

from __future__ import annotations

import json
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, cast

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CheckContext
from schemathesis.core.transport import Response
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from middleware.app import Gateway
from middleware.openapi import openapi_document
from tests.fuzz.gateway import BASE, bearers, make_gateway

Case = schemathesis.Case[Any]
_KNOWN_IDS: Final = ("c1", "c2")


def _consent(cid: str) -> bytes:
    return json.dumps(
        {
            "resourceType": "Consent",
            "id": cid,
            "status": "active",
            "subject": {"reference": "Patient/p1"},
            "decision": "permit",
        }
    ).encode()


_KEY_FILE: Final = Path(tempfile.mkdtemp(prefix="consentry-schemathesis-")) / "dev-issuer.jwk"
_TOKENS: Final = bearers(_KEY_FILE)
# The document the gateway serves (tests/fuzz/test_openapi_routes.py checks they are equal);
# schemathesis parametrizes from it at collection, before any app exists.
schema = schemathesis.openapi.from_dict(openapi_document(BASE, development_issuer=True))


@pytest.fixture(scope="module", autouse=True)
def _end_schemathesis_portal() -> Iterator[None]:
    """schemathesis runs every in-process ASGI call on one event-loop thread of its own,
    kept for the rest of the process (ended only at exit). Ended after this module, so the
    tests after it run in a process with no thread but the main one: the audit exports and
    their verification fork worker processes only then (a fork with other threads alive is
    refused, and those tests would see the sequential path instead)."""
    yield
    asgi._shutdown()  # what schemathesis registers with atexit
    assert not [t for t in threading.enumerate() if t.name.startswith("asyncio")]


@pytest.fixture
def gateway() -> Gateway:
    """A gateway holding consents ``c1`` and ``c2`` of Patient/p1, made through the API by
    the patient. A new one per operation: schemathesis ends an app's lifespan after each
    test, and a gateway, like any served app, starts once."""
    app = make_gateway(_KEY_FILE)
    headers = {"authorization": _TOKENS["patient"], "content-type": "application/fhir+json"}
    # schemathesis types ASGI messages as dict, ours (the spec's) as MutableMapping.
    with asgi.get_client(cast("Any", app)) as client:
        for cid in _KNOWN_IDS:
            answer = client.put(
                f"http://{asgi.HOST}{BASE}/Consent/{cid}", data=_consent(cid), headers=headers
            )
            assert answer.status_code == 201, answer.text
    return app


def no_server_error(ctx: CheckContext, response: Response, case: Case) -> None:
    """No 5xx, but a 503 where the document lists it (the ledger or a store unavailable)."""
    documented = case.operation.definition.raw.get("responses", {})
    assert response.status_code < 500 or (response.status_code == 503 and "503" in documented), (
        f"{response.status_code} for {case.method} {case.formatted_path}"
    )


_CHECKS: Final = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _bend(case: Case) -> None:
    """Point about half the generated ids at consents that exist and ledger numbers at the
    first few entries, so success paths are fuzzed too (decided from the generated value
    itself, so a replay is the same request)."""
    for name in ("id",):
        value = (case.path_parameters or {}).get(name)
        if isinstance(value, str) and len(value) % 2 == 0:
            case.path_parameters[name] = _KNOWN_IDS[len(value) % 4 // 2]
    for where in (case.path_parameters, case.query):
        for name in ("index", "size", "from", "to", "start", "end"):
            value = (where or {}).get(name)
            if isinstance(value, int) and value % 3:
                where[name] = value % 5


@schema.parametrize()
@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_the_gateways_own_apis_answer_only_as_documented(case: Case, gateway: Gateway) -> None:
    """Each operation with generated input, as no one, the patient and a privileged caller:
    only documented statuses, content types and bodies; no 5xx but a documented 503."""
    _bend(case)
    privileged = _TOKENS["auditor"] if case.path.startswith("/ledger/") else _TOKENS["admin"]
    for bearer in (None, _TOKENS["patient"], privileged):
        headers = {} if bearer is None else {"authorization": bearer}
        case.call_and_validate(headers=headers, checks=_CHECKS, app=gateway)
