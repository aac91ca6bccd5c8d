"""Fuzzing the search parameters the gateway reads itself, from the raw query on.

A query string goes through :func:`~middleware.pipeline.params.decode_params`, the guards
(:func:`~middleware.pipeline.guards.check_search`), the patient pin
(:func:`~middleware.pipeline.guards.pin_patient`), the page size
(:func:`~middleware.pipeline.pages.requested_count`) and
:func:`~middleware.pipeline.params.encode_params` before the upstream sees it. Raw queries are
drawn from the parameter names these stages give meaning to, spelt with the variations an
upstream might read loosely (case, spaces, modifiers, chains, percent-encoding, repeats, comma
lists, other patients' references, non-ASCII digits). Each stage answers or raises its own
4xx; what passes the guards is free of every family they refuse (read here independently);
what is pinned names the caller's patient and nobody else; what is encoded decodes back to the
same pairs.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import quote

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from middleware.errors import BadRequest, Forbidden
from middleware.fhir.compartment import Kind, request_patients
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.pipeline.guards import GuardPolicy, check_search, pin_patient
from middleware.pipeline.pages import MAX_COUNT, requested_count
from middleware.pipeline.params import MAX_PARAMS, decode_params, encode_params

_NAMES: Final = (
    "patient",
    "subject",
    "subject:Patient",
    "patient:identifier",
    "subject.name",
    "patient._id",
    "_id",
    "_has:Observation:patient:code",
    "_HAS",
    " _has",
    "_filter",
    "_text",
    "_content",
    "_list",
    "_query",
    "code:missing",
    "code:MISSING ",
    "code:text.missing",
    "_sort",
    "_count",
    "_summary",
    "_total",
    "performer",
    "code",
    "date",
)
_VALUES: Final = (
    "p1",
    "Patient/p1",
    "Patient/p2",
    "p1,p2",
    "Patient/p1,Patient/p2",
    "http://gateway.test/fhir/Patient/p2",
    "Group/g1",
    "Patient/p1/_history/1",
    "true",
    "count",
    "accurate",
    " COUNT ",
    "0",
    "000",
    "²",
    "٣",
    "1" * 5_000,
    "-1",
    "birthdate",
    "-birthdate",
    "",
)
_pair = st.tuples(
    st.one_of(st.sampled_from(_NAMES), st.text(max_size=6)),
    st.one_of(st.sampled_from(_VALUES), st.text(max_size=6)),
)


@st.composite
def _queries(draw: st.DrawFn) -> bytes:
    """A raw query string: pairs percent-encoded all, some or none, joined by ``&`` (or
    ``;``), sometimes with raw bytes spliced in."""
    parts = []
    for name, value in draw(st.lists(_pair, max_size=8)):
        safe = draw(st.sampled_from(["", ",|:/$", ",|:/$ ._-"]))
        parts.append(f"{quote(name, safe=safe)}={quote(value, safe=safe)}")
    query = draw(st.sampled_from(["&", ";", "&&"])).join(parts).encode("utf-8")
    if draw(st.integers(0, 9)) == 0:
        query += draw(st.binary(max_size=6))
    return query


_POLICY: Final = GuardPolicy(sensitive_sort=frozenset({"birthdate"}))


def _refused_by_reading(name: str, value: str) -> bool:
    """Whether a patient-context caller is refused ``name=value``, read from the guards'
    documented families (case-insensitive names, trimmed and lower-cased values), not from
    their code."""
    head, _, modifier = name.strip().partition(":")
    code = head.lower()
    items = {item.strip().lower() for item in value.split(",")}
    return (
        code in {"_has", "_filter", "_text", "_content", "_list", "_query"}
        or "." in name
        or "missing" in modifier.lower().replace(".", ":").replace(" ", "").split(":")
        or (code == "_summary" and "count" in items)
        or (code == "_count" and value.strip() != "" and set(value.strip()) == {"0"})
        or (code == "_total" and bool(items & {"accurate", "estimate"}))
        or (code == "_sort" and any(i.lstrip("-").split(":")[0] == "birthdate" for i in items))
    )


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    query=_queries(),
    resource_type=st.sampled_from(["Observation", "Patient", "Condition", "AdverseEvent"]),
)
@example(query=b"_has%3AObservation%3Apatient%3Acode=1", resource_type="Observation")
@example(query=b"%20_HAS=1", resource_type="Observation")
@example(query=b"subject=Patient%2Fp2", resource_type="Observation")
@example(query=b"patient=p1%2Cp2", resource_type="Observation")
@example(query=b"_count=%C2%B2", resource_type="Observation")
@example(query=b"%FF=1", resource_type="Observation")
@example(query=b"&".join([b"a=1"] * (MAX_PARAMS + 1)), resource_type="Observation")
def test_a_patient_context_query_is_refused_or_pinned_to_the_patient(
    query: bytes, resource_type: str
) -> None:
    """Any raw query a patient-context caller sends: a 400 (undecodable, too many pairs), a
    403 (a guarded family, another patient, an unreadable patient reference), or a query
    that keeps none of the refused families, names exactly the caller's patient, has a page
    size in range, and reaches the upstream as the same pairs."""
    try:
        params = decode_params(query)
    except BadRequest as exc:
        status = exc.status
        assert status == 400
        return
    assert len(params) <= MAX_PARAMS
    try:
        check_search(params, caller_kind="patient", sees_everything=False, policy=_POLICY)
    except Forbidden:
        assert any(_refused_by_reading(name, value) for name, value in params)
        return
    assert not any(_refused_by_reading(name, value) for name, value in params), params
    count = requested_count(params)
    assert count is None or 0 <= count <= MAX_COUNT
    try:
        pinned = pin_patient(resource_type, params, "p1")
    except Forbidden:
        return
    request = FhirRequest(
        interaction=Interaction.SEARCH_TYPE,
        method="GET",
        level=Level.TYPE,
        path=resource_type,
        resource_type=resource_type,
    )
    refs = request_patients(request, pinned)
    assert refs.kind is Kind.PATIENT_DATA
    assert refs.ids == {"p1"}
    assert not refs.unresolved
    assert decode_params(encode_params(pinned).encode("ascii")) == pinned


@settings(max_examples=300)
@given(
    pairs=st.lists(
        st.tuples(st.text(st.characters(codec="utf-8")), st.text(st.characters(codec="utf-8"))),
        max_size=6,
    )
)
def test_encoded_parameters_decode_to_the_same_pairs(pairs: list[tuple[str, str]]) -> None:
    """Whatever pairs the pipeline holds (any Unicode, ``&``, ``=``, ``+``, ``%``, ``,|:``),
    the query string sent upstream is ASCII and decodes to exactly those pairs."""
    assert decode_params(encode_params(pairs).encode("ascii")) == pairs


@given(values=st.lists(st.one_of(st.sampled_from(_VALUES), st.text(max_size=8)), max_size=3))
@example(values=["1" * 5_000])
@example(values=["0" * 5_000 + "7"])
def test_the_page_size_is_a_bounded_number_or_none(values: list[str]) -> None:
    """``_count`` of any text (5,000 digits, superscripts, other scripts' digits, signs):
    ``None`` or a count within ``MAX_COUNT``, equal to the last value's number when that is
    plain ASCII digits."""
    count = requested_count([("_count", value) for value in values])
    last = values[-1] if values else ""
    if not (last.isascii() and last.isdigit()):
        assert count is None
    elif len(last.lstrip("0")) > 7:  # more than MAX_COUNT's digits: asks for everything
        assert count == MAX_COUNT
    else:
        assert count == min(int(last.lstrip("0") or "0"), MAX_COUNT)
