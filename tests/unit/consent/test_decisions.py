"""Cached consent decisions (consent.decisions, consent.reads) agree with uncached ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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
from tests.unit.consent.builders import ACCESS, ACT_CODE, CONF, LOINC, PATIENT, TREAT

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


def _iso(instant: datetime) -> str:
    return instant.isoformat().replace("+00:00", "Z")


periods = st.builds(
    lambda start, end: {k: _iso(v) for k, v in (("start", start), ("end", end)) if v},
    st.none() | st.sampled_from(BOUNDS),
    st.none() | st.sampled_from(BOUNDS),
).filter(lambda p: not ("start" in p and "end" in p and p["start"] >= p["end"]))

CONDITIONS: dict[str, st.SearchStrategy[Any]] = {
    "actor": st.lists(st.sampled_from(ACTORS), min_size=1, max_size=2).map(
        lambda refs: [{"reference": {"reference": r}} for r in refs]
    ),
    "purpose": st.just([{"system": ACT_CODE, "code": "TREAT"}]),
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


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    """At most two conditions: a provision stating many rarely matches anything."""
    keys = draw(st.lists(st.sampled_from(sorted(CONDITIONS)), max_size=2, unique=True))
    return {key: draw(CONDITIONS[key]) for key in keys}


def provisions(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    kids = st.lists(provisions(depth - 1), max_size=2) if depth else st.just([])
    return st.builds(lambda c, k: {**c, **({"provision": k} if k else {})}, conditions(), kids)


@st.composite
def consents(draw: st.DrawFn, index: int) -> Policy:
    body: dict[str, Any] = {
        "resourceType": "Consent",
        "id": f"c{index}",
        "status": draw(st.sampled_from(("active", "active", "inactive"))),
        "subject": {"reference": PATIENT},
        "decision": draw(st.sampled_from(("permit", "deny"))),
        "provision": draw(st.lists(provisions(2), max_size=3)),
    }
    if period := draw(periods):
        body["period"] = period
    return parse_consent(body, ledger_index=index)


@st.composite
def patient_policies(draw: st.DrawFn) -> tuple[Policy, ...]:
    count = draw(st.integers(0, 2))
    return tuple(draw(consents(i)) for i in range(count))


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
)


@settings(deadline=None, max_examples=400)
@given(
    versions=st.tuples(patient_policies(), patient_policies()),
    bodies=resources(),
    clocks=st.lists(st.sampled_from(NEAR), min_size=2, max_size=2),
    purposes=st.sets(st.just(TREAT)).map(frozenset),
    config=defaults,
    data=st.data(),
)
def test_cached_decisions_agree_with_decide(
    versions: tuple[tuple[Policy, ...], tuple[Policy, ...]],
    bodies: list[dict[str, Any]],
    clocks: list[datetime],
    purposes: frozenset[Any],
    config: Defaults,
    data: st.DataObject,
) -> None:
    """Through one cache, over random consents (two versions: a change), callers, variants of
    a resource (with other clinical dates) and two clocks next to period bounds, every
    decision (effect, obligations and trace) equals :func:`decide` on the full summary. The
    choices are few, so that requests share cache slots and entries."""
    cache = DecisionCache(config, max_slots=3, max_entries=4)  # small: evictions happen too
    patients = frozenset({PATIENT})
    for _ in range(data.draw(st.integers(1, 12))):
        policies = versions[data.draw(st.integers(0, 1))]
        principal = Principal(reference=data.draw(st.sampled_from(ACTORS[:2])))
        body = dict(bodies[data.draw(st.integers(0, 2))])
        if date := data.draw(st.none() | st.sampled_from(clocks)):
            body["effectiveDateTime"] = _iso(date)
        now = data.draw(st.sampled_from(clocks))
        full = summarize(body, patients=patients)
        expected = decide(principal, ACCESS, purposes, full, policies, defaults=config, now=now)
        lean = facts(body, patients=patients, reads=cache.reads(policies))
        decider = cache.decider(policies, principal, ACCESS, purposes, now)
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
