"""The search guards are configurable: which callers are refused the inference families, and
which params may not be sorted on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import respx

from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from tests.app.consenting import AUDIENCE, DEV_ISSUER, auth_settings

EMPTY = {"resourceType": "Bundle", "type": "searchset"}


def bearer(key_file: Path, **claims: Any) -> dict[str, str]:
    issuer = UnsafeDevelopmentIssuer.from_key_file(key_file, DEV_ISSUER, enabled=True)
    return {"authorization": f"Bearer {issuer.issue(audience=AUDIENCE, **claims)}"}


async def test_reverse_chaining_is_allowed_to_users_by_default_and_refused_when_configured(
    make_client: Any, router: respx.Router, dev_key_file: Path
) -> None:
    """``_has:Observation:patient:code=...`` filters patients by records never returned: a
    deployment that wants practitioners guarded too says so, and the query is not sent."""
    route = router.get("/Patient").respond(200, json=EMPTY)
    doctor = bearer(dev_key_file, sub="dr", scopes="user/*.rs", fhir_user="Practitioner/dr")
    query = "/fhir/Patient?_has:Observation:patient:code=1234-5"
    async with make_client(auth=auth_settings(dev_key_file)) as client:
        assert (await client.get(query, headers=doctor)).status_code == 200
    assert route.call_count == 1
    async with make_client(
        auth=auth_settings(dev_key_file), inference_guards_for="patient,user"
    ) as client:
        assert (await client.get(query, headers=doctor)).status_code == 403
    assert route.call_count == 1


async def test_sorting_on_a_sensitive_param_is_refused_to_patient_callers(
    make_client: Any, router: respx.Router, dev_key_file: Path
) -> None:
    route = router.get("/Observation").respond(200, json=EMPTY)
    patient = bearer(dev_key_file, sub="p", scopes="launch/patient patient/*.rs", patient="p1")
    async with make_client(
        auth=auth_settings(dev_key_file), sensitive_sort_params="value-quantity"
    ) as client:
        refused = await client.get("/fhir/Observation?_sort=-value-quantity", headers=patient)
        allowed = await client.get("/fhir/Observation?_sort=date", headers=patient)
    assert refused.status_code == 403
    assert allowed.status_code == 200
    assert route.call_count == 1
