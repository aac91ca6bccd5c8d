"""Which FHIR version a Consent is written in, and whether its structure is valid there.

Version, in order of authority: the caller's explicit version (a setting or the endpoint's
``fhirVersion``), then a versioned ``meta.profile`` canonical (``...|4.0.1``, ``...|5.0.0``),
then the content. R4 and R5 Consents share few top-level elements
(http://hl7.org/fhir/R5/consent.html vs http://hl7.org/fhir/R4/consent.html): R4 has ``patient``,
``scope``, ``policyRule``, ``dateTime``, ``performer``, ``organization`` and one root
``provision`` object; R5 has ``decision``, ``subject``, ``grantor``, ``grantee``, ``controller``,
``manager``, ``date`` and a ``provision`` array. R4B's Consent has R4's shape, so R4 and R4B are
one version here, validated with ``fhir.resources.R4B``.

Structure is checked with the fhir.resources models; every error is reported, with a
FHIRPath-like location, and the model instance is thrown away (policies are built from the
submitted JSON, never from a re-serialisation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import pydantic
from fhir.resources.consent import Consent as ConsentR5
from fhir.resources.R4B.consent import Consent as ConsentR4B

from middleware.consent.model import FhirVersion

__all__ = ["detect_version", "normalize_version", "structure_problems"]

_R4_ONLY: Final = (
    "patient",
    "scope",
    "policyRule",
    "dateTime",
    "performer",
    "organization",
    "policy",
)
_R5_ONLY: Final = (
    "decision",
    "subject",
    "grantor",
    "grantee",
    "controller",
    "manager",
    "date",
    "regulatoryBasis",
    "policyBasis",
    "policyText",
)
_VERSIONS: Final[dict[str, FhirVersion]] = {
    "r4": "R4",
    "r4b": "R4",
    "4.0": "R4",
    "4.3": "R4",
    "r5": "R5",
    "5.0": "R5",
}


def normalize_version(version: str) -> FhirVersion | None:
    """Map ``R4``/``R4B``/``4.0.1``/``4.3.0``/``R5``/``5.0.0`` (any case) to R4 or R5, else None."""
    key = version.strip().lower()
    if key in _VERSIONS:
        return _VERSIONS[key]
    major_minor = ".".join(key.split(".")[:2])
    return _VERSIONS.get(major_minor) if major_minor[:1].isdigit() else None


def detect_version(
    raw: Mapping[str, Any], problems: list[str], *, version: str | None = None
) -> FhirVersion | None:
    """Return the Consent's FHIR version, or None after appending why it cannot be told.

    Raises ValueError if ``version`` is given but names no supported version: that is a
    configuration mistake, not a problem with the submitted Consent.
    """
    if version is not None:
        explicit = normalize_version(version)
        if explicit is None:
            raise ValueError(f"unsupported FHIR version {version!r}; use R4, R4B or R5")
        return explicit
    before = len(problems)
    by_profile = _version_from_profiles(raw, problems)
    if by_profile is not None or len(problems) > before:
        return by_profile
    r4 = [key for key in _R4_ONLY if key in raw]
    r5 = [key for key in _R5_ONLY if key in raw]
    provision = raw.get("provision")
    if isinstance(provision, Mapping):
        r4.append("provision (one object)")
    elif isinstance(provision, list):
        r5.append("provision (an array)")
    if r4 and r5:
        problems.append(
            f"Consent: mixes R4 elements ({', '.join(r4)}) with R5 elements ({', '.join(r5)})"
        )
        return None
    if r4 or r5:
        return "R4" if r4 else "R5"
    problems.append(
        "Consent: cannot tell R4 from R5; give a versioned meta.profile "
        "(http://hl7.org/fhir/StructureDefinition/Consent|4.0.1 or |5.0.0) or configure the version"
    )
    return None


def _version_from_profiles(raw: Mapping[str, Any], problems: list[str]) -> FhirVersion | None:
    meta = raw.get("meta")
    profiles = meta.get("profile") if isinstance(meta, Mapping) else None
    found: set[FhirVersion] = set()
    for profile in profiles if isinstance(profiles, list) else ():
        if isinstance(profile, str) and "|" in profile:
            named = normalize_version(profile.rsplit("|", 1)[1])
            if named is not None:
                found.add(named)
    if len(found) > 1:
        problems.append("Consent.meta.profile: names both R4 and R5 versions")
        return None
    return found.pop() if found else None


def structure_problems(raw: Mapping[str, Any], version: FhirVersion) -> list[str]:
    """Validate ``raw`` with the fhir.resources Consent model of ``version``; list every error."""
    model = ConsentR4B if version == "R4" else ConsentR5
    try:
        model.model_validate(dict(raw))
    except pydantic.ValidationError as exc:
        return [f"{_location(err['loc'])}: {' '.join(err['msg'].split())}" for err in exc.errors()]
    return []


def _location(loc: tuple[int | str, ...]) -> str:
    path = "Consent"
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += "." + ("resourceType" if part == "resource_type" else part)
    return path
