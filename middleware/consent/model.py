"""The internal, frozen policy model that FHIR R4/R4B and R5 Consents are compiled into.

One :class:`Policy` per Consent. Its ``root`` is a :class:`Provision` tree whose every node carries
its *resolved* effect (``permit`` / ``deny``): the R4 and R5 ways of saying "this node flips its
parent" are settled once, at parse time (see :mod:`middleware.consent.parse`), so the decision
loop never looks at FHIR versions. Everything the loop tests is a ``frozenset`` built here, once.

Matching vocabulary (http://hl7.org/fhir/R5/consent.html#provisions, "Provisions"):

* attributes of one provision are AND-ed; the values of one multi-valued attribute are OR-ed;
  an empty attribute places no condition ("meaningWhenMissing: all actions", "There is no
  specific actor associated with the exception");
* a coding is ``(system, code)``; a coding written without a system is kept as ``("", code)``
  and matches that code in any system.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Final, Literal

from middleware.consent.expression import CompiledExpression

__all__ = [
    "CONFIDENTIALITY_RANK",
    "CONFIDENTIALITY_SYSTEMS",
    "DENY",
    "PERMIT",
    "UNLABELLED_RANK",
    "Actor",
    "Coding",
    "CodingSet",
    "DataRef",
    "Effect",
    "FhirVersion",
    "Meaning",
    "Period",
    "Policy",
    "Provision",
    "canonical_labels",
    "canonical_system",
    "confidentiality_rank",
    "normalize_reference",
]

Coding = tuple[str, str]
"""``(system, code)``; ``system`` is ``""`` when the source coding had none."""

Effect = Literal["permit", "deny"]
FhirVersion = Literal["R4", "R5"]
Meaning = Literal["instance", "related", "dependents", "authoredby"]

PERMIT: Final = "permit"
DENY: Final = "deny"

CONFIDENTIALITY_SYSTEMS: Final = frozenset(
    {
        "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
        "http://hl7.org/fhir/v3/Confidentiality",  # the pre-R4 URL, still seen in the wild
        "urn:oid:2.16.840.1.113883.5.25",  # its HL7 OID (see canonical_system)
    }
)
# v3 Confidentiality is ordered (http://terminology.hl7.org/CodeSystem/v3-Confidentiality):
# U unrestricted < L low < M moderate < N normal < R restricted < V very restricted.
CONFIDENTIALITY_RANK: Final = {"U": 0, "L": 1, "M": 2, "N": 3, "R": 4, "V": 5}
UNLABELLED_RANK: Final = CONFIDENTIALITY_RANK["N"]
"""A resource with no confidentiality label is treated as ``N`` (normal health information)."""


_ACT_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
_ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
_V3_CONFIDENTIALITY: Final = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
#: Other names of the v3 code systems security labels are drawn from: the retired
#: ``http://hl7.org/fhir/v3/...`` URLs (FHIR DSTU2/STU3; R4 terminologies.html says the
#: terminology.hl7.org URLs replace them) and the HL7 OIDs of the same code systems
#: (ActCode 2.16.840.1.113883.5.4, ActReason 2.16.840.1.113883.5.8, Confidentiality
#: 2.16.840.1.113883.5.25), as CDA-derived data carries them.
_SYSTEM_ALIASES: Final = MappingProxyType(
    {
        "http://hl7.org/fhir/v3/ActReason": _ACT_REASON,
        "urn:oid:2.16.840.1.113883.5.8": _ACT_REASON,
        "http://hl7.org/fhir/v3/ActCode": _ACT_CODE,
        "urn:oid:2.16.840.1.113883.5.4": _ACT_CODE,
        "http://hl7.org/fhir/v3/Confidentiality": _V3_CONFIDENTIALITY,
        "urn:oid:2.16.840.1.113883.5.25": _V3_CONFIDENTIALITY,
    }
)


def canonical_system(system: str) -> str:
    """The one name of a label's code system: every alias of a v3 code system
    (:data:`_SYSTEM_ALIASES`) is its terminology.hl7.org URL. Every comparison of security
    labels (resource summaries, :mod:`middleware.consent.labels`, :attr:`Provision.covers`)
    goes through this, so that no two of them can disagree on what a label is."""
    return _SYSTEM_ALIASES.get(system, system)


def canonical_labels(labels: Iterable[Coding]) -> frozenset[Coding]:
    """``labels`` with their systems made canonical (:func:`canonical_system`)."""
    return frozenset((_SYSTEM_ALIASES.get(s, s), c) for s, c in labels)


def confidentiality_rank(labels: Iterable[Coding]) -> int | None:
    """Return the highest v3-Confidentiality rank among ``labels``, or None if none is one."""
    best: int | None = None
    for system, code in labels:
        if system in CONFIDENTIALITY_SYSTEMS and code in CONFIDENTIALITY_RANK:
            rank = CONFIDENTIALITY_RANK[code]
            best = rank if best is None or rank > best else best
    return best


def normalize_reference(reference: str) -> str:
    """Return ``Type/id`` for a literal reference, dropping a base URL and ``/_history/n``.

    ``http://x/fhir/Patient/1/_history/2`` and ``Patient/1`` both become ``Patient/1``, so
    references from different servers compare equal (http://hl7.org/fhir/R4/references.html#literal).
    Contained (``#id``), ``urn:`` and other one-segment forms are returned unchanged.
    """
    ref = reference.strip()
    if ref.startswith(("#", "urn:")):
        return ref
    parts = [p for p in ref.split("/") if p]
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2:
        return f"{parts[-2]}/{parts[-1]}"
    return ref


@dataclass(frozen=True, slots=True)
class CodingSet:
    """A set of codings; ``bare`` holds codes written without a system (they match any system)."""

    pairs: frozenset[Coding] = frozenset()
    bare: frozenset[str] = frozenset()

    @classmethod
    def of(cls, codings: Iterable[Coding]) -> CodingSet:
        pairs: set[Coding] = set()
        bare: set[str] = set()
        for system, code in codings:
            if system:
                pairs.add((system, code))
            else:
                bare.add(code)
        return cls(frozenset(pairs), frozenset(bare))

    def __bool__(self) -> bool:
        return bool(self.pairs or self.bare)

    def matches(self, coding: Coding) -> bool:
        """True if ``coding`` is in the set."""
        return coding in self.pairs or coding[1] in self.bare

    def matches_any(self, codings: Set[Coding]) -> bool:
        """True if any of ``codings`` is in the set."""
        if not self.pairs.isdisjoint(codings):
            return True
        bare = self.bare
        return bool(bare) and any(code in bare for _, code in codings)


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open interval ``[start, end)`` of aware datetimes; None means unbounded.

    FHIR Period.end "includes any matching date/time" (http://hl7.org/fhir/R4/datatypes.html#Period):
    the parser turns ``end: 2022-12-31`` into the exclusive bound ``2023-01-01T00:00Z``.
    """

    start: datetime | None = None
    end: datetime | None = None

    def contains(self, instant: datetime) -> bool:
        """True if the aware ``instant`` lies in the period."""
        start, end = self.start, self.end
        return (start is None or start <= instant) and (end is None or instant < end)


@dataclass(frozen=True, slots=True)
class Actor:
    """One ``provision.actor``.

    With a ``reference`` (literal, normalised) or an ``identifier`` (a logical reference), the
    actor is that party and the ``roles`` only say how it is involved (e.g. ``IRCP``, the
    information recipient): they are not required of the principal. With roles alone, the actor
    is every principal holding one of them.
    """

    reference: str | None = None
    identifier: tuple[str, str] | None = None
    roles: frozenset[Coding] = frozenset()


@dataclass(frozen=True, slots=True)
class DataRef:
    """One ``provision.data``: a normalised reference and how it is read (ConsentDataMeaning)."""

    reference: str
    meaning: Meaning = "instance"


@dataclass(frozen=True, slots=True)
class Provision:
    """One node of a consent's provision tree, with its effect already resolved.

    ``effect`` is None only for a root that states no base decision (an R4 consent without a
    ``policyRule`` opt-in/opt-out code): such a consent speaks only where a provision matches.
    ``covers`` / ``covers_confidentiality`` are the security labels named on this node *or any
    ancestor*: a permit decided here counts as an explicit grant for them. ``path`` is the
    FHIRPath-like location of the node in the source Consent, for traces.
    """

    path: str
    effect: Effect | None
    period: Period | None = None
    actors: tuple[Actor, ...] = ()
    actions: CodingSet = CodingSet()
    purposes: CodingSet = CodingSet()
    classes: frozenset[Coding] = frozenset()
    codes: CodingSet = CodingSet()
    security_labels: frozenset[Coding] = frozenset()
    data_period: Period | None = None
    data: tuple[DataRef, ...] = ()
    children: tuple[Provision, ...] = ()
    covers: frozenset[Coding] = frozenset()
    covers_confidentiality: int = -1
    #: R5 ``provision.expression`` (FHIRPath), compiled at parse time; None when absent.
    expression: CompiledExpression | None = None

    # Derived once in __post_init__ so the decision loop only does set operations.
    actor_refs: frozenset[str] = field(init=False, repr=False, compare=False)
    actor_identifiers: frozenset[tuple[str, str]] = field(init=False, repr=False, compare=False)
    actor_roles: CodingSet = field(init=False, repr=False, compare=False)
    class_names: frozenset[str] = field(init=False, repr=False, compare=False)
    class_codings: CodingSet = field(init=False, repr=False, compare=False)
    confidentiality_bound: int | None = field(init=False, repr=False, compare=False)
    other_labels: CodingSet = field(init=False, repr=False, compare=False)
    data_self: frozenset[str] = field(init=False, repr=False, compare=False)
    data_related: frozenset[str] = field(init=False, repr=False, compare=False)
    data_dependents: frozenset[str] = field(init=False, repr=False, compare=False)
    data_authors: frozenset[str] = field(init=False, repr=False, compare=False)
    unconditional: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        put = object.__setattr__
        # Labels compare with a resource's, whose systems are canonical (summary.py).
        put(self, "covers", canonical_labels(self.covers))
        put(self, "actor_refs", frozenset(a.reference for a in self.actors if a.reference))
        put(self, "actor_identifiers", frozenset(a.identifier for a in self.actors if a.identifier))
        role_only = (a.roles for a in self.actors if not a.reference and not a.identifier)
        put(self, "actor_roles", CodingSet.of(c for roles in role_only for c in roles))
        # Resource types and profile URLs are compared by name; other systems (e.g. LOINC
        # document types, R5 provision.documentType) are compared with the resource's codes.
        names = {code for system, code in self.classes if system in _CLASS_NAME_SYSTEMS}
        put(self, "class_names", frozenset(names))
        others = ((s, c) for s, c in self.classes if s not in _CLASS_NAME_SYSTEMS)
        put(self, "class_codings", CodingSet.of(others))
        ranks = [
            CONFIDENTIALITY_RANK[c]
            for s, c in self.security_labels
            if s in CONFIDENTIALITY_SYSTEMS and c in CONFIDENTIALITY_RANK
        ]
        # Values of one attribute are OR-ed: a permit reaches up to its highest named level,
        # a deny reaches down to its lowest (see decide.py, "Security labels").
        bound = (max(ranks) if self.effect == PERMIT else min(ranks)) if ranks else None
        put(self, "confidentiality_bound", bound)
        put(
            self,
            "other_labels",
            CodingSet.of(
                c
                for c in canonical_labels(self.security_labels)
                if c[0] not in CONFIDENTIALITY_SYSTEMS
            ),
        )
        by_meaning: dict[str, set[str]] = {m: set() for m in _MEANINGS}
        for ref in self.data:
            by_meaning[ref.meaning].add(ref.reference)
        # instance, related and dependents all cover the named instance itself (ConsentDataMeaning).
        selfs = by_meaning["instance"] | by_meaning["related"] | by_meaning["dependents"]
        put(self, "data_self", frozenset(selfs))
        put(self, "data_related", frozenset(by_meaning["related"]))
        put(self, "data_dependents", frozenset(by_meaning["dependents"]))
        put(self, "data_authors", frozenset(by_meaning["authoredby"]))
        conditional = (
            self.period
            or self.actors
            or self.actions
            or self.purposes
            or self.classes
            or self.codes
            or self.security_labels
            or self.data_period
            or self.data
            or self.expression
        )
        put(self, "unconditional", not conditional)


_MEANINGS: Final = ("instance", "related", "dependents", "authoredby")
_CLASS_NAME_SYSTEMS: Final = frozenset(
    {
        "",
        "http://hl7.org/fhir/resource-types",
        "http://hl7.org/fhir/fhir-types",
        "urn:ietf:rfc:3986",  # a profile canonical URL
    }
)


@dataclass(frozen=True, slots=True)
class Policy:
    """One parsed Consent.

    ``period`` bounds the whole consent (R5 ``Consent.period``; R4 has none, so the R4 root
    provision's period is lifted here, as the R5 note on ``provision.period`` says: "This is the
    bound effective time of the consent and should be in the base provision").
    ``ledger_index`` is the consent's position in the ledger once recorded (None before).
    """

    consent_id: str
    patient: str
    status: str
    version: FhirVersion
    period: Period | None
    root: Provision
    ledger_index: int | None = None
    categories: frozenset[Coding] = frozenset()
