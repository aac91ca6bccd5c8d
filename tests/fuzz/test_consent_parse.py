"""Fuzzing the Consent parser with JSON shaped like R4 and R5 Consents.

A patient's token is enough to store a Consent, and every stored one is compiled again by the
registry on every replica: an exception other than :class:`~middleware.consent.parse.InvalidConsent`
there was a 500 on the patient's every read. Documents start from a Consent the parser accepts
(R4 or R5, from :mod:`tests.unit.consent.builders`) and are changed at random places: elements
replaced by any JSON value (the wrong type as often as the right one), provisions nested and
widened, FHIR elements added with odd contents. Whatever compiles must also be decidable.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from middleware.consent import Principal, parse_consent
from middleware.consent.decide import Decision
from middleware.consent.limits import DEFAULT_LIMITS, ConsentLimits
from middleware.consent.parse import InvalidConsent
from tests.unit.consent.builders import ACCESS, PATIENT, TREAT, actor, ask, consent, rule

_ELEMENTS: Final = (
    "resourceType",
    "id",
    "status",
    "decision",
    "type",
    "period",
    "start",
    "end",
    "actor",
    "role",
    "reference",
    "action",
    "securityLabel",
    "purpose",
    "class",
    "resourceType",
    "code",
    "coding",
    "system",
    "data",
    "meaning",
    "dataPeriod",
    "expression",
    "provision",
    "policyRule",
    "patient",
    "subject",
    "modifierExtension",
    "extension",
    "url",
    "meta",
    "fhirVersion",
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [
            "permit",
            "deny",
            "active",
            "inactive",
            "Consent",
            PATIENT,
            "Patient/../p1",
            "Practitioner/dr",
            "#contained",
            "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "TREAT",
            "OPTOUT",
            "instance",
            "dependents",
            "2024",
            "2024-02-30",
            "2024-06-01T12:00:00+14:00",
            "2024-06-01T25:00:00Z",
            "9999-12-31",
            "",
            "R",
            "4.0.1",
            "5.0.0",
        ]
    ),
    st.text(max_size=10),
)
_json = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(_ELEMENTS), inner, max_size=4)
    ),
    max_leaves=16,
)
_provisions: st.SearchStrategy[dict[str, Any]] = st.recursive(
    st.builds(dict),
    lambda inner: st.builds(
        lambda fields, children: {**fields, "provision": children} if children else fields,
        st.dictionaries(st.sampled_from(_ELEMENTS), _json, max_size=3),
        st.lists(inner, max_size=3),
    ),
    max_leaves=24,
)


def _places(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside ``node`` (dict keys and list indexes)."""
    out = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _places(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _places(value, (*path, index))
    return out


@st.composite
def _consents(draw: st.DrawFn) -> dict[str, Any]:
    version = draw(st.sampled_from(["R4", "R5"]))
    decision = draw(st.sampled_from(["permit", "deny"]))
    rules = [
        rule(actor=[actor("Practitioner/dr")], purpose=["TREAT"]),
        rule(rule(types=["Observation"]), action=["access"]),
        rule(rule(rule(types=["Observation"])), rule(), rule(rule(), rule())),
    ]
    doc = consent(version, decision, *draw(st.lists(st.sampled_from(rules), max_size=2)))
    for _ in range(draw(st.integers(0, 4))):
        places = _places(doc)
        path = draw(st.sampled_from(places))
        change = draw(st.sampled_from(["replace", "add", "provisions", "drop"]))
        parent: Any = doc
        for step in path[:-1]:
            parent = parent[step]
        if not path:
            continue
        last = path[-1]
        if change == "replace":
            parent[last] = draw(_json)
        elif change == "drop":
            del parent[last]
        elif change == "provisions":
            parent[last] = draw(st.one_of(_provisions, st.lists(_provisions, max_size=3)))
        elif isinstance(parent[last], dict):
            parent[last][draw(st.sampled_from(_ELEMENTS))] = draw(_json)
        elif isinstance(parent[last], list):
            parent[last].append(draw(st.one_of(_json, _provisions)))
    return doc


def _shape(provisions: Any) -> tuple[int, int]:
    """How deep ``provisions`` (a list of provisions, or R4's one root) nest and how many
    there are; ``Consent.provision`` itself is level 1."""
    items = provisions if isinstance(provisions, list) else [provisions]
    nodes = [item for item in items if isinstance(item, dict)]
    inner = [_shape(node["provision"]) for node in nodes if "provision" in node]
    depth = (1 if nodes else 0) + max((d for d, _ in inner), default=0)
    return depth, len(nodes) + sum(c for _, c in inner)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(doc=_consents(), limits=st.sampled_from([None, DEFAULT_LIMITS, ConsentLimits(2, 5)]))
@example(doc={**consent("R5", "permit"), "status": ["active"]}, limits=None)
@example(doc={**consent("R4", "deny"), "provision": [{"type": "permit"}]}, limits=None)
@example(doc={**consent("R5", "deny"), "provision": {"provision": 7}}, limits=None)
@example(doc={**consent("R5", "deny"), "period": {"start": "2024-02-30"}}, limits=None)
@example(doc={**consent("R4", "permit"), "patient": {"reference": ["Patient/p1"]}}, limits=None)
def test_any_consent_shaped_json_compiles_or_is_invalid_and_compiled_ones_decide(
    doc: dict[str, Any], limits: ConsentLimits | None
) -> None:
    """Consent-shaped JSON with any element changed: a Policy or InvalidConsent (422), never
    another exception; the document is not modified; a Policy is about a patient, keeps within
    the limits it was compiled under, and the decision function answers for it."""
    original = copy.deepcopy(doc)
    try:
        policy = parse_consent(doc) if limits is None else parse_consent(doc, limits=limits)
    except InvalidConsent as exc:
        status, issues = exc.status, exc.issues
        assert status == 422
        assert issues
        assert doc == original
        return
    assert doc == original
    assert policy.patient.startswith("Patient/")
    assert policy.status == doc["status"]
    if limits is not None:
        depth, count = _shape(doc.get("provision"))
        assert depth <= limits.max_depth, depth
        assert count <= limits.max_provisions, count
    decision = ask([policy], who=Principal(reference="Practitioner/dr"), action=ACCESS)
    assert isinstance(decision, Decision)
    assert ask([policy], purposes=frozenset({TREAT}), who=None) is not None
