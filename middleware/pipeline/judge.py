"""The verdict on each resource of an exchange: scopes, patient compartment, consent, redaction.

A :class:`Judge` is built once per exchange, after the policies of every patient the exchange
can touch have been loaded (:func:`patients_in` names them; loading is I/O and happens in the
flow), so that judging is pure and synchronous, as :func:`~middleware.pipeline.filter.filter_answer`
needs. For one resource (contained resources included, through
:func:`~middleware.fhir.compartment.patients_of`):

1. the caller's scopes must let it see the type (and category, for granular scopes);
2. its patient compartment (FHIR R4 Patient CompartmentDefinition) decides who is asked:
   - not patient data (Practitioner, Medication...): the scopes alone decide;
   - unknown patient (a reference the gateway cannot resolve): deny, unless the deployment
     allows it for this caller's context (``allow_unknown``);
   - patient data: a patient-context caller must be in the compartment (its own record is
     released without a consent decision: the individual's right of access); every *other*
     patient in the compartment must permit through their consents, each decided on its
     own policies (:func:`~middleware.consent.decide.decide`), deny from any one withholds;
3. obligations of the permits (``redact`` with security labels) are applied: the labelled
   resource is withheld or its labelled elements removed (DS4P, :mod:`.redact`);
4. labels on data (:mod:`middleware.consent.labels`), its own and its contained resources':
   a resource whose purpose-of-use labels none of the caller's purposes meets is withheld
   before anything is decided (not from the patient's own app reading a record of that
   patient alone, which is theirs to read whatever uses it is labelled for:
   :meth:`Judge.screened`); 42 CFR Part 2 data released (a consent named it, step 2; a
   contained resource's labels count as the container's) carries the refrain label and the
   notice, and Part 2 data tied to no known patient is withheld.

Every decision lands in :attr:`Judge.trail` for the audit record: which patients were
decided, which had data released, which resources were released.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from middleware.auth.scopes import allows
from middleware.consent.decide import Decision, Defaults
from middleware.consent.decisions import Decider, DecisionCache
from middleware.consent.labels import (
    Screen,
    contained_labels,
    has_part2_inline,
    mark_part2,
    screen_resource,
)
from middleware.consent.model import Coding, Policy, Provision
from middleware.consent.reads import Reads
from middleware.consent.summary import INLINE_LABEL_URL, facts
from middleware.fhir.compartment import Kind, PatientRefs, patients_of
from middleware.pipeline.caller import Caller
from middleware.pipeline.redact import redact

__all__ = [
    "GATEWAY_OWNED",
    "Judge",
    "Trail",
    "compartment_of",
    "may_hold_inline",
    "needs_walk",
    "patients_in",
    "references_of",
]

_MAX_DEPTH: Final = 16
#: Backslashes :func:`_has_escape` looks at one by one before a substring search.
_FEW_ESCAPES: Final = 64
_INLINE_MARK: Final = INLINE_LABEL_URL.rsplit("/", 1)[1].encode()
#: Resource types the gateway itself owns (the patient consent API; the audit trail, of which the
#: gateway is the Audit Record Repository, IHE ITI-81): an upstream's copies are never released
#: through the proxy, and no request for them is forwarded.
GATEWAY_OWNED: Final = frozenset({"Consent", "AuditEvent"})
_PATIENT_REF: Final = re.compile(
    r"Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?"
)


def compartment_of(resource: Mapping[str, Any], *, base_urls: Sequence[str]) -> PatientRefs:
    """The patients whose data ``resource`` is: its FHIR R4 Patient compartment, and for a type
    the CompartmentDefinition leaves out (Device.patient, GuidanceResponse.subject,
    Binary.securityContext...), every local ``Patient/<id>`` it references: those types carry
    patient data too, and releasing them on scopes alone would leak it. A Binary whose
    ``securityContext`` names anything but a Patient has an undeterminable patient."""
    refs = patients_of(resource, base_urls=base_urls)
    if refs.kind is not Kind.NOT_PATIENT_DATA:
        return refs
    if resource.get("resourceType") == "Binary" and resource.get("securityContext") is not None:
        context = resource["securityContext"]
        found = _local_patient(
            context.get("reference") if isinstance(context, dict) else None, base_urls
        )
        if found is None:
            return PatientRefs(Kind.UNKNOWN, unresolved=True)
        return PatientRefs(Kind.PATIENT_DATA, frozenset({found}))
    ids = {
        found
        for reference in _references(resource, 0)
        if (found := _local_patient(reference, base_urls)) is not None
    }
    return PatientRefs(Kind.PATIENT_DATA, frozenset(ids)) if ids else refs


def references_of(refs: PatientRefs) -> frozenset[str]:
    """``refs.references`` (``Patient/<id>`` of each id), made once per set of ids: a judged
    answer asks three times per resource, and most resources name the same patient."""
    return _patient_references(refs.ids)


@functools.lru_cache(maxsize=4096)
def _patient_references(ids: frozenset[str]) -> frozenset[str]:
    return PatientRefs(Kind.PATIENT_DATA, ids).references


def _local_patient(reference: Any, base_urls: Sequence[str]) -> str | None:
    if not isinstance(reference, str):
        return None
    for base in base_urls:
        prefix = base.rstrip("/") + "/"
        if reference.startswith(prefix):
            reference = reference[len(prefix) :]
            break
    match = _PATIENT_REF.fullmatch(reference)
    return match.group(1) if match else None


def _references(node: Any, depth: int) -> Iterator[Any]:
    if depth > 64:
        return
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference":
                yield value
            else:
                yield from _references(value, depth + 1)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item, depth + 1)


@dataclass(slots=True)
class Trail:
    """What an exchange decided and released, for its audit record (insertion order kept).

    One trail per exchange (:class:`~middleware.pipeline.exchange.Ask`), filled by the stages
    it passes through its methods only: each says what happened (a resource withheld,
    released, redacted; a denial overridden; a mapping or a narrowing applied; a decision or
    an intent recorded), never which field records it. Read by the audit
    (:mod:`middleware.proxy.exchange_audit`) and the consent metrics."""

    decisions: dict[str, Decision | None] = field(default_factory=dict)
    released: set[str] = field(default_factory=set)
    refs: list[str] = field(default_factory=list)
    narrowed: bool = False
    break_glass: bool = False
    withheld: int = 0
    decision_recorded: bool = False
    redacted: int = 0
    marked: int = 0
    emergency: bool = False
    overridden: set[str] = field(default_factory=set)
    mapping: str | None = None  # the mapping profile and digest the exchange went through
    intent: str | None = None  # a forwarded write's audit intent, until its outcome is recorded

    def decided(self, patient: str, decision: Decision | None) -> None:
        """Keep the first permit or any deny for ``patient`` (a deny is what an auditor
        must see when one resource of the patient was withheld)."""
        known = self.decisions.get(patient)
        if patient not in self.decisions or (
            known is not None and decision is not None and not decision.permitted
        ):
            self.decisions[patient] = decision

    def withhold(self) -> None:
        """A resource of the answer was withheld: the answer is narrowed."""
        self.withheld += 1
        self.narrowed = True

    def redact(self) -> None:
        """A released resource was redacted: the answer is narrowed."""
        self.narrowed = True
        self.redacted += 1

    def mark(self) -> None:
        """A released resource was given labels and a notice (42 CFR Part 2 data): the
        answer is no longer the upstream's bytes."""
        self.marked += 1

    def release(self, patients: AbstractSet[str], ref: str | None) -> None:
        """A resource of ``patients``, named ``ref`` (``Type/id``; None without an id),
        reached the answer."""
        self.released |= patients
        if ref is not None:
            self.refs.append(ref)

    def override(self, patient: str) -> None:
        """A denial of ``patient``'s consent was overridden by break-the-glass."""
        self.break_glass = True
        self.overridden.add(patient)

    def narrow(self) -> None:
        """The query was pinned to a compartment or the answer cut to a subset."""
        self.narrowed = True

    def mapped(self, label: str) -> None:
        """The exchange went through the mapping profile ``label`` (id and digest)."""
        self.mapping = label

    def decision_committed(self) -> None:
        """The exchange's decision is on the ledger (a write, before it is forwarded): its
        final entry is then an outcome."""
        self.decision_recorded = True

    def intent_kept(self, intent: str | None) -> None:
        """A forwarded write's audit intent (None: none kept), until its outcome is recorded."""
        self.intent = intent

    def intent_closed(self) -> None:
        """The write's outcome is recorded: its intent is done."""
        self.intent = None


def needs_walk(raw: bytes | None, policies: Iterable[Sequence[Policy]]) -> bool:
    """Whether resource summaries must walk every element: unless the answer's bytes show no
    DS4P inline label could be in it and no consent reads the references a resource makes
    (``provision.data`` meaning dependents), the walk is skipped (it was half of a search's
    CPU). Without the bytes (a write's body, already parsed), always. The bytes are searched
    for the URL's last segment (JSON may escape its slashes) and for any ``\\u`` escape (which
    could spell it otherwise): either means walk."""
    if may_hold_inline(raw):
        return True
    return any(_reads_references(policy.root) for group in policies for policy in group)


def may_hold_inline(raw: bytes | None) -> bool:
    """Whether an answer's bytes (None: unknown) could hold a DS4P inline security label
    (see :func:`needs_walk`)."""
    return raw is None or _INLINE_MARK in raw or _has_escape(raw)


def _has_escape(raw: bytes) -> bool:
    """``b"\\u" in raw``, faster: JSON has few backslashes (escaped quotes in narrative), and
    finding each (a memchr) then looking at the next byte is several times quicker than a
    two-byte substring search over the whole answer; past ``_FEW_ESCAPES`` backslashes, the
    substring search finishes the job."""
    find = raw.find
    at = find(b"\\")
    for _ in range(_FEW_ESCAPES):
        if at < 0:
            return False
        if raw[at + 1 : at + 2] == b"u":
            return True
        at = find(b"\\", at + 1)
    return at >= 0 and find(b"\\u", at) >= 0


def _reads_references(provision: Provision) -> bool:
    return bool(provision.data_dependents) or any(
        _reads_references(child) for child in provision.children
    )


def patients_in(
    document: Any, *, base_urls: Sequence[str], seen: dict[int, PatientRefs] | None = None
) -> set[str]:
    """``Patient/<id>`` of every patient compartment a resource of ``document`` (an answer,
    or a request body) is in, through Bundles and contained resources. ``seen`` collects each
    resource's compartment by object identity, for a :class:`Judge` of the same document."""
    found: set[str] = set()
    for resource in _resources(document, 0):
        refs = compartment_of(resource, base_urls=base_urls)
        if seen is not None:  # a cache: Judge recomputes on a miss (mutants here are equivalent)
            seen[id(resource)] = refs
        found |= references_of(refs)
    return found


def _resources(node: Any, depth: int) -> Iterator[Mapping[str, Any]]:
    if not isinstance(node, dict) or depth > _MAX_DEPTH:
        return
    if node.get("resourceType") != "Bundle":
        yield node
        return
    entries = node.get("entry")
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, dict):
            yield from _resources(entry.get("resource"), depth + 1)


@dataclass(slots=True)
class Judge:
    """Judges resources for one exchange (see the module docstring).

    ``policies`` maps ``Patient/<id>`` to that patient's compiled consents, for every patient
    :func:`patients_in` named; a patient missing from it is judged with no consents (the
    jurisdiction default). ``override`` names patients whose denials break-the-glass
    overrides (decided by the flow; the trail is flagged when it is used).
    """

    caller: Caller
    action: Coding
    policies: Mapping[str, tuple[Policy, ...]]
    defaults: Defaults
    now: datetime
    base_urls: Sequence[str]
    allow_unknown: bool = False
    override: frozenset[str] = frozenset()
    trail: Trail = field(default_factory=Trail)
    #: Compartments :func:`patients_in` already found, by resource identity (the document
    #: stays alive while it is judged, so identities cannot be reused meanwhile).
    seen: dict[int, PatientRefs] = field(default_factory=dict)
    #: Whether summaries walk every element (see :func:`needs_walk`).
    walk: bool = True
    #: Whether the document may hold inline labels (:func:`may_hold_inline`): only then are
    #: released resources searched for inline 42 CFR Part 2 labels.
    inline: bool = True
    #: Consent decisions already made (the gateway's, shared by its exchanges); a Judge
    #: without one, or with one made for other defaults, keeps its own.
    decisions: DecisionCache | None = None
    _deciders: dict[str, Decider] = field(default_factory=dict, init=False, repr=False)
    _reads: Reads | None = field(default=None, init=False, repr=False)
    _whole_types: dict[str, bool] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.decisions is None or self.decisions.defaults != self.defaults:
            self.decisions = DecisionCache(self.defaults)

    def allowed(self, resource: Mapping[str, Any]) -> bool:
        """The verdict on one resource; a permitted resource carrying labels its permits do
        not cover has them redacted *in place* (or is withheld when the resource itself is
        labelled). Use as :func:`~middleware.pipeline.filter.filter_answer`'s verdict."""
        rtype = resource.get("resourceType")
        # A resourceType that is not a string (a list is unhashable) names nothing: withheld.
        if not isinstance(rtype, str) or rtype in GATEWAY_OWNED:
            return self._withhold()
        if not self._may_see(rtype, resource):
            return self._withhold()
        # Labels on data (middleware.consent.labels): most resources carry no meta.security
        # and no contained resources, and for them this is two lookups.
        meta = resource.get("meta")
        part2 = False
        if (isinstance(meta, dict) and "security" in meta) or "contained" in resource:
            screened = self.screened(resource)
            if screened is Screen.WITHHOLD:
                return self._withhold()
            part2 = screened is Screen.PART2
        # ``seen`` only saves recomputing: a miss gives the same compartment (mutants of the
        # lookup key are equivalent; see also ``permits``).
        refs = self.seen.get(id(resource)) or compartment_of(resource, base_urls=self.base_urls)
        labels = self.rule(resource, refs)
        if labels is None:
            return self._withhold()
        if labels and isinstance(resource, dict):
            redacted = redact(resource, labels)
            if redacted is None:
                return self._withhold()
            resource.clear()
            resource.update(redacted)
            self.trail.redact()
        if (part2 or self.inline) and not self._part2_released(resource, refs):
            return self._withhold()
        rid = resource.get("id")
        self.trail.release(references_of(refs), f"{rtype}/{rid}" if isinstance(rid, str) else None)
        return True

    def screened(self, resource: Mapping[str, Any]) -> Screen:
        """The verdict of ``resource``'s labels, contained resources' included
        (:func:`~middleware.consent.labels.screen_resource`), for this caller. Purpose-of-use
        labels do not withhold a patient's own record from the patient: only a patient-context
        caller whose ``fhirUser`` is absent or is that patient (a practitioner's app launched
        in a patient's context is not the patient), and only for a resource whose compartment
        is that patient alone (data also about another patient is not only theirs to read)."""
        rules, purposes = self.defaults.labels, self.caller.purposes
        verdict = screen_resource(resource, purposes, rules)
        if verdict is Screen.WITHHOLD and self._own_record(resource):
            verdict = screen_resource(resource, purposes, rules, by_purpose=False)
        return verdict

    def _own_record(self, resource: Mapping[str, Any]) -> bool:
        """Whether ``resource`` is the patient caller's own record alone (see :meth:`screened`)."""
        own = self.caller.patient
        if own is None or self.caller.identity.fhir_user not in (None, own):
            return False
        refs = self.seen.get(id(resource)) or compartment_of(resource, base_urls=self.base_urls)
        return (
            refs.kind is Kind.PATIENT_DATA
            and not refs.unresolved
            and references_of(refs) == frozenset({own})
        )

    def permits(self, resource: Mapping[str, Any]) -> bool:
        """The compartment and consent verdict alone (the caller's permission to write was
        checked on the interaction): for a resource about to be written, or written over."""
        refs = self.seen.get(id(resource)) or compartment_of(resource, base_urls=self.base_urls)
        return self.rule(resource, refs) is not None

    def rule(self, resource: Mapping[str, Any], refs: PatientRefs) -> frozenset[Coding] | None:
        """None when the caller may not have ``resource`` (compartment ``refs``), else the
        security labels to redact from it (empty: release as is). Records the decisions."""
        if refs.kind is Kind.NOT_PATIENT_DATA:
            return frozenset()
        if refs.kind is Kind.UNKNOWN or (refs.unresolved and not self.allow_unknown):
            return frozenset() if self.allow_unknown else None
        patients = references_of(refs)
        own = self.caller.patient
        if own is not None:
            if own not in patients:
                return None
            self.trail.decided(own, None)
        labels: set[Coding] = set()
        found = None
        # (``patients - {None}`` is ``patients``: always subtracting is an equivalent mutant)
        for patient in sorted(patients - {own} if own else patients):
            if found is None:
                # Only what some consent of the exchange reads (codes, dates... lazily).
                found = facts(
                    resource, patients=patients, walk=self.walk, reads=self._what_is_read()
                )
                if "contained" in resource and (inner := contained_labels(resource)):
                    # A contained resource is released inside its container: a permit must
                    # cover its sensitive (and Part 2) labels as the container's own.
                    found = found._replace(security_labels=found.security_labels | inner)
            decision = self._decider(patient).decide(found)
            self.trail.decided(patient, decision)
            if not decision.permitted:
                if patient not in self.override:
                    return None
                self.trail.override(patient)
                continue
            for obligation in decision.obligations:
                if obligation.code == "redact":
                    labels |= obligation.labels
        return frozenset(labels)

    def _part2_released(self, resource: Mapping[str, Any], refs: PatientRefs) -> bool:
        """For a resource about to be released: when (what is left of) it is 42 CFR Part 2
        data, mark it (refrain label and notice, :func:`~middleware.consent.labels.mark_part2`)
        and say True only if a patient's consent was asked: data not tied to a known patient
        (no compartment, an unresolved reference) has no consent that could name it."""
        rules = self.defaults.labels
        screened = screen_resource(resource, self.caller.purposes, rules, by_purpose=False)
        if screened is not Screen.PART2 and not (self.inline and has_part2_inline(resource, rules)):
            return True
        if refs.kind is not Kind.PATIENT_DATA or refs.unresolved:
            return False
        if isinstance(resource, dict):
            mark_part2(resource, rules)
            self.trail.mark()
        return True

    def _may_see(self, rtype: str, resource: Mapping[str, Any]) -> bool:
        """:meth:`Caller.may_see`, answered once per type when a scope without constraints
        grants the whole type (then the resource's categories cannot matter: ``allows`` with
        no categories is true exactly when such a scope exists)."""
        whole = self._whole_types.get(rtype)
        if whole is None:
            scopes, context = self.caller.identity.scopes, self.caller.context
            whole = allows(scopes, context, rtype, "r") or allows(scopes, context, rtype, "s")
            self._whole_types[rtype] = whole
        return whole or self.caller.may_see(resource)

    def _decider(self, patient: str) -> Decider:
        """``decide`` for ``patient``'s policies and this exchange's caller, action and
        clock, cached by what the decision depends on (:mod:`middleware.consent.decisions`)."""
        decider = self._deciders.get(patient)
        if decider is None:
            assert self.decisions is not None  # set in __post_init__
            decider = self.decisions.decider(
                self.policies.get(patient, ()),
                self.caller.principal,
                self.action,
                self.caller.purposes,
                self.now,
            )
            self._deciders[patient] = decider
        return decider

    def _what_is_read(self) -> Reads:
        """What the consents of every patient of the exchange read of a resource."""
        if self._reads is None:
            assert self.decisions is not None  # set in __post_init__
            reads = Reads()
            for policies in self.policies.values():
                reads |= self.decisions.reads(policies)
            self._reads = reads
        return self._reads

    def _withhold(self) -> bool:
        self.trail.withhold()
        return False
