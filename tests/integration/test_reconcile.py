"""Reconciliation's questions asked of the real upstream (``middleware/proxy/reconcile.py``).

A gateway killed in the middle of a write learns at its next start whether the upstream
applied it; the kill -9 suite (``tests/crash/test_write_kill9.py``) proves the mechanism on a
file-backed upstream. Here the probes the gateway keeps are answered by the real server, so
what it stores (its own ``meta``, its reading of the body) does not turn an applied write into
"unknown" or a missing one into "applied": a create is found by its tag, an update by what was
sent, a delete by its target being gone, and each counterpart is told apart.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from middleware.app import create_app
from middleware.pipeline.idempotency import IDEMPOTENCY_TAG
from middleware.pipeline.write_forward import content_digest
from middleware.proxy.reconcile import decide
from middleware.settings import load_settings
from tests.integration.sides import Sides

pytestmark = pytest.mark.integration

_FHIR_JSON = {"content-type": "application/fhir+json"}


def _decide_all(upstream: str, probes: list[dict[str, Any]]) -> list[str | None]:
    async def run() -> list[str | None]:
        settings = load_settings(
            overrides={"upstream": upstream, "store": "memory:", "public_url": "http://gw/fhir"}
        )
        app = create_app(settings)
        try:
            return [await decide(app.proxy.forwarder, json.dumps(probe)) for probe in probes]
        finally:
            await app.aclose()

    return asyncio.run(run())


def test_the_upstream_answers_each_probe(sides: Sides) -> None:
    patient = {"resourceType": "Patient", "name": [{"family": f"Rec{uuid.uuid4().hex[:8]}"}]}
    created = sides.gateway.post(f"{sides.gateway_base}/Patient", json=patient, headers=_FHIR_JSON)
    assert created.status_code == 201
    stored = created.json()
    pid, v1 = stored["id"], stored["meta"]["versionId"]
    (tag,) = [t["code"] for t in stored["meta"]["tag"] if t["system"] == IDEMPOTENCY_TAG]
    creates = [
        {"method": "POST", "type": "Patient", "tag": tag},
        {"method": "POST", "type": "Patient", "tag": uuid.uuid4().hex},
    ]
    # Asked before anything else writes the record (an update without meta may drop tags).
    assert _decide_all(sides.upstream_base, creates) == [
        "applied",  # the create's tag is found
        "absent",  # no resource carries a tag never sent
    ]

    sent = {**patient, "id": pid, "active": True}
    updated = sides.gateway.put(
        f"{sides.gateway_base}/Patient/{pid}", json=sent, headers=_FHIR_JSON
    )
    assert updated.status_code == 200
    v2 = updated.json()["meta"]["versionId"]
    other = sides.gateway.post(f"{sides.gateway_base}/Patient", json=patient, headers=_FHIR_JSON)
    gone = other.json()["id"]
    assert sides.gateway.delete(f"{sides.gateway_base}/Patient/{gone}").status_code in (200, 204)

    target = f"Patient/{pid}"
    probes = [
        {"method": "PUT", "target": target, "version": v1, "sent": content_digest(sent)},
        {"method": "PUT", "target": target, "version": v2, "sent": content_digest(sent)},
        {"method": "PUT", "target": target, "version": v1, "sent": content_digest(patient)},
        {"method": "DELETE", "target": f"Patient/{gone}", "version": None},
        {"method": "DELETE", "target": target, "version": None},
    ]
    assert _decide_all(sides.upstream_base, probes) == [
        "applied",  # moved past the pinned version, holding what was sent
        "absent",  # still at the version the write was pinned to
        "unknown",  # moved on, to something else than what was sent
        "applied",  # deleted
        "absent",  # still there
    ]
