"""FHIR operations through the gateway in front of the real upstream (Medplum): the forwarded
``[type]/$validate`` answers what the upstream answers, instance-level ``$validate`` and
operations the table does not name are refused before the upstream is asked.

The filtered operations (``$lastn``, ``$stats``, ``$document``) are not served by this
upstream; their enforcement is tested in ``tests/app/test_fhir_operations.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.enforcing import FHIR_JSON
from tests.integration.sides import Sides
from tests.support import GatewayServer

pytestmark = pytest.mark.integration


def _dr(gateway: GatewayServer) -> dict[str, str]:
    return {
        **gateway.bearer("ops-dr", "user/*.rs", fhir_user="Practitioner/ops-dr"),
        **FHIR_JSON,
    }


def _observation(status: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": status, "code": {"text": "validated"}}


@pytest.mark.parametrize("status", ["final", "not-a-status"], ids=["valid", "invalid"])
def test_validate_of_a_posted_resource_answers_as_the_upstream(
    sides: Sides, gateway: GatewayServer, status: str
) -> None:
    """Forwarded with its body: the same status and issue codes as asking directly."""
    body = _observation(status)
    path = "Observation/$validate"
    direct = sides.direct.post(f"{sides.upstream_base}/{path}", json=body, headers=FHIR_JSON)
    through = sides.gateway.post(f"{sides.gateway_base}/{path}", json=body, headers=_dr(gateway))
    assert through.status_code == direct.status_code, through.text
    assert through.json()["resourceType"] == "OperationOutcome"
    codes = [issue.get("code") for issue in through.json().get("issue", [])]
    assert codes == [issue.get("code") for issue in direct.json().get("issue", [])]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "Patient/{pid}/$validate"),
        ("POST", "Patient/$match"),
        ("GET", "Patient/{pid}/$summary"),
    ],
    ids=["instance-validate", "match", "summary"],
)
def test_operations_the_table_refuses_are_403(
    sides: Sides, gateway: GatewayServer, patient_id: str, method: str, path: str
) -> None:
    url = f"{sides.gateway_base}/{path.format(pid=patient_id)}"
    body = {"resourceType": "Parameters"} if method == "POST" else None
    answer = sides.gateway.request(method, url, json=body, headers=_dr(gateway))
    assert answer.status_code == 403, answer.text
    assert answer.json()["resourceType"] == "OperationOutcome"
