"""Labels on data: purpose-of-use labels and 42 CFR Part 2 data (HL7 FHIR DS4P). Pure.

Two rules about a resource's own resource-level labels (``meta.security``), applied by the
enforcer (:class:`~middleware.pipeline.judge.Judge`) to every resource it releases:

**Purpose of use.** HL7 DS4P, "Detailed Specification", "Security Control" tag sets: a
Purpose of Use label (a code of the v3 PurposeOfUse value set, code system v3-ActReason) on a
resource conveys the reasons the information may be used for. A resource carrying one or more
such codes is released only to a caller whose purposes of use (the token's, see
:mod:`middleware.auth.identity`) include one of them *or a specialisation of one*: a label
``TREAT`` admits a caller asking for ``ETREAT`` (emergency treatment is a kind of treatment),
a label ``ETREAT`` does not admit a caller asking only for ``TREAT``. A caller with no purpose
of use gets no such resource. The hierarchy is :data:`PURPOSE_PARENT`, kept as data.

**42 CFR Part 2.** A resource labelled with one of :attr:`LabelRules.part2` (always the v3
ActCode privacy law code ``42CFRPart2``; a deployment adds the sensitivity codes it treats as
Part 2 data, e.g. ``SUD``, ``ETH``) is Part 2 data. 42 CFR 2.31 asks for a written consent
that names the information to be disclosed, so a general permit does not reach it: the
consent decision counts these labels as sensitive (:func:`~middleware.consent.decide.decide`,
"Sensitive data needs explicit consent": only a permitting provision, or an ancestor of it,
whose ``securityLabel`` names the label releases it). When Part 2 data is released
:func:`mark_part2` labels it with the DS4P refrain code ``NORDSCLCD`` (v3 ActCode, "no
redisclosure without consent directive"; DS4P "Security Control", Refrain tag set) and
carries the 42 CFR 2.32 notice on the resource itself, in the DS4P Display extension on
``Resource.meta`` (DS4P "Extensions Summary": a marking to show whenever the resource is
rendered). The notice goes on each resource, never on a Bundle: DS4P keeps privacy-revealing
refrain tags out of a Bundle's high-water-mark labels, and the resource is what a client keeps.

Codes compare by system and code, every alias of a v3 code system (the retired
``http://hl7.org/fhir/v3/...`` URLs, the HL7 OIDs) read as that code system
(:func:`~middleware.consent.model.canonical_system`, the one place). A Part 2 code with no
system (``{"code": "42CFRPart2"}``) is Part 2 data: a label that may mean it is treated as if
it did. What cannot be read is not vouched for: a ``meta.security`` that is not a list
withholds the resource. Labels of ``contained`` resources roll up to their container
(:func:`screen_resource`, :func:`contained_labels`): the container is what is released.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, Final

from middleware.consent.model import Coding
from middleware.consent.model import canonical_system as _system
from middleware.consent.summary import INLINE_LABEL_URL

__all__ = [
    "ACT_CODE",
    "ACT_REASON",
    "DEFAULT_IGNORED_PURPOSES",
    "DEFAULT_LABEL_RULES",
    "DEFAULT_PART2_NOTICE",
    "DISPLAY_URL",
    "PART2",
    "PURPOSE_PARENT",
    "REFRAIN",
    "LabelRules",
    "Screen",
    "contained_labels",
    "has_part2_inline",
    "mark_part2",
    "meta_list",
    "parse_labels",
    "purpose_refusal",
    "purposes_admit",
    "relabelling_refused",
    "screen",
    "screen_resource",
]

ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
#: How deep ``contained`` is followed (FHIR R4 references.html#contained: a contained resource
#: SHALL NOT contain others; deeper nesting is withheld, not read).
_MAX_CONTAINED: Final = 4


def _coding(coding: dict[str, Any]) -> Coding | None:
    """A label as ``(system, code)``, its system canonical; a code with no system has the
    system ``""`` (see :meth:`LabelRules.is_part2`)."""
    system, code = coding.get("system", ""), coding.get("code")
    if not isinstance(system, str) or not isinstance(code, str):
        return None
    return _system(system), code


#: v3 ActCode ``42CFRPart2`` (ActUSPrivacyLaw): the information falls under 42 CFR Part 2.
PART2: Final[Coding] = (ACT_CODE, "42CFRPart2")
#: v3 ActCode ``NORDSCLCD`` (RefrainPolicy): no redisclosure without consent directive.
REFRAIN: Final[Coding] = (ACT_CODE, "NORDSCLCD")
_REFRAIN_DISPLAY: Final = "no redisclosure without consent directive"
#: DS4P 1.0.0 Display extension (context ``Resource.meta``, ``valueAnnotation``).
DISPLAY_URL: Final = (
    "http://hl7.org/fhir/uv/security-label-ds4p/StructureDefinition/extension-display"
)
#: The abbreviated notice 42 CFR 2.32(a)(2) allows to accompany a disclosure.
DEFAULT_PART2_NOTICE: Final = (
    "42 CFR part 2 prohibits unauthorized use or disclosure of these records."
)

#: The v3 PurposeOfUse hierarchy: each code to the code it specialises (None: a top-level
#: purpose). HL7 Terminology, CodeSystem v3-ActReason version 2018-08-12 (the one FHIR R4
#: ships), the concepts under the abstract ``PurposeOfUse``.
PURPOSE_PARENT: Final[Mapping[str, str | None]] = MappingProxyType(
    {
        "HMARKT": None,
        "HOPERAT": None,
        "CAREMGT": "HOPERAT", "DONAT": "HOPERAT", "FRAUD": "HOPERAT", "GOV": "HOPERAT",
        "HACCRED": "HOPERAT", "HCOMPL": "HOPERAT", "HDECD": "HOPERAT", "HDIRECT": "HOPERAT",
        "HDM": "HOPERAT", "HLEGAL": "HOPERAT", "HOUTCOMS": "HOPERAT", "HPRGRP": "HOPERAT",
        "HQUALIMP": "HOPERAT", "HSYSADMIN": "HOPERAT", "MEMADMIN": "HOPERAT",
        "MILCDM": "HOPERAT", "PATADMIN": "HOPERAT", "PATSFTY": "HOPERAT",
        "PERFMSR": "HOPERAT", "RECORDMGT": "HOPERAT", "SYSDEV": "HOPERAT", "TRAIN": "HOPERAT",
        "LABELING": "HSYSADMIN", "METAMGT": "HSYSADMIN",
        "HTEST": "SYSDEV",
        "HPAYMT": None,
        "CLMATTCH": "HPAYMT", "COVAUTH": "HPAYMT", "COVERAGE": "HPAYMT", "REMITADV": "HPAYMT",
        "ELIGDTRM": "COVERAGE", "ELIGVER": "COVERAGE", "ENROLLM": "COVERAGE",
        "MILDCRG": "COVERAGE",
        "HRESCH": None,
        "BIORCH": "HRESCH", "CLINTRCH": "HRESCH", "DSRCH": "HRESCH", "POARCH": "HRESCH",
        "TRANSRCH": "HRESCH",
        "CLINTRCHNPC": "CLINTRCH", "CLINTRCHPC": "CLINTRCH", "PRECLINTRCH": "CLINTRCH",
        "PATRQT": None,
        "FAMRQT": "PATRQT", "PWATRNY": "PATRQT", "SUPNWK": "PATRQT",
        "PUBHLTH": None,
        "DISASTER": "PUBHLTH", "THREAT": "PUBHLTH",
        "TREAT": None,
        "CLINTRL": "TREAT", "COC": "TREAT", "ETREAT": "TREAT", "POPHLTH": "TREAT",
        "BTG": "ETREAT", "ERTREAT": "ETREAT",
    }
)  # fmt: skip


def _lineage(code: str) -> frozenset[str]:
    """``code`` and every purpose it specialises."""
    found: list[str] = []
    at: str | None = code
    while at is not None:
        found.append(at)
        at = PURPOSE_PARENT[at]
    return frozenset(found)


#: Each purpose with the purposes it specialises, made once.
_LINEAGE: Final = MappingProxyType({code: _lineage(code) for code in PURPOSE_PARENT})


#: Purpose-of-use labels not enforced unless a deployment says otherwise (:class:`LabelRules`).
DEFAULT_IGNORED_PURPOSES: Final = frozenset({"HTEST"})


@dataclass(frozen=True, slots=True)
class LabelRules:
    """What counts as 42 CFR Part 2 data, the notice its disclosure carries, and the
    purpose-of-use labels that restrict nothing.

    ``part2`` always holds :data:`PART2`; ``notice`` must not be blank; ``ignored_purposes``
    are v3-ActReason codes of :data:`PURPOSE_PARENT` (ValueError otherwise)."""

    part2: frozenset[Coding] = frozenset({PART2})
    notice: str = DEFAULT_PART2_NOTICE
    #: Purpose-of-use codes read as tags, not as restrictions: ``HTEST`` marks test data
    #: (synthetic data sets label every record with it); enforced, it would keep every such
    #: record from any caller that does not claim to be testing.
    ignored_purposes: frozenset[str] = DEFAULT_IGNORED_PURPOSES
    #: The codes of ``part2``: a label with one of them and no system is Part 2 data.
    part2_codes: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.notice.strip():
            raise ValueError("the 42 CFR Part 2 notice must not be blank")
        part2 = frozenset((_system(s), c) for s, c in self.part2) | {PART2}
        object.__setattr__(self, "part2", part2)
        object.__setattr__(self, "part2_codes", frozenset(c for _, c in part2))
        unknown = sorted(self.ignored_purposes - PURPOSE_PARENT.keys())
        if unknown:
            raise ValueError(f"not purpose-of-use codes: {', '.join(unknown)}")

    def is_part2(self, label: Coding) -> bool:
        """Whether ``label`` (system canonical) names Part 2 data: one of :attr:`part2`, or
        one of their codes with no system (what may mean Part 2 is treated as Part 2)."""
        return label in self.part2 or (not label[0] and label[1] in self.part2_codes)


DEFAULT_LABEL_RULES: Final = LabelRules()
"""Part 2 data is what carries ``42CFRPart2``; the notice is :data:`DEFAULT_PART2_NOTICE`."""


def parse_labels(text: str) -> frozenset[Coding]:
    """``system|code`` or bare codes (v3 ActCode), comma-separated, as codings; ValueError
    for an empty system or code."""
    found: set[Coding] = set()
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        system, bar, code = item.rpartition("|")
        if bar and not system:
            raise ValueError(f"label {item!r} has an empty system")
        if not code:
            raise ValueError(f"label {item!r} has no code")
        found.add((_system(system) if bar else ACT_CODE, code))
    return frozenset(found)


class Screen(Enum):
    """What a resource's labels say about releasing it to a caller."""

    RELEASE = "release"  # nothing in the labels stands in the way
    PART2 = "part2"  # Part 2 data: released only on an explicit consent, then marked
    WITHHOLD = "withhold"  # purpose-of-use labels the caller's purposes do not meet


def screen(
    security: Any, purposes: frozenset[Coding], rules: LabelRules, *, by_purpose: bool = True
) -> Screen:
    """The verdict of ``security`` (a resource's ``meta.security``, as received) for a caller
    with ``purposes``. Codings that are not objects with string system and code are ignored
    (they label nothing the gateway can read), and so are purpose labels in
    ``rules.ignored_purposes``, or all of them when not ``by_purpose`` (the patient reading
    their own record: 45 CFR 164.524 gives the individual access whatever the uses the
    information is labelled for). No labels (None) release; labels that are not a list
    withhold (fail closed). A Part 2 code with no system is Part 2."""
    if security is None:
        return Screen.RELEASE
    if not isinstance(security, list):
        return Screen.WITHHOLD
    labelled: set[str] = set()
    part2 = False
    for coding in security:
        if not isinstance(coding, dict):
            continue
        system, code = coding.get("system", ""), coding.get("code")
        if not isinstance(system, str) or not isinstance(code, str):
            continue
        system = _system(system)
        if system == ACT_REASON and code in PURPOSE_PARENT:
            if by_purpose and code not in rules.ignored_purposes:
                labelled.add(code)
        elif rules.is_part2((system, code)):
            part2 = True
    if labelled and not purposes_admit(labelled, purposes):
        return Screen.WITHHOLD
    return Screen.PART2 if part2 else Screen.RELEASE


def screen_resource(
    resource: Mapping[str, Any],
    purposes: frozenset[Coding],
    rules: LabelRules,
    *,
    by_purpose: bool = True,
    depth: int = 0,
) -> Screen:
    """:func:`screen` of ``resource``'s own labels rolled up with those of each of its
    ``contained`` resources: withheld when any of them is withheld, Part 2 when any is Part 2
    (the contained resource is released inside its container). A ``contained`` that is not a
    list, or nesting past :data:`_MAX_CONTAINED`, withholds (what cannot be read is not
    vouched for). For a resource with neither, two dict lookups."""
    if depth > _MAX_CONTAINED:
        return Screen.WITHHOLD
    meta = resource.get("meta")
    verdict = Screen.RELEASE
    if isinstance(meta, dict) and "security" in meta:
        verdict = screen(meta["security"], purposes, rules, by_purpose=by_purpose)
        if verdict is Screen.WITHHOLD:
            return verdict
    contained = resource.get("contained")
    if contained is None:
        return verdict
    if not isinstance(contained, list):
        return Screen.WITHHOLD
    for inner in contained:
        if not isinstance(inner, dict):
            continue
        found = screen_resource(inner, purposes, rules, by_purpose=by_purpose, depth=depth + 1)
        if found is Screen.WITHHOLD:
            return found
        if found is Screen.PART2:
            verdict = found
    return verdict


def contained_labels(resource: Mapping[str, Any], depth: int = 0) -> frozenset[Coding]:
    """The resource-level labels of ``resource``'s contained resources (systems canonical),
    to roll up into the container's for the consent decision: a permit must cover sensitive
    data wherever in the released resource it sits."""
    contained = resource.get("contained")
    if not isinstance(contained, list) or depth > _MAX_CONTAINED:
        return frozenset()
    found: set[Coding] = set()
    for inner in contained:
        if not isinstance(inner, dict):
            continue
        meta = inner.get("meta")
        security = meta.get("security") if isinstance(meta, dict) else None
        for coding in security if isinstance(security, list) else ():
            if isinstance(coding, dict) and (label := _coding(coding)) is not None:
                found.add(label)
        found |= contained_labels(inner, depth + 1)
    return frozenset(found)


def _restricting(resource: Mapping[str, Any], rules: LabelRules) -> set[Coding]:
    """The purpose-of-use and Part 2 labels of ``resource`` itself (systems canonical)."""
    meta = resource.get("meta")
    security = meta.get("security") if isinstance(meta, dict) else None
    found: set[Coding] = set()
    for coding in security if isinstance(security, list) else ():
        label = _coding(coding) if isinstance(coding, dict) else None
        if label is None:
            continue
        system, code = label
        purpose = system == ACT_REASON and code in PURPOSE_PARENT
        if (purpose and code not in rules.ignored_purposes) or rules.is_part2(label):
            found.add(label)
    return found


def relabelling_refused(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    purposes: frozenset[Coding],
    rules: LabelRules,
) -> bool:
    """Whether a write turning ``before`` into ``after`` removes (or changes, which removes
    one) a purpose-of-use or 42 CFR Part 2 label while the caller does not state the purpose
    ``LABELING`` (v3-ActReason: "to assign, persist, review, modify, or remove security
    labels"): the write would release the record to callers the label keeps it from, so only
    a caller acting to relabel may (a caller the label admits could otherwise strip it, by a
    ``PUT`` without ``meta``, and open the record to everyone). Adding labels is not refused
    (it only narrows who sees the record)."""
    removed = _restricting(before, rules) - _restricting(after, rules)
    return bool(removed) and (ACT_REASON, "LABELING") not in {
        (_system(system), code) for system, code in purposes
    }


def purposes_admit(labelled: Iterable[str], purposes: frozenset[Coding]) -> bool:
    """Whether some caller purpose (v3-ActReason) is one of the ``labelled`` purpose codes or
    specialises one (:data:`PURPOSE_PARENT`)."""
    wanted = frozenset(labelled)
    for system, code in purposes:
        lineage = _LINEAGE.get(code)
        if lineage is not None and _system(system) == ACT_REASON and not lineage.isdisjoint(wanted):
            return True
    return False


def purpose_refusal(
    resource: Mapping[str, Any], purposes: frozenset[Coding], rules: LabelRules
) -> str | None:
    """Why ``resource`` is withheld for ``purposes`` by its purpose-of-use labels (``rules``:
    the deployment's), its own or a contained resource's, as a trace reason (for
    ``Consent/$explain``), or None when they do not withhold it."""
    if screen_resource(resource, purposes, rules) is not Screen.WITHHOLD:
        return None
    meta = resource.get("meta")
    security = meta.get("security") if isinstance(meta, Mapping) else None
    if not isinstance(security, list):
        return "deny: security labels that cannot be read"
    codes = sorted(
        {
            c["code"]
            for c in security
            if isinstance(c, dict)
            and isinstance(c.get("system"), str)
            and _system(c["system"]) == ACT_REASON
            and c.get("code") in PURPOSE_PARENT
            and c.get("code") not in rules.ignored_purposes
        }
    )
    if not codes:
        return "deny: a contained resource's labels withhold it"
    return (
        f"deny: labelled for the purposes of use {', '.join(codes)}; no purpose asked is one"
        " of them or a specialisation of one"
    )


def has_part2_inline(node: Any, rules: LabelRules, depth: int = 0) -> bool:
    """Whether a DS4P inline security label (``extension-inline-sec-label``) anywhere in
    ``node`` names Part 2 data. Past 200 levels: True (what cannot be read is not vouched
    for)."""
    if depth > 200:
        return True
    if isinstance(node, list):
        return any(has_part2_inline(item, rules, depth + 1) for item in node)
    if not isinstance(node, dict):
        return False
    for key, value in node.items():
        if key in ("extension", "modifierExtension") and isinstance(value, list):
            for ext in value:
                if isinstance(ext, dict) and ext.get("url") == INLINE_LABEL_URL:
                    coding = ext.get("valueCoding")
                    label = _coding(coding) if isinstance(coding, dict) else None
                    if label is not None and rules.is_part2(label):
                        return True
        if isinstance(value, dict | list) and has_part2_inline(value, rules, depth + 1):
            return True
    return False


def meta_list(resource: dict[str, Any], key: str) -> list[Any]:
    """The list ``resource.meta[key]`` (``security``, ``extension``), made in place when
    ``meta`` or the list is absent or not of its JSON type, so a label can be appended."""
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        meta = resource["meta"] = {}
    found = meta.get(key)
    if not isinstance(found, list):
        found = meta[key] = []
    return found


def mark_part2(resource: dict[str, Any], rules: LabelRules) -> None:
    """Add, in place and once each, the refrain label :data:`REFRAIN` to ``meta.security``
    and the notice in a DS4P Display extension on ``meta`` (see the module docstring)."""
    security = meta_list(resource, "security")
    if not any(isinstance(c, dict) and _coding(c) == REFRAIN for c in security):
        security.append({"system": REFRAIN[0], "code": REFRAIN[1], "display": _REFRAIN_DISPLAY})
    extensions = meta_list(resource, "extension")
    note = {"url": DISPLAY_URL, "valueAnnotation": {"text": rules.notice}}
    if note not in extensions:
        extensions.append(note)
