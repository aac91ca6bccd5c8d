"""The portal's few plain choices, and the Consent they make (pure: no I/O).

A patient picks who (a practitioner, an organization, or everyone), allow or refuse, what
(all records, or some kinds of records and sensitivity labels), for what purpose, and until
when. :func:`read_choices` checks a submitted form; :func:`build_consent` makes the FHIR R4
Consent that says exactly that and nothing more: no ``policyRule``, one ``provision`` whose
``type`` is the choice, so the consent speaks only about the party and records chosen and
leaves everything else to the patient's other consents and the jurisdiction's default
(:mod:`middleware.consent.parse` reads such a root as "no base decision").
:func:`choices_of` reads a consent of that shape back, to pre-fill the change form.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Final, Literal

__all__ = [
    "LABEL_CHOICES",
    "PURPOSE_CHOICES",
    "Choices",
    "build_consent",
    "choices_of",
    "read_choices",
]

_ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_CONFIDENTIALITY: Final = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
_ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
_RESOURCE_TYPES: Final = "http://hl7.org/fhir/resource-types"
_PARTICIPATION: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
#: A FHIR id, never only dots (a reference ``Practitioner/..`` names nobody).
_FHIR_ID: Final = re.compile(r"(?!\.+$)[A-Za-z0-9\-.]{1,64}")
_DAY: Final = re.compile(r"\d{4}-\d{2}-\d{2}")

#: The sensitivity labels offered, with their code systems.
LABEL_CHOICES: Final = {
    "PSY": _ACT_CODE,
    "ETH": _ACT_CODE,
    "HIV": _ACT_CODE,
    "SDV": _ACT_CODE,
    "SEX": _ACT_CODE,
    "GDIS": _ACT_CODE,
    "R": _CONFIDENTIALITY,
    "V": _CONFIDENTIALITY,
}
#: The purposes offered (v3 ActReason); "" is any purpose.
PURPOSE_CHOICES: Final = ("TREAT", "ETREAT", "HPAYMT", "HOPERAT", "HRESCH", "PUBHLTH")
#: The kinds of records offered (FHIR resource types).
KIND_CHOICES: Final = (
    "Observation",
    "Condition",
    "MedicationRequest",
    "Immunization",
    "AllergyIntolerance",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "Procedure",
)

Who = Literal["practitioner", "organization", "everyone"]
_WHO_TYPES: Final[dict[str, str]] = {"practitioner": "Practitioner", "organization": "Organization"}


@dataclass(frozen=True, slots=True)
class Choices:
    """One consent's choices (module docstring). ``who_id`` is empty for everyone; ``kinds``
    and ``labels`` empty mean all records; ``purpose`` empty means any; ``until`` is a day
    (``YYYY-MM-DD``, included) or empty."""

    decision: Literal["permit", "deny"]
    who: Who
    who_id: str = ""
    kinds: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    purpose: str = ""
    until: str = ""

    def fields(self) -> list[tuple[str, str]]:
        """The form fields that submit these choices again (the confirmation page's)."""
        out = [("decision", self.decision), ("who", self.who), ("who_id", self.who_id)]
        out.append(("what", "some" if self.kinds or self.labels else "all"))
        out += [("kind", k) for k in self.kinds] + [("label", lab) for lab in self.labels]
        out += [("purpose", self.purpose), ("until", self.until)]
        return out


def read_choices(form: Mapping[str, Any], today: date) -> tuple[Choices | None, list[str]]:
    """The choices in a submitted ``form`` (``getlist`` for the repeated ``kind`` and
    ``label``), or None and the catalog keys of the problems found."""
    problems: list[str] = []
    decision = _one(form, "decision")
    if decision not in ("permit", "deny"):
        problems.append("choose.problem.decision")
    who = _one(form, "who")
    who_id = _one(form, "who_id").strip()
    if who not in ("practitioner", "organization", "everyone"):
        problems.append("choose.problem.who")
    elif who != "everyone" and not _FHIR_ID.fullmatch(who_id):
        problems.append("choose.problem.who_id")
    kinds: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    if _one(form, "what") == "some":
        kinds = tuple(k for k in KIND_CHOICES if k in _many(form, "kind"))
        labels = tuple(lab for lab in LABEL_CHOICES if lab in _many(form, "label"))
        unknown = set(_many(form, "kind")) - set(kinds) or set(_many(form, "label")) - set(labels)
        if unknown or not (kinds or labels):
            problems.append("choose.problem.what")
    elif _one(form, "what") != "all":
        problems.append("choose.problem.what")
    purpose = _one(form, "purpose")
    if purpose and purpose not in PURPOSE_CHOICES:
        problems.append("choose.problem.purpose")
    until = _one(form, "until").strip()
    if until:
        try:
            day = date.fromisoformat(until) if _DAY.fullmatch(until) else None
        except ValueError:
            day = None
        if day is None or day < today:
            problems.append("choose.problem.until")
    if problems:
        return None, problems
    return (
        Choices(
            decision="permit" if decision == "permit" else "deny",
            who="practitioner"
            if who == "practitioner"
            else "organization"
            if who == "organization"
            else "everyone",
            who_id="" if who == "everyone" else who_id,
            kinds=kinds,
            labels=labels,
            purpose=purpose,
            until=until,
        ),
        [],
    )


def _one(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name, "")
    return value if isinstance(value, str) else ""


def _many(form: Mapping[str, Any], name: str) -> Sequence[str]:
    getlist = getattr(form, "getlist", None)
    values = getlist(name) if getlist is not None else form.get(name, [])
    if isinstance(values, str):
        values = [values]
    return [v for v in values if isinstance(v, str)]


def build_consent(
    choices: Choices, patient: str, today: date, *, consent_id: str | None = None
) -> dict[str, Any]:
    """The R4 Consent of ``patient`` (``Patient/<id>``) saying ``choices`` (module
    docstring); with ``consent_id`` for a change of that consent."""
    provision: dict[str, Any] = {"type": choices.decision}
    if choices.until:
        provision["period"] = {"start": today.isoformat(), "end": choices.until}
    if choices.who != "everyone":
        reference = f"{_WHO_TYPES[choices.who]}/{choices.who_id}"
        role = {"coding": [{"system": _PARTICIPATION, "code": "IRCP"}]}
        provision["actor"] = [{"role": role, "reference": {"reference": reference}}]
    if choices.kinds:
        provision["class"] = [{"system": _RESOURCE_TYPES, "code": k} for k in choices.kinds]
    if choices.labels:
        provision["securityLabel"] = [
            {"system": LABEL_CHOICES[lab], "code": lab} for lab in choices.labels
        ]
    if choices.purpose:
        provision["purpose"] = [{"system": _ACT_REASON, "code": choices.purpose}]
    consent: dict[str, Any] = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": patient},
        "dateTime": today.isoformat(),
        "provision": provision,
    }
    if consent_id is not None:
        consent = {"resourceType": "Consent", "id": consent_id, **consent}
    return consent


def choices_of(consent: Mapping[str, Any]) -> Choices | None:
    """The choices a consent of :func:`build_consent`'s shape says, else None."""
    try:
        return _choices_of(consent)
    except (AttributeError, TypeError):  # a shape of someone else's making
        return None


def _choices_of(consent: Mapping[str, Any]) -> Choices | None:
    provision = consent.get("provision")
    if "policyRule" in consent or not isinstance(provision, Mapping):
        return None
    if provision.get("provision") or provision.get("type") not in ("permit", "deny"):
        return None
    form: dict[str, Any] = {"decision": provision["type"], "who": "everyone", "what": "all"}
    actors = provision.get("actor") or []
    if len(actors) > 1:
        return None
    if actors:
        ref = str(((actors[0] or {}).get("reference") or {}).get("reference", ""))
        kind, _, ident = ref.partition("/")
        who = {"Practitioner": "practitioner", "Organization": "organization"}.get(kind)
        if who is None:
            return None
        form.update(who=who, who_id=ident)
    kinds = [str(c.get("code", "")) for c in provision.get("class") or []]
    labels = [str(c.get("code", "")) for c in provision.get("securityLabel") or []]
    if kinds or labels:
        form.update(what="some", kind=kinds, label=labels)
    purposes = [str(c.get("code", "")) for c in provision.get("purpose") or []]
    if len(purposes) > 1:
        return None
    form["purpose"] = purposes[0] if purposes else ""
    form["until"] = str((provision.get("period") or {}).get("end", ""))
    found, problems = read_choices(form, date.min)
    return found if not problems else None
