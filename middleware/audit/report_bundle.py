"""The accounting of disclosures as a FHIR R4 ``document`` Bundle. Pure: plain dicts out.

Why a ``document`` and not a ``collection``: an accounting is one statement made at one time
for one patient, with a title, the period it covers and what it leaves out; a FHIR document
(http://hl7.org/fhir/R4/documents.html) carries exactly that in its Composition (``title``,
``subject``, ``date``, ``event.period``, sections with narrative), is immutable once made
(``identifier``, ``timestamp``), and a reader can show its narrative without understanding
the coded content. A collection would leave the period and the exclusions nowhere.

Layout: ``entry[0]`` the Composition; ``entry[1]`` the Device that is the gateway (the
author); ``entry[2]`` the Patient (the subject); then one AuditEvent per accounting entry
(DICOM 110106 "Export", ``period`` from the first to the last disclosure it stands for,
``recorded`` the first's time, a :data:`COUNT_EXTENSION` with the number of disclosures when
summarised as 164.528(b)(3) allows, and an entity per resource type disclosed). Every ledger
index is in an entity's ``detail`` (``ledger-index``) so each line can be checked against the
ledger. A suspension in force (164.528(a)(2)) is never mentioned. All ``fullUrl`` s are
``urn:uuid`` s derived from the patient, the time of the accounting and the position: the
same accounting renders the same bytes.
"""

from __future__ import annotations

import html
import uuid
from typing import Any

from middleware.audit.accounting import (
    ACT_REASON,
    EXEMPTIONS,
    Accounting,
    AccountingEntry,
    purpose_text,
)
from middleware.audit.alerts import LEDGER_INDEX_DETAIL
from middleware.audit.report_csv import rfc3339
from middleware.audit.reports import format_time

__all__ = ["COUNT_EXTENSION", "accounting_bundle", "left_out_text"]

Json = dict[str, Any]

#: Extension on an AuditEvent: how many disclosures a 164.528(b)(3) summary stands for.
COUNT_EXTENSION = "https://consentry.dev/fhir/StructureDefinition/disclosure-count"
_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_NS = uuid.UUID("6f1c2a52-8d7e-4b0a-9a43-3c0f5a1d2e77")
_XHTML = '<div xmlns="http://www.w3.org/1999/xhtml">{}</div>'


def _date(us: int) -> str:
    return format_time(us)[:10]


def left_out_text(accounting: Accounting) -> str:
    """One plain-language paragraph: what this accounting does not list, and why (the
    164.528(a)(1) exemptions applied, with counts; the shredded periods). Never mentions a
    164.528(a)(2) suspension."""
    parts = [
        f"{n} disclosure{'s' if n != 1 else ''} {EXEMPTIONS[cat][1]} ({EXEMPTIONS[cat][0]})"
        for cat, n in sorted(accounting.left_out.items())
    ]
    text = (
        "The law (45 CFR 164.528) does not require us to list some disclosures. "
        + ("We left out " + "; ".join(parts) + ". " if parts else "We left none out. ")
        + "Reads and changes by you, and requests that were refused, are not disclosures."
    )
    if accounting.shredded_periods:
        spans = ", ".join(
            f"{_date(p.start_us)} to {_date(p.end_us)}" for p in accounting.shredded_periods
        )
        text += (
            f" Records from {spans} were permanently erased under our retention rules; "
            "we can no longer tell what they said."
        )
    return text


def _who(reference: str) -> Json:
    if "#" in reference or "/" not in reference:
        issuer, _, subject = reference.rpartition("#")
        who: Json = {"identifier": {"value": subject or reference}}
        if issuer:
            who["identifier"]["system"] = issuer
        return who
    return {"reference": reference}


def _event(entry: AccountingEntry, patient: str, device_url: str) -> Json:
    first = entry.first
    r = first.recipient
    recipient_display = r.name if r.address is None else f"{r.name}, {r.address}"
    agents: list[Json] = []
    if r.agent is not None:
        agents.append({"who": {**_who(r.agent), "display": recipient_display}, "requestor": True})
    if r.organization is not None:
        agents.append({"who": _who(r.organization), "requestor": r.agent is None})
    if r.client is not None:
        agents.append(
            {
                "type": {"coding": [{"system": _DCM, "code": "110150", "display": "Application"}]},
                "who": {"identifier": {"value": r.client}},
                "requestor": False,
            }
        )
    if not agents:
        agents.append({"who": {"display": recipient_display}, "requestor": True})
    event: Json = {"resourceType": "AuditEvent"}
    if entry.summarised:
        event["extension"] = [{"url": COUNT_EXTENSION, "valueInteger": entry.count}]
    event.update(
        {
            "type": {"system": _DCM, "code": "110106", "display": "Export"},
            "action": "R",
            "period": {"start": rfc3339(first.recorded_us), "end": rfc3339(entry.last_us)},
            "recorded": rfc3339(first.recorded_us),
            "outcome": "0",
        }
    )
    if first.purposes:
        event["purposeOfEvent"] = [
            {"coding": [_coding(p)], "text": purpose_text(p)} for p in first.purposes
        ]
    event["agent"] = agents
    event["source"] = {"observer": {"reference": device_url}}
    entities: list[Json] = [
        {
            "what": {"reference": patient},
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "1",
                "display": "Person",
            },
            "role": {
                "system": "http://terminology.hl7.org/CodeSystem/object-role",
                "code": "1",
                "display": "Patient",
            },
            "detail": [{"type": LEDGER_INDEX_DETAIL, "valueString": str(i)} for i in entry.indexes],
        }
    ]
    entities.extend(
        {
            "type": {"system": "http://hl7.org/fhir/resource-types", "code": t, "display": t},
            "description": f"{t} resources",
        }
        for t in entry.resource_types
    )
    event["entity"] = entities
    return event


def _coding(purpose: str) -> Json:
    system, _, code = purpose.rpartition("|")
    coding: Json = {"system": system, "code": code} if system else {"code": code}
    if system == ACT_REASON:
        coding["display"] = purpose_text(purpose)
    return coding


def _row_html(entry: AccountingEntry) -> str:
    f = entry.first
    who = f.recipient.name + (f", {f.recipient.address}" if f.recipient.address else "")
    cells = [
        _date(f.recorded_us),
        who,
        ", ".join(entry.resource_types),
        f.purpose_text,
        f"{entry.count} times, last on {_date(entry.last_us)}" if entry.summarised else "once",
    ]
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def accounting_bundle(
    accounting: Accounting, *, gateway_name: str, patient_resource: Json | None = None
) -> Json:
    """The ``document`` Bundle of ``accounting`` (layout in the module docstring).

    A document includes every resource its Composition references
    (http://hl7.org/fhir/R4/composition.html: "any other resources referenced from Composition
    must be included"), so the patient is an entry: ``patient_resource`` when the caller has
    it (its ``id`` must be the accounting's patient; ValueError otherwise), else a Patient
    holding only that ``id``.
    """
    seed = f"{accounting.patient}|{accounting.as_of_us}"
    patient_id = accounting.patient.removeprefix("Patient/")
    if patient_resource is None:
        patient_resource = {"resourceType": "Patient", "id": patient_id}
    elif patient_resource.get("resourceType") != "Patient" or patient_resource.get("id") != (
        patient_id
    ):
        raise ValueError("patient_resource is not the accounting's patient")

    def url(n: int) -> str:
        return f"urn:uuid:{uuid.uuid5(_NS, f'{seed}|{n}')}"

    device_url, patient_url = url(1), url(2)
    events = [_event(e, patient_url, device_url) for e in accounting.entries]
    period = f"{_date(accounting.since_us)} to {_date(accounting.until_us)}"
    header = "<tr><th>Date</th><th>To whom</th><th>What</th><th>Why</th><th>How often</th></tr>"
    table = f"<p>Disclosures of your health information from {html.escape(period)}.</p>" + (
        "<table>" + header + "".join(_row_html(e) for e in accounting.entries) + "</table>"
        if accounting.entries
        else "<p>No disclosure needs to be listed for this period.</p>"
    )
    composition: Json = {
        "resourceType": "Composition",
        "status": "final",
        "type": {"text": "Accounting of disclosures (45 CFR 164.528)"},
        "subject": {"reference": patient_url},
        "date": rfc3339(accounting.as_of_us),
        "author": [{"reference": device_url, "display": gateway_name}],
        "title": f"Accounting of disclosures, {period}",
        "event": [
            {
                "period": {
                    "start": rfc3339(accounting.since_us),
                    "end": rfc3339(accounting.until_us),
                }
            }
        ],
        "section": [
            {
                "title": "Disclosures",
                "text": {"status": "generated", "div": _XHTML.format(table)},
                "entry": [{"reference": url(n)} for n in range(3, 3 + len(events))],
            },
            {
                "title": "What this accounting does not list",
                "text": {
                    "status": "generated",
                    "div": _XHTML.format(f"<p>{html.escape(left_out_text(accounting))}</p>"),
                },
            },
        ],
    }
    if not events:
        composition["section"][0]["emptyReason"] = {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/list-empty-reason",
                    "code": "nilknown",
                    "display": "Nil Known",
                }
            ]
        }
        del composition["section"][0]["entry"]
    device: Json = {
        "resourceType": "Device",
        "deviceName": [{"name": gateway_name, "type": "user-friendly-name"}],
    }
    entries = [
        {"fullUrl": url(0), "resource": composition},
        {"fullUrl": device_url, "resource": device},
        {"fullUrl": patient_url, "resource": patient_resource},
        *({"fullUrl": url(n), "resource": e} for n, e in enumerate(events, 3)),
    ]
    return {
        "resourceType": "Bundle",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": url(-1)},
        "type": "document",
        "timestamp": rfc3339(accounting.as_of_us),
        "entry": entries,
    }
