"""The CapabilityStatement advertises the gateway's own Bulk Data ``$export`` (system, Patient,
Group) with the IG's OperationDefinitions, whatever the upstream claimed about ``$export``."""

from __future__ import annotations

from typing import Any

from middleware.proxy.capability import describe_gateway

BULK = "http://hl7.org/fhir/uv/bulkdata"


def _statement() -> dict[str, Any]:
    upstream_export = {"name": "export", "definition": "http://upstream.test/OperationDefinition/x"}
    return {
        "resourceType": "CapabilityStatement",
        "rest": [
            {
                "mode": "server",
                "operation": [upstream_export],
                "resource": [
                    {"type": "Patient", "operation": [upstream_export]},
                    {"type": "Group"},
                    {"type": "Observation"},
                ],
            }
        ],
    }


def test_export_is_advertised_once_at_each_level_it_is_served() -> None:
    described = describe_gateway(_statement(), gateway_base="http://gw.test/fhir", version="1")
    assert described["instantiates"] == [f"{BULK}/CapabilityStatement/bulk-data"]
    rest = described["rest"][0]
    assert rest["operation"] == [
        {"name": "export", "definition": f"{BULK}/OperationDefinition/export"}
    ]
    by_type = {r["type"]: r for r in rest["resource"]}
    assert by_type["Patient"]["operation"] == [
        {"name": "export", "definition": f"{BULK}/OperationDefinition/patient-export"}
    ]
    assert by_type["Group"]["operation"] == [
        {"name": "export", "definition": f"{BULK}/OperationDefinition/group-export"}
    ]
    assert "operation" not in by_type["Observation"]
