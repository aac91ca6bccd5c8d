"""``/metadata``: the upstream's CapabilityStatement, rewritten to describe the gateway.

FHIR R4 capabilitystatement.html: ``software`` names the product answering, ``implementation``
the instance and its base URL. The gateway answers, so both become the gateway's; the
upstream's software is kept in ``implementation.description``. Everything else (resources,
interactions, search parameters) is the upstream's, unchanged.
"""

from __future__ import annotations

from typing import Any

__all__ = ["describe_gateway"]


def describe_gateway(
    capability: dict[str, Any], *, gateway_base: str, version: str
) -> dict[str, Any]:
    """Return ``capability`` changed in place to describe the gateway in front of it."""
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
            rest["security"] = {
                "description": (
                    "Requests pass through the Consentry gateway, which classifies every "
                    "interaction and refuses what it cannot classify."
                )
            }
    return capability
