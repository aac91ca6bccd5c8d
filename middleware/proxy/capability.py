"""``/metadata``: the upstream's CapabilityStatement, rewritten to describe the gateway as it is.

FHIR R4 capabilitystatement.html: the statement describes the server the client talks to, and
that is the gateway. What the upstream supports and the gateway refuses is taken out, what the
gateway serves itself is put in (each rule names the module that makes it true):

- ``software`` and ``implementation`` name the gateway; the upstream's software is kept in
  ``implementation.description``; the upstream's ``text``, ``url``, ``identifier``,
  ``version`` and ``id`` described the upstream's statement and are dropped;
- ``format`` is FHIR JSON and FHIR XML (``fhir.negotiate`` and ``fhir.xmlcodec``: XML is
  converted at the edge both ways on the proxied API; Turtle is 406) and ``patchFormat`` JSON
  Patch only (``pipeline.writes``: FHIRPath Patch is 415);
- resource types the gateway does not know (``fhir.resource_types``; a server's custom types)
  are dropped: their paths are 404;
- operations: only those the operations table lets through at some level
  (``pipeline.operation_table``: filtered or forwarded) remain; every other operation,
  ``$graphql`` included, is 403; messaging and documents (``$process-message``, ``POST
  [base]`` with a document Bundle) are refused and dropped;
- Bulk Data ``$export`` (system, Patient and Group level) is the gateway's own
  (``pipeline.export``): advertised with the Bulk Data IG's OperationDefinitions, and the
  statement ``instantiates`` the IG's bulk-data CapabilityStatement;
- ``conditionalRead`` becomes ``not-supported`` (reads are forwarded without the client's
  conditional headers: a 304 would confirm a record the caller may not see);
  ``conditionalDelete: multiple`` becomes ``single`` (``pipeline.writes`` resolves a
  conditional target first and refuses more than one match with 412);
- Consent is the gateway's own API (``consent.api``): the upstream's Consent entry is replaced
  by the interactions that API serves, and no search may ``_include`` Consent;
- AuditEvent is the gateway's own too (``audit.http``: the gateway is the IHE ITI-81 Audit
  Record Repository of its ledger): the upstream's entry is replaced by the read, the search
  and its parameters that API serves, and no search may ``_include`` AuditEvent;
- ``search-system`` and ``history-system`` are documented as refused in a patient context
  (``pipeline.flow``);
- ``rest.security`` says SMART on FHIR when tokens are verified, with the ``oauth-uris``
  extension when an authorization server's endpoints are configured (``auth.smart``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from middleware.fhir.request import Level
from middleware.fhir.resource_types import RESOURCE_TYPES
from middleware.pipeline.operation_table import DEFAULT_TABLE, Mode, OperationTable

__all__ = ["AUDIT_EVENT_CAPABILITY", "CONSENT_CAPABILITY", "describe_gateway"]

_SMART_SERVICE = {
    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
    "code": "SMART-on-FHIR",
}
_FORMATS: Final = ("application/fhir+json", "json", "application/fhir+xml", "xml")
_PATCH_FORMATS: Final = ("application/json-patch+json",)
_DROPPED: Final = ("id", "meta", "text", "url", "identifier", "version", "messaging", "document")
_PATIENT_CONTEXT_REFUSED: Final = frozenset({"search-system", "history-system"})
_OWN_TYPES: Final = frozenset({"Consent", "AuditEvent"})
_BULK: Final = "http://hl7.org/fhir/uv/bulkdata"
#: The gateway's own Bulk Data export (pipeline.export): (type or None, operation entry).
_EXPORTS: Final = (
    (None, {"name": "export", "definition": f"{_BULK}/OperationDefinition/export"}),
    ("Patient", {"name": "export", "definition": f"{_BULK}/OperationDefinition/patient-export"}),
    ("Group", {"name": "export", "definition": f"{_BULK}/OperationDefinition/group-export"}),
)

#: The gateway's own Consent API (``middleware.consent.api`` and ``consent.operations``).
CONSENT_CAPABILITY: Final[Mapping[str, Any]] = {
    "type": "Consent",
    "documentation": (
        "Served by the gateway itself, never forwarded. Also: POST Consent/[id]/$revoke "
        "(records the current version as inactive) and POST Consent/$explain (the decision "
        "for a request and its trace). Updates and $revoke take If-Match; changes take a "
        "detached Ed25519 signature (X-Consent-Signature, X-Consent-Signer-Key), required "
        "by the patient's key registered with POST Consent/$register-key when the "
        "deployment asks for it."
    ),
    "interaction": [
        {"code": "read"},
        {"code": "vread"},
        {"code": "update"},
        {"code": "history-instance"},
        {"code": "create"},
        {"code": "search-type"},
    ],
    "versioning": "versioned-update",
    "readHistory": True,
    "updateCreate": True,
    "conditionalCreate": False,
    "conditionalRead": "not-supported",
    "conditionalUpdate": False,
    "conditionalDelete": "not-supported",
    "searchParam": [
        {"name": "patient", "type": "reference"},
        {"name": "status", "type": "token"},
    ],
}


#: The gateway's own audit trail (``middleware.audit.http``, ``audit.search``).
AUDIT_EVENT_CAPABILITY: Final[Mapping[str, Any]] = {
    "type": "AuditEvent",
    "documentation": (
        "Served by the gateway itself, never forwarded: the IHE BALP AuditEvents of every "
        "exchange, rendered from the gateway's ledger (IHE ITI-81 Audit Record Repository). "
        "Ids are <ledger index>-<n>; meta.source is the entry's receipt (inclusion proof). "
        "Auditors (the configured role with user/AuditEvent.rs) read everything; a "
        "patient-context token reads the events about its own record. Also: GET "
        "Patient/[id]/$accounting and bulk export (GET AuditEvent/$export with Prefer: "
        "respond-async), auditors only for export. Every access is itself audited."
    ),
    "interaction": [{"code": "read"}, {"code": "search-type"}],
    "versioning": "no-version",
    "readHistory": False,
    "updateCreate": False,
    "conditionalRead": "not-supported",
    "searchParam": [
        {"name": "date", "type": "date"},
        {"name": "patient", "type": "reference"},
        {"name": "agent", "type": "reference"},
        {"name": "entity", "type": "reference"},
        {"name": "type", "type": "token"},
        {"name": "subtype", "type": "token"},
        {"name": "action", "type": "token"},
        {"name": "outcome", "type": "token"},
        {"name": "purpose", "type": "token"},
    ],
}


def describe_gateway(
    capability: dict[str, Any],
    *,
    gateway_base: str,
    version: str,
    smart: bool = False,
    oauth_uris: Mapping[str, Any] | None = None,
    operations: OperationTable = DEFAULT_TABLE,
) -> dict[str, Any]:
    """Return ``capability`` changed in place to describe the gateway in front of it (see the
    module docstring for each change).

    ``smart``: the gateway verifies SMART on FHIR bearer tokens, so ``rest.security.service``
    says so (http://terminology.hl7.org/CodeSystem/restful-security-service ``SMART-on-FHIR``).
    ``oauth_uris``: the SMART ``oauth-uris`` extension to put in ``rest.security``
    (:func:`middleware.auth.smart.oauth_uris`), or ``None``. ``operations``: the operations
    table in force (the operations kept).
    """
    upstream_software = capability.get("software")
    behind = ""
    if isinstance(upstream_software, dict) and isinstance(upstream_software.get("name"), str):
        behind = f" in front of {upstream_software['name']}"
        if isinstance(upstream_software.get("version"), str):
            behind += f" {upstream_software['version']}"
    for name in _DROPPED:
        capability.pop(name, None)
    capability["name"] = "ConsentryGateway"
    capability["software"] = {"name": "Consentry", "version": version}
    capability["implementation"] = {
        "description": f"Consentry FHIR consent gateway{behind}",
        "url": gateway_base,
    }
    capability["format"] = list(_FORMATS)
    capability["patchFormat"] = list(_PATCH_FORMATS)
    capability["instantiates"] = [f"{_BULK}/CapabilityStatement/bulk-data"]
    rests = capability.get("rest")
    capability["rest"] = [
        _describe_rest(rest, smart=smart, oauth_uris=oauth_uris, operations=operations)
        for rest in (rests if isinstance(rests, list) else ())
        if isinstance(rest, dict) and rest.get("mode") == "server"
    ]
    return capability


def _describe_rest(
    rest: dict[str, Any],
    *,
    smart: bool,
    oauth_uris: Mapping[str, Any] | None,
    operations: OperationTable,
) -> dict[str, Any]:
    resources = rest.get("resource")
    described = [
        _describe_resource(resource, operations)
        for resource in (resources if isinstance(resources, list) else ())
        if isinstance(resource, dict)
        and resource.get("type") in RESOURCE_TYPES
        and resource.get("type") not in _OWN_TYPES
    ]
    described += [dict(CONSENT_CAPABILITY), dict(AUDIT_EVENT_CAPABILITY)]
    rest["resource"] = sorted(described, key=lambda resource: str(resource["type"]))
    _keep_operations(rest, None, (Level.SYSTEM,), operations)
    _add_exports(rest)
    interactions = rest.get("interaction")
    if isinstance(interactions, list):
        for interaction in interactions:
            if isinstance(interaction, dict) and interaction.get("code") in (
                _PATIENT_CONTEXT_REFUSED
            ):
                interaction["documentation"] = "Refused to patient-context (patient/) tokens."
    security: dict[str, Any] = {
        "description": (
            "Requests pass through the Consentry gateway, which classifies every "
            "interaction and refuses what it cannot classify."
        )
    }
    if oauth_uris is not None:
        security["extension"] = [dict(oauth_uris)]
    if smart:
        security["service"] = [{"coding": [_SMART_SERVICE]}]
    rest["security"] = security
    return rest


def _add_exports(rest: dict[str, Any]) -> None:
    """The Bulk Data ``$export`` operations the gateway serves itself, on ``rest`` and its
    Patient and Group entries (an upstream's own entries of that name were dropped before)."""
    by_type = {r.get("type"): r for r in rest["resource"]}
    for rtype, entry in _EXPORTS:
        node = rest if rtype is None else by_type.get(rtype)
        if node is not None:
            node["operation"] = [
                *(op for op in node.get("operation", ()) if op.get("name") != "export"),
                dict(entry),
            ]


def _keep_operations(
    node: dict[str, Any], rtype: str | None, levels: tuple[Level, ...], table: OperationTable
) -> None:
    """``node.operation`` cut to the operations ``table`` does not refuse at one of ``levels``
    (removed when none is left)."""
    operations = node.get("operation")
    kept = [
        op
        for op in (operations if isinstance(operations, list) else ())
        if isinstance(op, dict)
        and isinstance(op.get("name"), str)
        and any(table.mode(rtype, level, f"${op['name']}") is not Mode.REFUSE for level in levels)
    ]
    if kept:
        node["operation"] = kept
    else:
        node.pop("operation", None)


def _describe_resource(resource: dict[str, Any], operations: OperationTable) -> dict[str, Any]:
    _keep_operations(resource, resource["type"], (Level.TYPE, Level.INSTANCE), operations)
    if "conditionalRead" in resource:
        resource["conditionalRead"] = "not-supported"
    if resource.get("conditionalDelete") == "multiple":
        resource["conditionalDelete"] = "single"
    for name in ("searchInclude", "searchRevInclude"):
        values = resource.get(name)
        if isinstance(values, list):
            resource[name] = [v for v in values if not _names_consent(v)]
    return resource


def _names_consent(include: Any) -> bool:
    """True when an ``_include``/``_revinclude`` value would bring the gateway's own types
    (``Consent:patient``, ``X:y:AuditEvent``): the gateway refuses those searches."""
    if not isinstance(include, str):
        return False
    return bool(_OWN_TYPES.intersection(include.split(":")))
