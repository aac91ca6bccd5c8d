"""Bulk Data ``$export`` in front of the real upstream, with carebundle-10 loaded.

The upstream has no ``$export``: the gateway pages through its searches and judges every
page. One carebundle patient's own consent denies a practitioner of this module (named by no
other module); that practitioner's ``Patient/$export`` holds none of that patient's
resources, in any file, and every carebundle resource of the others that it asked for, as
the upstream itself holds them (:class:`~tests.integration.enforcing.Universe`, read
directly). The job's files are kept on the board beside the gateway's SQLite store.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Final

import httpx
import pytest

from tests.integration.enforcing import Universe, deny_by_own_consent
from tests.integration.sides import Sides
from tests.support import GatewayServer

pytestmark = pytest.mark.integration

PRACTITIONER: Final = f"Practitioner/exporter-{uuid.uuid4().hex[:12]}"
TYPES: Final = ("Patient", "Observation", "Condition", "Encounter")
#: The carebundle's records carry the purpose-of-use label HTEST (test health data): the
#: exporter states that purpose, so only the consent decides what it gets.
PURPOSE: Final = ["HTEST"]


@pytest.fixture(scope="module")
def denied(gateway: GatewayServer, http: httpx.Client, carebundle: dict[str, list[str]]) -> str:
    """The fourth carebundle patient, whose own consent denies :data:`PRACTITIONER`."""
    patient = list(carebundle)[3]
    deny_by_own_consent(gateway, http, patient, PRACTITIONER)
    return patient


@pytest.fixture(scope="module")
def universe(sides: Sides, carebundle: dict[str, list[str]]) -> Universe:
    return Universe.read(sides.direct, sides.upstream_base)


def _export(http: httpx.Client, gateway: GatewayServer, headers: dict[str, str]) -> Any:
    """The manifest of a finished ``Patient/$export`` of :data:`TYPES`."""
    kick = http.get(
        f"{gateway.base_url}/Patient/$export",
        params={"_type": ",".join(TYPES)},
        headers={**headers, "prefer": "respond-async"},
    )
    assert kick.status_code == 202, kick.text
    status_url = kick.headers["content-location"]
    assert status_url.startswith(f"{gateway.base_url}/$export-status/")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        answer = http.get(status_url, headers=headers)
        if answer.status_code == 200:
            return answer.json()
        assert answer.status_code == 202, answer.text
        time.sleep(0.2)
    raise AssertionError("the export did not finish in time")


def test_export_releases_nothing_of_the_denying_patient(
    gateway: GatewayServer,
    http: httpx.Client,
    universe: Universe,
    denied: str,
    carebundle: dict[str, list[str]],
) -> None:
    headers = gateway.bearer(
        "exporter", "user/*.rs", fhir_user=PRACTITIONER, purpose_of_use=PURPOSE
    )
    manifest = _export(http, gateway, headers)
    assert manifest["requiresAccessToken"] is True
    exported: set[str] = set()
    text = ""
    for item in manifest["output"]:
        assert item["url"].startswith(f"{gateway.base_url}/$export-file/")
        answer = http.get(item["url"], headers=headers)
        assert answer.status_code == 200
        text += answer.text
        for line in answer.text.splitlines():
            resource = json.loads(line)
            assert resource["resourceType"] == item["type"]
            exported.add(f"{resource['resourceType']}/{resource['id']}")
    # Nothing of the denying patient, in any file, by id or by reference.
    assert not exported & universe.of(denied)
    assert f"Patient/{denied}" not in text
    # Everything of the others that was asked for, as the upstream holds it.
    others = [p for p in carebundle if p != denied]
    assert others
    for patient in others:
        for rtype in TYPES:
            assert universe.of(patient, rtype) <= exported, (patient, rtype)
    # Another principal cannot read the job.
    other = gateway.bearer(
        "someone-else", "user/*.rs", fhir_user="Practitioner/other", purpose_of_use=PURPOSE
    )
    assert http.get(manifest["output"][0]["url"], headers=other).status_code == 404
