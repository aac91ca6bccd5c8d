"""``/metadata``: the upstream's CapabilityStatement, rewritten to describe the gateway.

FHIR R4 capabilitystatement.html: ``software`` names the product answering, ``implementation``
the instance and its base URL. The gateway answers, so both become the gateway's; the
upstream's software is kept in ``implementation.description``. Everything else (resources,
interactions, search parameters) is the upstream's, unchanged.
"""

from __future__ import annotations

from typing import Any

__all__ = ["describe_gateway"]

_SMART_SERVICE = {
    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
    "code": "SMART-on-FHIR",
}


def describe_gateway(
    capability: dict[str, Any], *, gateway_base: str, version: str, smart: bool = False
) -> dict[str, Any]:
    """Return ``capability`` changed in place to describe the gateway in front of it.

    ``smart``: the gateway verifies SMART on FHIR bearer tokens, so ``rest.security.service``
    says so (http://terminology.hl7.org/CodeSystem/restful-security-service ``SMART-on-FHIR``).
    """
    upstream_software = capability.get("software")
    behind = ""
    if isinstance(upstream_software, dict) and isinstance(upstream_software.get("name"), str):
        behind = f" in front of {upstream_software['name']}"
        if isinstance(upstream_software.get("version"), str):
            behind += f" {upstream_software['version']}"
    capability["software"] = {"name": "Consentry", "version": version}
    capability["implementation"] = {
        "description": f"Consentry FHIR consent gateway{behind}",
        "url": gateway_base,
    }
    for rest in capability.get("rest") or []:
        if isinstance(rest, dict) and rest.get("mode") == "server":
            security: dict[str, Any] = {
                "description": (
                    "Requests pass through the Consentry gateway, which classifies every "
                    "interaction and refuses what it cannot classify."
                )
            }
            if smart:
                security["service"] = [{"coding": [_SMART_SERVICE]}]
            rest["security"] = security
    return capability
