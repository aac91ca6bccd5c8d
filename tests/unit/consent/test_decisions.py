"""Cached consent decisions (consent.decisions, consent.reads) agree with uncached ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import combinations
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.consent import Defaults, Principal, decide, parse_consent, summarize, summary
from middleware.consent.decisions import DecisionCache
from middleware.consent.model import Coding, Policy, normalize_reference
from middleware.consent.reads import EVERYTHING, Reads, reads_of, window
from middleware.consent.request import ResourceSummary
from middleware.consent.summary import INLINE_LABEL_URL, facts
from tests.unit.consent.builders import (
    ACCESS,
    ACT_CODE,
    ACTION_SYSTEM,
    CONF,
    HMARKT,
    LOINC,
    PATIENT,
    ROLE_CODE,
    TREAT,
)

EX = "http://example.org/security"
#: Instants the consents' periods start or end at; clocks and clinical dates are drawn next
#: to them (one microsecond before, at, one after), so a request often crosses one.
BOUNDS = (
    datetime(2024, 1, 1, tzinfo=UTC),
    datetime(2024, 6, 1, 12, tzinfo=UTC),
    datetime(2025, 1, 1, tzinfo=UTC),
)
NEAR = [b + timedelta(microseconds=d) for b in BOUNDS for d in (-1, 0, 1)]
ACTORS = ("Practitioner/dr", "Practitioner/nurse", "Organization/org")
CODES = ("1-1", "2-2")
LABELS = ((EX, "VIP"), (ACT_CODE, "HIV"), (CONF, "R"), (CONF, "N"), (CONF, "V"))
TYPES = ("Observation", "Condition")
PROFILES = ("http://example.org/p1", "http://example.org/p2")
NPI = "http://hl7.org/fhir/sid/us-npi"
ROLES = ((ROLE_CODE, "PROV"), (ROLE_CODE, "NURS"))
IDENTIFIERS = ((NPI, "111"), (NPI, "222"))
COLLECT = (ACTION_SYSTEM, "collect")
ACTIONS = (ACCESS, COLLECT, (ACTION_SYSTEM, "correct"))
PURPOSES = (TREAT, HMARKT)
#: Compartments a resource is in: its patient's, also another's, or only another's (then the
#: consents are not about it).
COMPARTMENTS = (
    frozenset({PATIENT}),
    frozenset({PATIENT, "Patient/p2"}),
    frozenset({"Patient/p2"}),
)


def _iso(instant: datetime) -> str:
    return instant.isoformat().replace("+00:00", "Z")


periods = st.builds(
    lambda start, end: {k: _iso(v) for k, v in (("start", start), ("end", end)) if v},
    st.none() | st.sampled_from(BOUNDS),
    st.none() | st.sampled_from(BOUNDS),
).filter(lambda p: not ("start" in p and "end" in p and p["start"] >= p["end"]))


def _actor(kind: str, value: Any) -> dict[str, Any]:
    """An R5 actor by literal reference (the caller's or an organisation's it acts for), by
    logical identifier or by role alone."""
    if kind in ("reference", "membership"):
        return {"reference": {"reference": value}}
    if kind == "identifier":
        return {"reference": {"identifier": {"system": value[0], "value": value[1]}}}
    return {"role": {"coding": [{"system": value[0], "code": value[1]}]}}


#: The ways an actor names a caller (each as likely: one way is not rarer for having fewer
#: values), and the values of each: a membership is a literal reference too.
ACTOR_KINDS: dict[str, tuple[Any, ...]] = {
    "reference": ACTORS[:2],
    "membership": ACTORS[2:],
    "identifier": IDENTIFIERS,
    "role": ROLES,
}
actors = st.sampled_from(sorted(ACTOR_KINDS)).flatmap(
    lambda kind: st.sampled_from(ACTOR_KINDS[kind]).map(lambda value: _actor(kind, value))
)

CONDITIONS: dict[str, st.SearchStrategy[Any]] = {
    "actor": st.lists(actors, min_size=1, max_size=2),
    "action": st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=2).map(
        lambda codes: [{"coding": [{"system": s, "code": c}]} for s, c in codes]
    ),
    "purpose": st.lists(st.sampled_from(PURPOSES), min_size=1, max_size=2).map(
        lambda codes: [{"system": s, "code": c} for s, c in codes]
    ),
    "resourceType": st.sampled_from(
        (
            *({"system": "http://hl7.org/fhir/resource-types", "code": t} for t in TYPES),
            *({"system": "urn:ietf:rfc:3986", "code": p} for p in PROFILES),
        )
    ).map(lambda c: [c]),
    "documentType": st.sampled_from(CODES).map(lambda c: [{"system": LOINC, "code": c}]),
    "code": st.sampled_from(CODES).map(lambda c: [{"coding": [{"system": LOINC, "code": c}]}]),
    "securityLabel": st.lists(st.sampled_from(LABELS), min_size=1, max_size=2).map(
        lambda ls: [{"system": s, "code": c} for s, c in ls]
    ),
    "period": periods,
    "dataPeriod": periods,
    "data": st.sampled_from(
        (
            [{"meaning": "instance", "reference": {"reference": "Observation/o1"}}],
            [{"meaning": "dependents", "reference": {"reference": "Encounter/e1"}}],
            [{"meaning": "authoredby", "reference": {"reference": "Practitioner/dr"}}],
        )
    ),
}


#: Conditions on the request (who, what for, when) and on the resource.
ASKING = ("action", "actor", "period", "purpose")
ABOUT = tuple(sorted(set(CONDITIONS) - set(ASKING)))
#: Conditions on the caller, the action and the purposes alone.
CALLER = ("action", "actor", "purpose")


@st.composite
def conditions(draw: st.DrawFn, about: bool) -> dict[str, Any]:
    """When ``about``, most often one condition on the request and sometimes one on the
    resource: a provision stating many rarely matches anything. Otherwise exactly one, on
    the caller, the action or the purposes (no period either): then the answer turns on
    them, and a key that forgot one of them is found out."""
    keys = []
    if not about or draw(st.integers(0, 3)):
        keys.append(draw(st.sampled_from(ASKING if about else CALLER)))
    if about and draw(st.booleans()):
        keys.append(draw(st.sampled_from(ABOUT)))
    return {key: draw(CONDITIONS[key]) for key in keys}


def provisions(depth: int, about: bool) -> st.SearchStrategy[dict[str, Any]]:
    kids = st.lists(provisions(depth - 1, about), max_size=2) if depth else st.just([])
    return st.builds(lambda c, k: {**c, **({"provision": k} if k else {})}, conditions(about), kids)


@st.composite
def consents(draw: st.DrawFn, index: int, about: bool) -> Policy:
    body: dict[str, Any] = {
        "resourceType": "Consent",
        "id": f"c{index}",
        "status": draw(st.sampled_from(("active", "active", "inactive"))),
        "subject": {"reference": PATIENT},
        "decision": draw(st.sampled_from(("permit", "deny"))),
        "provision": draw(st.lists(provisions(2, about), max_size=3)),
    }
    if about and (period := draw(periods)):
        body["period"] = period
    return parse_consent(body, ledger_index=index)


@st.composite
def patient_policies(draw: st.DrawFn, about: bool = True) -> tuple[Policy, ...]:
    count = draw(st.integers(0, 2))
    return tuple(draw(consents(i, about)) for i in range(count))


#: Resource elements a variant of a resource may change (one at a time: the variants of one
#: resource then differ in a single attribute, which a key that forgot it would confuse).
TWEAKS: dict[str, Any] = {
    "id": st.sampled_from(("o1", "o2")),
    "code": st.sampled_from(CODES).map(lambda c: {"coding": [{"system": LOINC, "code": c}]}),
    "encounter": st.sampled_from(("Encounter/e1", "Encounter/e2")).map(lambda r: {"reference": r}),
    "recorder": st.sampled_from(ACTORS).map(lambda r: {"reference": r}),
    "meta": st.sampled_from(PROFILES).map(lambda p: {"profile": [p]}),
}


@st.composite
def resources(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Three variants of one random resource."""
    base: dict[str, Any] = {
        "resourceType": draw(st.sampled_from(TYPES)),
        "subject": {"reference": PATIENT},
    }
    for key, values in TWEAKS.items():
        if draw(st.booleans()):
            base[key] = draw(values)
    labels = draw(st.sets(st.sampled_from(LABELS), max_size=2))
    if labels:
        security = [{"system": s, "code": c} for s, c in labels]
        base["meta"] = {**base.get("meta", {}), "security": security}
    variants = []
    for _ in range(3):
        key = draw(st.sampled_from(sorted(TWEAKS)))
        variant = dict(base)
        value = draw(TWEAKS[key]) if draw(st.booleans()) else None
        if value is None:
            variant.pop(key, None)
        elif key == "meta":
            variant["meta"] = {**base.get("meta", {}), **value}
        else:
            variant[key] = value
        variants.append(variant)
    return variants


defaults = st.builds(
    Defaults,
    jurisdiction=st.sampled_from(("opt-in", "opt-out")),
    uncovered=st.sampled_from(("deny", "redact")),
    collect=st.sampled_from(("permit", "jurisdiction")),
)


def _subsets(items: tuple[Any, ...]) -> tuple[frozenset[Any], ...]:
    return tuple(frozenset(c) for n in range(len(items) + 1) for c in combinations(items, n))


#: The inputs of one request and the values each takes; ``variant``, ``date`` and ``now``
#: index into values drawn per example (the variants of a resource, the two clocks).
INPUTS: dict[str, tuple[Any, ...]] = {
    "version": (0, 1),
    "reference": (ACTORS[0], ACTORS[1], None),
    "roles": _subsets(ROLES),
    "identifiers": _subsets(IDENTIFIERS),
    "memberships": _subsets(ACTORS[2:]),
    "launch": (None, PATIENT),
    "action": ACTIONS,
    "purposes": _subsets(PURPOSES),
    "patients": COMPARTMENTS,
    "variant": (0, 1, 2),
    "date": (None, 0, 1),
    "now": (0, 1),
}


@settings(deadline=None, max_examples=400)
@given(
    versions=st.booleans().flatmap(
        lambda about: st.tuples(patient_policies(about), patient_policies(about))
    ),
    bodies=resources(),
    clocks=st.lists(st.sampled_from(NEAR), min_size=2, max_size=2),
    config=defaults,
    data=st.data(),
)
def test_cached_decisions_agree_with_decide(
    versions: tuple[tuple[Policy, ...], tuple[Policy, ...]],
    bodies: list[dict[str, Any]],
    clocks: list[datetime],
    config: Defaults,
    data: st.DataObject,
) -> None:
    """Through one cache, over random consents (two versions: a change) whose provisions name
    actors (by reference, identifier or role), actions, purposes and periods, every decision
    (effect, obligations and trace) equals :func:`decide` on the full summary.

    The requests are a walk: each after the first changes one input of the one before
    (:data:`INPUTS`: the consents' version, the caller's reference, roles, identifiers,
    memberships or launch patient, the action, the purposes, the resource's compartments,
    variant or clinical date, the clock next to a period bound), so a key that forgot that
    input serves the request the decision cached for the one before. Evictions happen too
    (the cache is small)."""
    cache = DecisionCache(config, max_slots=3, max_entries=4)
    inputs = {name: data.draw(st.sampled_from(values)) for name, values in INPUTS.items()}
    for step in range(data.draw(st.integers(4, 24))):
        if step:
            name = data.draw(st.sampled_from(sorted(INPUTS)))
            inputs[name] = data.draw(
                st.sampled_from([v for v in INPUTS[name] if v != inputs[name]])
            )
        policies = versions[inputs["version"]]
        principal = Principal(
            reference=inputs["reference"],
            roles=inputs["roles"],
            identifiers=inputs["identifiers"],
            memberships=inputs["memberships"],
            patient=inputs["launch"],
        )
        action, purposes, patients = inputs["action"], inputs["purposes"], inputs["patients"]
        body = dict(bodies[inputs["variant"]])
        if inputs["date"] is not None:
            body["effectiveDateTime"] = _iso(clocks[inputs["date"]])
        now = clocks[inputs["now"]]
        full = summarize(body, patients=patients)
        expected = decide(principal, action, purposes, full, policies, defaults=config, now=now)
        lean = facts(body, patients=patients, reads=cache.reads(policies))
        decider = cache.decider(policies, principal, action, purposes, now)
        assert decider.decide(lean) == expected


# -- the clock and consent changes, pinned -------------------------------------------------

END = BOUNDS[1]


def _grant_until(end: datetime) -> Policy:
    """Deny by default; permit Practitioner/dr until ``end`` (a provision's period)."""
    return parse_consent(
        {
            "resourceType": "Consent",
            "id": "c1",
            "status": "active",
            "subject": {"reference": PATIENT},
            "decision": "deny",
            "provision": [
                {
                    "actor": [{"reference": {"reference": "Practitioner/dr"}}],
                    "period": {"end": _iso(end)},
                }
            ],
        },
        ledger_index=1,
    )


def test_a_clock_crossing_a_period_end_is_a_new_key() -> None:
    """The permit cached a microsecond before the provision's period ends is not served
    after it: the clock crossed a bound."""
    policies = (_grant_until(END),)
    cache = DecisionCache(Defaults())
    dr = Principal(reference="Practitioner/dr")
    body = facts({"resourceType": "Observation", "subject": {"reference": PATIENT}})
    # ``end`` includes its whole second (FHIR Period.end): the exclusive bound is a second on.
    (bound,) = reads_of(policies).instants
    assert bound == END + timedelta(seconds=1)
    before = bound - timedelta(microseconds=1)
    assert cache.decider(policies, dr, ACCESS, frozenset(), before).decide(body).permitted
    assert not cache.decider(policies, dr, ACCESS, frozenset(), bound).decide(body).permitted


def test_a_changed_consent_is_never_answered_from_the_old_one() -> None:
    """The registry hands out a new policies tuple when a consent changes; equal or not, it
    is a new key (the old entry stays for the old tuple only)."""
    cache = DecisionCache(Defaults())
    dr = Principal(reference="Practitioner/dr")
    body = facts({"resourceType": "Observation", "subject": {"reference": PATIENT}})
    granted = (_grant_until(BOUNDS[2]),)
    assert cache.decider(granted, dr, ACCESS, frozenset(), END).decide(body).permitted
    revoked: tuple[Policy, ...] = ()
    assert not cache.decider(revoked, dr, ACCESS, frozenset(), END).decide(body).permitted


def test_clinical_dates_across_a_data_period_bound_are_different_keys() -> None:
    """A consent reading ``dataPeriod`` gets a decision per side of its bounds (and one for
    an unknown date), not one for every date."""
    policy = parse_consent(
        {
            "resourceType": "Consent",
            "id": "c1",
            "status": "active",
            "subject": {"reference": PATIENT},
            "decision": "deny",
            "provision": [{"dataPeriod": {"start": "2024-01-01", "end": "2024-05-31"}}],
        },
        ledger_index=1,
    )
    cache = DecisionCache(Defaults())
    decider = cache.decider((policy,), Principal(), ACCESS, frozenset(), END)
    reads = cache.reads((policy,))

    def on(date: str | None) -> bool:
        body: dict[str, Any] = {"resourceType": "Observation", "subject": {"reference": PATIENT}}
        if date is not None:
            body["effectiveDateTime"] = date
        return decider.decide(facts(body, reads=reads)).permitted

    assert [on("2024-03-01"), on("2024-06-01"), on(None), on("2024-05-31T23:59:59Z")] == [
        True,
        False,
        False,
        True,
    ]


OBSERVATION: dict[str, Any] = {"resourceType": "Observation", "subject": {"reference": PATIENT}}


@pytest.mark.parametrize(
    ("provision", "granted", "other"),
    [
        # codes: provision.code
        (
            {"code": [{"coding": [{"system": LOINC, "code": "1-1"}]}]},
            {"code": {"coding": [{"system": LOINC, "code": "1-1"}]}},
            {"code": {"coding": [{"system": LOINC, "code": "2-2"}]}},
        ),
        # codes: a coded class (R5 documentType)
        (
            {"documentType": [{"system": LOINC, "code": "1-1"}]},
            {"code": {"coding": [{"system": LOINC, "code": "1-1"}]}},
            {},
        ),
        # profiles: a class naming a profile
        (
            {"resourceType": [{"system": "urn:ietf:rfc:3986", "code": PROFILES[0]}]},
            {"meta": {"profile": [PROFILES[0]]}},
            {"meta": {"profile": [PROFILES[1]]}},
        ),
        # data: the instance itself
        (
            {"data": [{"meaning": "instance", "reference": {"reference": "Observation/o1"}}]},
            {"id": "o1"},
            {"id": "o2"},
        ),
        # data: its authors
        (
            {"data": [{"meaning": "authoredby", "reference": {"reference": "Practitioner/dr"}}]},
            {"recorder": {"reference": "Practitioner/dr"}},
            {"recorder": {"reference": "Practitioner/nurse"}},
        ),
        # data: what it refers to
        (
            {"data": [{"meaning": "dependents", "reference": {"reference": "Encounter/e1"}}]},
            {"encounter": {"reference": "Encounter/e1"}},
            {"encounter": {"reference": "Encounter/e2"}},
        ),
    ],
    ids=["code", "document-type", "profile", "data-instance", "data-author", "data-dependents"],
)
def test_resources_differing_in_what_a_consent_reads_are_different_keys(
    provision: dict[str, Any], granted: dict[str, Any], other: dict[str, Any]
) -> None:
    """Deny by default, permit what the provision names: of two resources differing only in
    the attribute it reads, through one decider, the first is permitted and the second not,
    whichever is asked first."""
    policy = parse_consent(
        {
            "resourceType": "Consent",
            "id": "c1",
            "status": "active",
            "subject": {"reference": PATIENT},
            "decision": "deny",
            "provision": [provision],
        },
        ledger_index=1,
    )
    for order in ((granted, other), (other, granted)):
        cache = DecisionCache(Defaults())
        decider = cache.decider((policy,), Principal(), ACCESS, frozenset(), END)
        reads = cache.reads((policy,))
        answers = {
            id(part): decider.decide(facts(OBSERVATION | part, reads=reads)).permitted
            for part in order
        }
        assert (answers[id(granted)], answers[id(other)]) == (True, False)


#: (provision, defaults, granted request, refused request): the two requests differ in one
#: input of the slot key (caller, action, purposes), each given as (principal, action,
#: purposes).
Asked = tuple[Principal, Coding, frozenset[Coding]]
DR_PRINCIPAL = Principal(reference=ACTORS[0])
DR_TREAT: Asked = (DR_PRINCIPAL, ACCESS, frozenset({TREAT}))
SLOT_INPUTS: list[tuple[dict[str, Any] | None, Defaults, Asked, Asked]] = [
    # the caller's reference
    (
        {"actor": [_actor("reference", ACTORS[0])]},
        Defaults(),
        DR_TREAT,
        (Principal(reference=ACTORS[1]), ACCESS, frozenset({TREAT})),
    ),
    # its roles (an actor by role alone)
    (
        {"actor": [_actor("role", ROLES[0])]},
        Defaults(),
        (Principal(reference=ACTORS[0], roles=frozenset({ROLES[0]})), ACCESS, frozenset()),
        (DR_PRINCIPAL, ACCESS, frozenset()),
    ),
    # its identifiers (an actor by logical identifier)
    (
        {"actor": [_actor("identifier", IDENTIFIERS[0])]},
        Defaults(),
        (
            Principal(reference=ACTORS[0], identifiers=frozenset({IDENTIFIERS[0]})),
            ACCESS,
            frozenset(),
        ),
        (DR_PRINCIPAL, ACCESS, frozenset()),
    ),
    # its memberships (an actor naming the organisation it acts for)
    (
        {"actor": [_actor("membership", ACTORS[2])]},
        Defaults(),
        (Principal(reference=ACTORS[0], memberships=frozenset({ACTORS[2]})), ACCESS, frozenset()),
        (DR_PRINCIPAL, ACCESS, frozenset()),
    ),
    # its launch patient (the collect default is for the record holder's callers only)
    (
        None,
        Defaults(collect="permit"),
        (DR_PRINCIPAL, COLLECT, frozenset()),
        (Principal(reference=ACTORS[0], patient=PATIENT), COLLECT, frozenset()),
    ),
    # the action
    (
        {"action": [{"coding": [{"system": ACTION_SYSTEM, "code": "access"}]}]},
        Defaults(),
        DR_TREAT,
        (DR_PRINCIPAL, COLLECT, frozenset({TREAT})),
    ),
    # the purposes of use
    (
        {"purpose": [{"system": TREAT[0], "code": TREAT[1]}]},
        Defaults(),
        DR_TREAT,
        (DR_PRINCIPAL, ACCESS, frozenset({HMARKT})),
    ),
]


@pytest.mark.parametrize(
    ("provision", "config", "granted", "refused"),
    SLOT_INPUTS,
    ids=[
        "reference",
        "roles",
        "identifiers",
        "memberships",
        "launch-patient",
        "action",
        "purposes",
    ],
)
def test_requests_differing_in_one_slot_input_are_different_keys(
    provision: dict[str, Any] | None,
    config: Defaults,
    granted: Asked,
    refused: Asked,
) -> None:
    """Deny by default, permit what the provision names (or, with none, what the defaults
    permit): of two requests differing only in the caller's reference, roles, identifiers,
    memberships or launch patient, the action or the purposes, through one cache, on one
    resource and clock, the first is permitted and the second not, whichever is asked first."""
    body: dict[str, Any] = {"resourceType": "Consent", "id": "c1", "status": "active"}
    body |= {"subject": {"reference": PATIENT}, "decision": "deny"}
    policies = (
        (parse_consent(body | {"provision": [provision]}, ledger_index=1),) if provision else ()
    )
    for order in ((granted, refused), (refused, granted)):
        cache = DecisionCache(config)
        found = facts(OBSERVATION, patients=frozenset({PATIENT}), reads=cache.reads(policies))
        answers = {
            id(asked): cache.decider(policies, *asked, END).decide(found).permitted
            for asked in order
        }
        assert (answers[id(granted)], answers[id(refused)]) == (True, False)


def test_a_resource_outside_the_consents_patient_is_a_different_key() -> None:
    """Through one decider, a resource in the consent's patient's compartment is permitted,
    the same resource in another patient's compartment only is not (the consent does not
    speak for it: the opt-in default), whichever is asked first."""
    policies = (_grant_until(BOUNDS[2]),)
    dr = Principal(reference=ACTORS[0])
    for order in (("Patient/p1", "Patient/p2"), ("Patient/p2", "Patient/p1")):
        cache = DecisionCache(Defaults())
        decider = cache.decider(policies, dr, ACCESS, frozenset(), END)
        answers = {
            patient: decider.decide(
                facts(OBSERVATION, patients=frozenset({patient}), reads=decider.reads)
            ).permitted
            for patient in order
        }
        assert answers == {"Patient/p1": True, "Patient/p2": False}


def test_a_hit_returns_the_decision_made_for_the_key() -> None:
    """Two resources differing only in what no consent reads share one decision."""
    policies = (_grant_until(BOUNDS[2]),)
    cache = DecisionCache(Defaults())
    dr = Principal(reference="Practitioner/dr")
    reads = cache.reads(policies)
    one = facts({"resourceType": "Observation", "id": "a", "code": {"text": "x"}}, reads=reads)
    two = facts({"resourceType": "Observation", "id": "b"}, reads=reads)
    decider = cache.decider(policies, dr, ACCESS, frozenset(), END)
    assert decider.decide(one) is decider.decide(two)


# -- what is read ----------------------------------------------------------------------------


def test_an_actor_only_consent_reads_no_resource_attribute() -> None:
    reads = reads_of((_grant_until(END),))
    assert reads == Reads(instants=(END + timedelta(seconds=1),))


def test_a_lean_summary_keeps_type_patients_and_labels_only() -> None:
    body = {
        "resourceType": "Observation",
        "id": "o1",
        "subject": {"reference": PATIENT},
        "meta": {"security": [{"system": CONF, "code": "R"}], "profile": ["http://p"]},
        "code": {"coding": [{"system": LOINC, "code": "1-1"}]},
        "effectiveDateTime": "2024-01-01",
        "recorder": {"reference": "Practitioner/dr"},
    }
    lean = summarize(body, reads=Reads())
    full = summarize(body, reads=EVERYTHING)
    assert (lean.resource_type, lean.patients, lean.security_labels) == (
        full.resource_type,
        full.patients,
        full.security_labels,
    )
    empty: tuple[object, ...] = (frozenset(), frozenset(), frozenset(), frozenset(), None, None)
    parts = ("codes", "profiles", "authors", "references", "id", "clinical_date")
    assert tuple(getattr(lean, part) for part in parts) == empty
    assert all(getattr(full, part) for part in parts)


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        (None, -1),
        (BOUNDS[0] - timedelta(microseconds=1), 0),
        (BOUNDS[0], 1),
        (BOUNDS[2], 3),
    ],
    ids=["none", "before-all", "at-a-start", "at-the-last"],
)
def test_window_of_an_instant(instant: datetime | None, expected: int) -> None:
    assert window(BOUNDS, instant) == expected


def test_cache_sizes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        DecisionCache(Defaults(), max_slots=0)


# -- the summary, against the function before lazy summaries -------------------------------


def _summarize_before(
    resource: dict[str, Any], *, patients: frozenset[str] | None, walk: bool
) -> ResourceSummary:
    """``summarize`` as it was before ``reads`` (the reference the lazy one must equal)."""
    resource_type = str(resource.get("resourceType", ""))
    resource_id = resource.get("id")
    meta = resource.get("meta")
    meta = meta if isinstance(meta, dict) else {}
    found_refs: list[str] = []
    inline: list[Coding] = []
    if walk:
        summary._walk(resource, found_refs, inline)
    refs = frozenset(normalize_reference(r) for r in found_refs)
    if patients is None:
        found = {
            r
            for key in summary._PATIENT_ELEMENTS
            for r in summary._refs_of(resource.get(key))
            if r.startswith("Patient/")
        }
        if resource_type == "Patient" and isinstance(resource_id, str):
            found.add(f"Patient/{resource_id}")
        patients = frozenset(found)
    return ResourceSummary(
        resource_type=resource_type,
        id=resource_id if isinstance(resource_id, str) else None,
        patients=frozenset(patients),
        codes=frozenset(
            c for key in summary._CODE_ELEMENTS for c in summary._codings(resource.get(key))
        ),
        security_labels=frozenset((*summary._codings(meta.get("security")), *inline)),
        profiles=frozenset(p for p in meta.get("profile", ()) if isinstance(p, str)),
        clinical_date=summary._clinical_date(resource),
        authors=frozenset(
            r for key in summary._AUTHOR_ELEMENTS for r in summary._refs_of(resource.get(key))
        ),
        references=refs,
        referenced_by=frozenset(),
    )


@settings(deadline=None, max_examples=300)
@given(
    bodies=resources(),
    walk=st.booleans(),
    given_patients=st.none() | st.just(frozenset({PATIENT, "Patient/p2"})),
    date=st.none() | st.sampled_from(NEAR),
    inline=st.booleans(),
)
def test_full_summaries_equal_the_summary_before(
    bodies: list[dict[str, Any]],
    walk: bool,
    given_patients: frozenset[str] | None,
    date: datetime | None,
    inline: bool,
) -> None:
    """With every attribute read (the default), summarize is the function it was; with
    less, the attributes read are the same and the others empty."""
    for variant in bodies:
        body = dict(variant)
        if date is not None:
            body["effectiveDateTime"] = _iso(date)
        if inline:
            label = {"url": INLINE_LABEL_URL, "valueCoding": {"system": ACT_CODE, "code": "HIV"}}
            body |= {"valueString": "x", "_valueString": {"extension": [label]}}
        before = _summarize_before(body, patients=given_patients, walk=walk)
        assert summarize(body, patients=given_patients, walk=walk) == before
        lean = summarize(body, patients=given_patients, walk=walk, reads=Reads())
        assert (lean.resource_type, lean.patients, lean.security_labels) == (
            before.resource_type,
            before.patients,
            before.security_labels,
        )
