"""A best-effort :class:`~middleware.consent.request.ResourceSummary` of a FHIR resource (R4 or R5).

The pipeline should pass ``patients`` from the patient compartment definition
(http://hl7.org/fhir/R4/compartmentdefinition-patient.html); without it, the usual patient
elements (``subject``, ``patient``, ``beneficiary``; the Patient itself) are used. The clinical
date is the first present of the elements in ``_DATE_ELEMENTS`` (its lower bound: ``2020-05``
counts as 2020-05-01T00:00Z); codes come from the top-level ``code``/``type``/``category``-like
elements; every literal reference anywhere in the resource lands in ``references``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, Final, NamedTuple

from middleware.consent.fhirtime import bounds
from middleware.consent.model import Coding, canonical_labels, normalize_reference
from middleware.consent.reads import EVERYTHING, Reads
from middleware.consent.request import ResourceSummary

__all__ = ["INLINE_LABEL_URL", "Facts", "facts", "summarize"]

#: What the walk descends into (a tuple, not ``dict | list``: this runs on every node).
_NODES: Final = (dict, list)
#: HL7 DS4P inline security label extension (labels an element, not the whole resource).
INLINE_LABEL_URL: Final = (
    "http://hl7.org/fhir/uv/security-label-ds4p/StructureDefinition/extension-inline-sec-label"
)

_CODE_ELEMENTS: Final = (
    "code",
    "type",
    "category",
    "class",
    "vaccineCode",
    "medicationCodeableConcept",
)
_DATE_ELEMENTS: Final = (
    ("effectiveDateTime", None),
    ("effectiveInstant", None),
    ("effectivePeriod", "start"),
    ("occurrenceDateTime", None),
    ("occurrencePeriod", "start"),
    ("performedDateTime", None),
    ("performedPeriod", "start"),
    ("onsetDateTime", None),
    ("recordedDate", None),
    ("authoredOn", None),
    ("issued", None),
    ("period", "start"),
    ("date", None),
    ("created", None),
)
_AUTHOR_ELEMENTS: Final = ("author", "recorder", "asserter", "requester")
_PATIENT_ELEMENTS: Final = ("subject", "patient", "beneficiary")


class Facts(NamedTuple):
    """The fields of a :class:`~middleware.consent.request.ResourceSummary`, in its order:
    what :class:`~middleware.consent.decisions.Decider` keys on, turned into a summary
    (``ResourceSummary(*facts)``) only when a decision must be made."""

    resource_type: str
    id: str | None
    patients: frozenset[str]
    codes: frozenset[Coding]
    security_labels: frozenset[Coding]
    profiles: frozenset[str]
    clinical_date: datetime | None
    authors: frozenset[str]
    references: frozenset[str]
    referenced_by: frozenset[str]
    source: Mapping[str, Any] | None = None


_NONE: Final[frozenset[Any]] = frozenset()


def summarize(
    resource: Mapping[str, Any],
    *,
    patients: Iterable[str] | None = None,
    referenced_by: Iterable[str] = (),
    walk: bool = True,
    reads: Reads = EVERYTHING,
) -> ResourceSummary:
    """Summarise ``resource`` for :func:`~middleware.consent.decide.decide`. Pure.

    ``walk=False`` skips the walk over every element that collects ``references`` and inline
    security labels: for a caller that knows the resource holds no inline label and that no
    consent it decides against reads ``references`` (``provision.data`` meaning dependents).
    ``reads`` names what the consents decided against can read
    (:func:`~middleware.consent.reads.reads_of`): codes, profiles, the clinical date and the
    ``data`` attributes (id, authors, references, referrers) nobody reads are left empty,
    which changes no decision against those consents (the resource itself is kept only for a
    ``provision.expression``). Type, patients and security labels
    are always summarised.
    """
    found = facts(resource, patients=patients, referenced_by=referenced_by, walk=walk, reads=reads)
    return ResourceSummary(*found)


def facts(
    resource: Mapping[str, Any],
    *,
    patients: Iterable[str] | None = None,
    referenced_by: Iterable[str] = (),
    walk: bool = True,
    reads: Reads = EVERYTHING,
) -> Facts:
    """What :func:`summarize` would summarise, as :class:`Facts` (same arguments)."""
    resource_type = str(resource.get("resourceType", ""))
    resource_id = resource.get("id")
    meta = resource.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    found_refs: list[str] = []
    inline: list[Coding] = []
    if walk:
        _walk(resource, found_refs, inline)
    if patients is None:
        found = {
            r
            for key in _PATIENT_ELEMENTS
            for r in _refs_of(resource.get(key))
            if r.startswith("Patient/")
        }
        if resource_type == "Patient" and isinstance(resource_id, str):
            found.add(f"Patient/{resource_id}")
        patients = found
    data = reads.data
    labels = (*_codings(meta.get("security")), *inline)
    return Facts(
        resource_type,
        resource_id if data and isinstance(resource_id, str) else None,
        frozenset(patients),
        _codes(resource) if reads.codes else _NONE,
        # Label systems made canonical here, once: decide() compares them with sets.
        canonical_labels(labels) if labels else _NONE,
        _profiles(meta) if reads.profiles else _NONE,
        _clinical_date(resource) if reads.clinical_date else None,
        frozenset(r for key in _AUTHOR_ELEMENTS for r in _refs_of(resource.get(key)))
        if data
        else _NONE,
        frozenset(normalize_reference(r) for r in found_refs) if data else _NONE,
        frozenset(normalize_reference(r) for r in referenced_by) if data else _NONE,
        resource if reads.expression else None,
    )


def _codes(resource: Mapping[str, Any]) -> frozenset[Coding]:
    return frozenset(coding for key in _CODE_ELEMENTS for coding in _codings(resource.get(key)))


def _profiles(meta: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(p for p in meta.get("profile", ()) if isinstance(p, str))


def _codings(value: object) -> Iterator[Coding]:
    """Codings of a Coding, a CodeableConcept, or a list of either."""
    for item in value if isinstance(value, list) else (value,):
        if not isinstance(item, dict):
            continue
        inner = item.get("coding")
        for coding in inner if isinstance(inner, list) else (item,):
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                system = coding.get("system")
                yield (system if isinstance(system, str) else ""), coding["code"]


def _refs_of(value: object) -> Iterator[str]:
    """Normalised literal references of a Reference or a list of References."""
    for item in value if isinstance(value, list) else (value,):
        if isinstance(item, dict) and isinstance(item.get("reference"), str):
            yield normalize_reference(item["reference"])


def _walk(value: object, references: list[str], inline: list[Coding]) -> None:
    """Collect the literal references and the DS4P inline security labels (extension
    ``extension-inline-sec-label`` on any element: the element is as sensitive as its label,
    so a permit must cover it too) of one resource, contained resources excluded."""
    # ``dict`` rather than ``Mapping``: this walks every node of every resource, and decoded
    # JSON is made of dicts; an ABC isinstance check costs several times a concrete one.
    if isinstance(value, dict):
        if value.get("url") == INLINE_LABEL_URL:
            inline.extend(_codings(value.get("valueCoding")))
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                references.append(item)
            elif key != "contained" and isinstance(item, _NODES):
                _walk(item, references, inline)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, _NODES):
                _walk(item, references, inline)


def _clinical_date(resource: Mapping[str, Any]) -> datetime | None:
    for key, part in _DATE_ELEMENTS:
        value = resource.get(key)
        if part is not None:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str) and (interval := bounds(value)) is not None:
            return interval[0]
    return None
