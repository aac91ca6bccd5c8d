"""Ids are rewritten wherever a resource, Bundle, header or search names one (references.py).

Most tests use a readable resolver (``c-<id>`` for clients); the round trips use the real ones.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.errors import BadRequest, NotFound, UnprocessableEntity, UpstreamError
from middleware.fhir import jsoncodec
from middleware.mapping.ids import (
    CLIENT_ID_LENGTHS,
    FHIR_ID,
    IdResolver,
    OpaqueResolver,
    UntranslatableId,
    not_ours,
)
from middleware.mapping.ids_table import build_resolver
from middleware.mapping.references import ReferenceRewriter
from tests.unit.mapping.before import references as before_references
from tests.unit.mapping.builders import reader
from tests.unit.mapping.test_ids import (
    TABLE_FILE,
    TABLE_ROWS,
    TABLE_SETTINGS,
    local_ids,
    profile,
)

UP = "http://upstream.example/fhir"
GW = "https://gateway.example/fhir"


class Readable:
    """``hospital-a``'s ``1`` is ``c-1``; ``o-<id>`` is another upstream's; ``bad`` cannot be
    carried. Type-bound like the real ones: ``Observation`` ids are ``c-obs-<id>``."""

    def to_client(self, upstream: str, resource_type: str, local_id: str) -> str:
        if local_id == "bad":
            raise UntranslatableId("cannot")
        prefix = "c-" if upstream == "hospital-a" else "o-"
        return prefix + ("obs-" if resource_type == "Observation" else "") + local_id

    def to_upstream(self, resource_type: str, client_id: str) -> tuple[str, str]:
        obs = resource_type == "Observation"
        for prefix, upstream in (("c-", "hospital-a"), ("o-", "hospital-b")):
            head = prefix + ("obs-" if obs else "")
            rest = client_id.removeprefix(head)
            ours = rest != client_id and FHIR_ID.fullmatch(rest) is not None
            if ours and (obs or not rest.startswith("obs-")):
                return upstream, rest
        raise not_ours()


REWRITER = ReferenceRewriter(Readable(), "hospital-a", bases=[UP, GW + "/"])


def ref(value: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "subject": {"reference": value}}


# -- references ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream", "client"),
    [
        ("Patient/1", "Patient/c-1"),
        ("Patient/1/_history/2", "Patient/c-1/_history/2"),
        (f"{UP}/Patient/1", f"{UP}/Patient/c-1"),
        (f"{UP}/Patient/1/_history/2", f"{UP}/Patient/c-1/_history/2"),
        (f"{GW}/Patient/1", f"{GW}/Patient/c-1"),
        ("Observation/9", "Observation/c-obs-9"),
    ],
    ids=["relative", "history", "absolute", "absolute-history", "gateway-base", "typed"],
)
def test_references_are_rewritten_both_ways(upstream: str, client: str) -> None:
    assert REWRITER.to_client(ref(upstream)) == ref(client)
    assert REWRITER.to_upstream(ref(client)) == ref(upstream)


@pytest.mark.parametrize(
    "value",
    [
        "urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e",
        "urn:oid:1.2.3",
        "#contained-1",
        "#",
        "http://elsewhere.example/fhir/Patient/1",
        f"{UP}-other/Patient/1",
        "Patient",
        "patient/1",
    ],
    ids=[
        "urn-uuid",
        "urn-oid",
        "contained",
        "container",
        "other-server",
        "base-prefix",
        "bare-type",
        "lowercase",
    ],
)
def test_references_that_name_no_resource_of_ours_are_untouched(value: str) -> None:
    resource = ref(value)
    assert REWRITER.to_client(resource) is resource
    assert REWRITER.to_upstream(resource) is resource


def test_conditional_references_keep_their_text_toward_the_client() -> None:
    resource = ref("Patient?identifier=http://mrn|1")
    assert REWRITER.to_client(resource) is resource


def test_conditional_references_have_their_reference_values_rewritten_toward_the_upstream() -> None:
    out = REWRITER.to_upstream(ref("Observation?subject=Patient/c-1&code=http://loinc.org|1"))
    assert out == ref("Observation?subject=Patient/1&code=http://loinc.org|1")
    assert REWRITER.to_upstream(ref("Patient?identifier=x|1")) == ref("Patient?identifier=x|1")
    with pytest.raises(UnprocessableEntity):
        REWRITER.to_upstream(ref("Observation?subject=Patient/forged"))


@pytest.mark.parametrize(
    "value",
    ["Patient/forged", "Patient/o-1", "Patient/c-obs-1", f"{GW}/Patient/x"],
    ids=["forged", "other-upstream", "other-type", "absolute-forged"],
)
def test_a_client_reference_we_did_not_issue_for_this_upstream_is_a_422(value: str) -> None:
    with pytest.raises(UnprocessableEntity) as caught:
        REWRITER.to_upstream(ref(value))
    assert value not in caught.value.diagnostics


def test_an_upstream_id_that_cannot_be_carried_refuses_the_answer() -> None:
    with pytest.raises(UntranslatableId):
        REWRITER.to_client(ref("Patient/bad"))


# -- resource ids, contained resources, canonicals ----------------------------------------------


def test_resource_ids_are_rewritten_but_contained_and_element_ids_are_not() -> None:
    resource = {
        "resourceType": "Observation",
        "id": "9",
        "contained": [{"resourceType": "Patient", "id": "p1", "link": [{"id": "x"}]}],
        "subject": {"reference": "#p1"},
        "extension": [{"id": "ext-1", "url": "http://x", "valueString": "y"}],
        "component": [{"id": "comp-1"}],
    }
    out = REWRITER.to_client(resource)
    assert out == {**resource, "id": "c-obs-9"}
    assert REWRITER.to_upstream(out) == resource


def test_canonical_urls_are_never_touched() -> None:
    resource = {
        "resourceType": "PlanDefinition",
        "url": f"{UP}/PlanDefinition/1",
        "meta": {"profile": [f"{UP}/StructureDefinition/1"], "source": f"{UP}/Device/1"},
        "extension": [{"url": f"{UP}/StructureDefinition/x", "valueCanonical": f"{UP}/Patient/1"}],
        "library": [f"{UP}/Library/1"],
        "action": [{"definitionCanonical": f"{UP}/ActivityDefinition/1"}],
        "relatedArtifact": [{"type": "citation", "url": f"{UP}/Patient/1"}],
        "instantiatesCanonical": [f"{UP}/PlanDefinition/2"],
        "instantiatesUri": [f"{UP}/Patient/1"],
    }
    assert REWRITER.to_client(resource) is resource


def test_conceptmap_and_valueset_canonicals_are_never_touched() -> None:
    conceptmap = {
        "resourceType": "ConceptMap",
        "url": f"{UP}/ConceptMap/1",
        "sourceCanonical": f"{UP}/ValueSet/1",
        "group": [{"source": f"{UP}/CodeSystem/1", "element": []}],
    }
    valueset = {
        "resourceType": "ValueSet",
        "url": f"{UP}/ValueSet/1",
        "compose": {"include": [{"valueSet": [f"{UP}/ValueSet/2"], "system": f"{UP}/CS/1"}]},
    }
    assert REWRITER.to_client(conceptmap) is conceptmap
    assert REWRITER.to_client(valueset) is valueset


def test_a_create_drops_the_id_the_server_would_ignore() -> None:
    body = {
        "resourceType": "Patient",
        "id": "anything",
        "link": [{"other": {"reference": "Patient/c-2"}}],
    }
    assert REWRITER.to_upstream(body, create=True) == {
        "resourceType": "Patient",
        "link": [{"other": {"reference": "Patient/2"}}],
    }


def test_an_update_with_an_id_we_did_not_issue_is_not_found() -> None:
    with pytest.raises(NotFound):
        REWRITER.to_upstream({"resourceType": "Patient", "id": "forged"})


# -- Bundles ------------------------------------------------------------------------------------


def searchset() -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": "b1",
        "type": "searchset",
        "link": [
            {"relation": "self", "url": f"{UP}/Observation?subject=Patient/1"},
            {"relation": "related", "url": f"{UP}/Patient/1/_history/3"},
        ],
        "entry": [
            {
                "fullUrl": f"{UP}/Observation/9",
                "resource": {
                    "resourceType": "Observation",
                    "id": "9",
                    "subject": {"reference": "Patient/1"},
                    "valueQuantity": {"value": msgspec.Raw(b"5.40"), "unit": "mmol/L"},
                },
                "search": {"mode": "match"},
            },
            {
                "fullUrl": f"{UP}/Patient/1",
                "resource": {"resourceType": "Patient", "id": "1"},
                "search": {"mode": "include"},
            },
            {
                "resource": {
                    "resourceType": "Bundle",
                    "type": "collection",
                    "id": "inner",
                    "entry": [
                        {"fullUrl": "Patient/2", "resource": {"resourceType": "Patient", "id": "2"}}
                    ],
                }
            },
        ],
    }


def test_a_searchset_is_rewritten_in_every_place_that_names_an_id() -> None:
    out = REWRITER.to_client(searchset())
    assert out["id"] == "c-b1"
    assert [link["url"] for link in out["link"]] == [
        f"{UP}/Observation?subject=Patient/1",  # queries are the pipeline's (self link, cursors)
        f"{UP}/Patient/c-1/_history/3",
    ]
    first, included, nested = out["entry"]
    assert first["fullUrl"] == f"{UP}/Observation/c-obs-9"
    assert first["resource"]["id"] == "c-obs-9"
    assert first["resource"]["subject"] == {"reference": "Patient/c-1"}
    assert jsoncodec.encode(first["resource"]["valueQuantity"]) == b'{"value":5.40,"unit":"mmol/L"}'
    assert (included["fullUrl"], included["resource"]["id"]) == (f"{UP}/Patient/c-1", "c-1")
    assert nested["resource"]["id"] == "c-inner"
    assert nested["resource"]["entry"][0] == {
        "fullUrl": "Patient/c-2",
        "resource": {"resourceType": "Patient", "id": "c-2"},
    }
    assert REWRITER.to_upstream(out) == searchset()


def test_a_transaction_response_rewrites_locations_but_keeps_its_envelope_id() -> None:
    answer = {
        "resourceType": "Bundle",
        "id": "tx",
        "type": "transaction-response",
        "entry": [
            {"response": {"status": "201 Created", "location": "Patient/1/_history/1"}},
            {"response": {"status": "200 OK", "location": f"{UP}/Observation/9/_history/2"}},
            {"response": {"status": "204 No Content"}},
        ],
    }
    out = REWRITER.to_client(answer)
    assert out["id"] == "tx"
    assert [e["response"].get("location") for e in out["entry"]] == [
        "Patient/c-1/_history/1",
        f"{UP}/Observation/c-obs-9/_history/2",
        None,
    ]


def test_a_client_transaction_keeps_its_placeholders_and_resolves_its_ids() -> None:
    transaction = {
        "resourceType": "Bundle",
        "id": "client-chosen",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                "resource": {
                    "resourceType": "Observation",
                    "id": "tmp",
                    "subject": {"reference": "Patient/c-1"},
                },
                "request": {
                    "method": "POST",
                    "url": "Observation",
                    "ifNoneExist": "subject=Patient/c-1",
                },
            },
            {
                "fullUrl": f"{GW}/Patient/c-1",
                "resource": {
                    "resourceType": "Patient",
                    "id": "c-1",
                    "link": [
                        {"other": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}}
                    ],
                },
                "request": {"method": "PUT", "url": "Patient/c-1", "ifMatch": 'W/"2"'},
            },
            {"request": {"method": "GET", "url": "Observation?subject=Patient/c-1&_count=5"}},
            {"request": {"method": "DELETE", "url": "Observation/c-obs-4"}},
        ],
    }
    out = REWRITER.to_upstream(transaction)
    assert out["id"] == "client-chosen"
    create, update, search, delete = out["entry"]
    assert create["fullUrl"].startswith("urn:uuid:")
    assert create["resource"] == {
        "resourceType": "Observation",
        "subject": {"reference": "Patient/1"},
    }
    assert create["request"] == {
        "method": "POST",
        "url": "Observation",
        "ifNoneExist": "subject=Patient/1",
    }
    assert update["fullUrl"] == f"{GW}/Patient/1"
    assert update["resource"]["id"] == "1"
    assert update["resource"]["link"] == [
        {"other": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}}
    ]
    assert update["request"]["url"] == "Patient/1"
    assert search["request"]["url"] == "Observation?subject=Patient/1&_count=5"
    assert delete["request"]["url"] == "Observation/4"


@pytest.mark.parametrize(
    "url",
    ["Patient/forged", "Patient/forged/_history/1", "Patient/o-1/$everything"],
    ids=["read", "vread", "other-upstream-operation"],
)
def test_a_request_url_naming_an_id_we_did_not_issue_is_not_found(url: str) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": url}}],
    }
    with pytest.raises(NotFound):
        REWRITER.to_upstream(bundle)


# -- headers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream", "client"),
    [
        (f"{UP}/Patient/1/_history/2", f"{UP}/Patient/c-1/_history/2"),
        ("Patient/1/_history/2", "Patient/c-1/_history/2"),
        (f"{GW}/Observation/9", f"{GW}/Observation/c-obs-9"),
        ("http://elsewhere.example/Patient/1", "http://elsewhere.example/Patient/1"),
        (f"{UP}/Observation?subject=Patient/1", f"{UP}/Observation?subject=Patient/1"),
    ],
    ids=["absolute", "relative", "gateway", "elsewhere", "search"],
)
def test_location_headers(upstream: str, client: str) -> None:
    assert REWRITER.location(upstream, "client") == client
    assert REWRITER.location(client, "upstream") == upstream


# -- search parameters --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "params", "expected"),
    [
        # reference values
        ("Observation", [("subject", "Patient/c-1")], [("subject", "Patient/1")]),
        ("Observation", [("subject", f"{GW}/Patient/c-1")], [("subject", f"{GW}/Patient/1")]),
        ("Observation", [("subject:Patient", "c-1")], [("subject:Patient", "1")]),
        ("Observation", [("patient", "c-1")], [("patient", "1")]),
        ("Observation", [("subject", "Patient/c-1,Group/c-2")], [("subject", "Patient/1,Group/2")]),
        ("Observation", [("subject", "Patient/c-1,Patient/forged")], [("subject", "Patient/1")]),
        ("Observation", [("encounter", "Encounter/c-5")], [("encounter", "Encounter/5")]),
        # ids
        ("Observation", [("_id", "c-obs-1,c-obs-2")], [("_id", "1,2")]),
        ("Patient", [("_id", "c-1")], [("_id", "1")]),
        ("Observation", [("_list", "c-7")], [("_list", "7")]),
        ("Observation", [("_list", "$current-problems")], [("_list", "$current-problems")]),
        ("Observation", [("_id:not", "c-obs-1,forged")], [("_id:not", "1")]),
        ("Observation", [("_id:not", "forged")], []),
        ("Observation", [("subject:not", "Patient/c-1,Patient/1")], [("subject:not", "Patient/1")]),
        # no ids: unchanged
        ("Observation", [("subject", "c-1")], [("subject", "1")]),
        ("Observation", [("encounter", "c-5")], [("encounter", "c-5")]),
        ("Observation", [("subject.name", "Patient/c-1")], [("subject.name", "Patient/c-1")]),
        ("Observation", [("subject:Patient.name", "x")], [("subject:Patient.name", "x")]),
        ("Observation", [("subject:identifier", "x|1")], [("subject:identifier", "x|1")]),
        ("Observation", [("subject:missing", "true")], [("subject:missing", "true")]),
        (
            "Patient",
            [("_has:Observation:subject:code", "x|1")],
            [("_has:Observation:subject:code", "x|1")],
        ),
        ("Observation", [("code", "http://loinc.org|1")], [("code", "http://loinc.org|1")]),
        (
            "Observation",
            [("subject", "http://elsewhere/Patient/1")],
            [("subject", "http://elsewhere/Patient/1")],
        ),
        (
            "Observation",
            [("_profile", f"{GW}/StructureDefinition/x")],
            [("_profile", f"{GW}/StructureDefinition/x")],
        ),
        ("Observation", [("_count", "5"), ("_sort", "date")], [("_count", "5"), ("_sort", "date")]),
        ("Observation", [("focus", "Smith/Jones")], [("focus", "Smith/Jones")]),
    ],
    ids=[
        "relative",
        "absolute",
        "type-modifier",
        "patient-only-param",
        "or-list",
        "or-drops-forged",
        "non-compartment-param",
        "id",
        "patient-id",
        "list",
        "functional-list",
        "not-drops-forged",
        "not-left-empty-is-omitted",
        "reference-not",
        "bare-compartment-param",
        "bare-other-param-unresolved",
        "chained",
        "chained-typed",
        "identifier",
        "missing",
        "has",
        "token",
        "other-server",
        "canonical",
        "result-params",
        "not-a-resource-type",
    ],
)
def test_search_parameters_toward_the_upstream(
    kind: str, params: list[tuple[str, str]], expected: list[tuple[str, str]]
) -> None:
    result = REWRITER.search(kind, params)
    assert list(result.params) == expected
    assert result.matches_nothing is False


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("Observation", [("subject", "Patient/forged")]),
        ("Observation", [("subject", "Patient/o-1")]),
        ("Observation", [("_id", "c-1")]),  # a Patient id is no Observation id
        ("Observation", [("patient", "forged"), ("code", "x|1")]),
        (None, [("_id", "c-1")]),
        ("Observation", [("subject", "forged")]),
        ("Observation", [("subject", "1")]),  # an upstream's own id is not a client id
        ("Observation", [("_id", "c-obs-1\\,x")]),  # escapes: ids never hold them
    ],
    ids=[
        "forged",
        "other-upstream",
        "other-type",
        "one-of-several",
        "system-level-id",
        "bare-forged",
        "bare-upstream-id",
        "escaped-id",
    ],
)
def test_a_search_naming_only_ids_we_did_not_issue_matches_nothing(
    kind: str | None, params: list[tuple[str, str]]
) -> None:
    assert REWRITER.search(kind, params).matches_nothing is True


def test_a_bare_id_that_several_types_issued_must_be_typed() -> None:
    rows = {
        "ids": [
            {"type": t, "upstream": u, "client": "alice"}
            for t, u in (("Patient", "1"), ("Practitioner", "2"))
        ]
    }
    resolver = build_resolver(
        [profile("a", "hospital-a", TABLE_SETTINGS)], bytes(range(32)), reader({TABLE_FILE: rows})
    )
    rewriter = ReferenceRewriter(resolver, "hospital-a")
    with pytest.raises(BadRequest):
        rewriter.search("Observation", [("performer", "alice")])
    assert rewriter.search("Observation", [("performer", "Practitioner/alice")]).params == (
        ("performer", "Practitioner/2"),
    )


def test_conditional_creates_whose_criteria_cannot_match_just_create() -> None:
    entry = {
        "resource": {"resourceType": "Observation", "subject": {"reference": "Patient/c-1"}},
        "request": {
            "method": "POST",
            "url": "Observation",
            "ifNoneExist": "subject=Patient/forged",
        },
    }
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
    assert REWRITER.to_upstream(bundle)["entry"][0]["request"] == {
        "method": "POST",
        "url": "Observation",
    }
    entry["request"] = {"method": "GET", "url": "Observation?subject=Patient/forged"}
    with pytest.raises(UnprocessableEntity):
        REWRITER.to_upstream(bundle)


# -- copy-on-write and limits -------------------------------------------------------------------


def test_nothing_is_copied_or_changed_in_place() -> None:
    original = searchset()
    before = copy.deepcopy(original)
    out = REWRITER.to_client(original)
    assert original == before
    assert out is not original
    untouched = {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}
    assert REWRITER.to_client(untouched) is untouched
    assert REWRITER.to_client([1, "x"]) == [1, "x"]


def test_decimals_pass_through_verbatim() -> None:
    body = jsoncodec.decode(
        b'{"resourceType":"Observation","id":"9","valueQuantity":{"value":5.40}}'
    )
    assert jsoncodec.encode(REWRITER.to_client(body)) == (
        b'{"resourceType":"Observation","id":"c-obs-9","valueQuantity":{"value":5.40}}'
    )


def test_a_hostile_depth_is_refused_not_a_crash() -> None:
    deep: Any = {"reference": "Patient/1"}
    for _ in range(300):
        deep = {"extension": [deep]}
    with pytest.raises(UpstreamError):
        REWRITER.to_client({"resourceType": "Basic", **deep})
    with pytest.raises(BadRequest):
        REWRITER.to_upstream({"resourceType": "Basic", **deep})


def test_id_helper_checks_the_upstream() -> None:
    assert REWRITER.id("Patient", "1", "client") == "c-1"
    assert REWRITER.id("Patient", "c-1", "upstream") == "1"
    with pytest.raises(NotFound):
        REWRITER.id("Patient", "o-1", "upstream")


# -- round trips with the real resolvers --------------------------------------------------------


def real_resolvers() -> list[IdResolver]:
    opaque = OpaqueResolver(bytes(range(32)), ["hospital-a", "hospital-b"])
    table = build_resolver(
        [profile("a", "hospital-a", TABLE_SETTINGS), profile("b", "hospital-b")],
        bytes(range(32)),
        reader({TABLE_FILE: TABLE_ROWS}),
    )
    return [opaque, table]


@pytest.mark.parametrize("resolver", real_resolvers(), ids=["opaque", "table"])
def test_to_client_then_to_upstream_is_the_identity(resolver: IdResolver) -> None:
    rewriter = ReferenceRewriter(resolver, "hospital-a", bases=[UP])
    bundle = searchset()
    bundle["entry"][1]["resource"]["id"] = "12345"  # listed in the table
    bundle["entry"][1]["fullUrl"] = f"{UP}/Patient/12345"
    client = rewriter.to_client(bundle)
    assert 'Patient/1"' not in jsoncodec.encode(client["entry"]).decode()
    assert rewriter.to_upstream(client) == bundle
    assert rewriter.location(rewriter.location("Patient/1/_history/1", "client"), "upstream") == (
        "Patient/1/_history/1"
    )


@given(patient=local_ids, observation=local_ids, version=st.integers(1, 99))
def test_round_trip_property(patient: str, observation: str, version: int) -> None:
    rewriter = ReferenceRewriter(real_resolvers()[0], "hospital-a", bases=[UP])
    resource = {
        "resourceType": "Observation",
        "id": observation,
        "subject": {"reference": f"Patient/{patient}/_history/{version}"},
        "performer": [{"reference": f"{UP}/Patient/{patient}"}],
    }
    client = rewriter.to_client(resource)
    assert len(client["id"]) in CLIENT_ID_LENGTHS
    assert (
        client["subject"]["reference"].split("/")[1]
        == client["performer"][0]["reference"].split("/")[-1]
    )
    assert rewriter.to_upstream(client) == resource


# -- the walk gives what it gave before its speed work ------------------------------------------

BEFORE = before_references.ReferenceRewriter(Readable(), "hospital-a", bases=[UP, GW + "/"])
_STRINGS = [
    *("Patient/1", "Patient/bad", "Observation/2", "Patient/c-1", "Patient/o-3", "Patient/"),
    *("Patient/1/_history/2", "Patient/$everything", "Patient/_search?x=1", "patient/1"),
    *("Patient?identifier=x", "Patient?subject=Patient/c-1", "Pat?x/y", "Patient/1?x=y"),
    *("#c1", "urn:uuid:1", f"{UP}/Patient/1", f"{GW}/Patient/c-1", "http://other/fhir/Patient/1"),
    *("Observation/c-obs-2", "Bundle", "Patient", "Observation", "POST", "GET", "transaction"),
    *("searchset", "c-1", "1", "", "a:b/c", "Observation?subject=Patient/c-1"),
    *("Observation?patient=c-1", "Observation?subject=Patient/c-9/x"),
    *(f"{UP}/Observation/9", f"{GW}/Patient/forged", "Basic/1", "notatype/1", f"{UP}/metadata"),
]
_KEYS = ["reference", "id", "resourceType", "contained", "entry", "link", "fullUrl", "url"]
_KEYS += ["request", "response", "location", "ifNoneExist", "method", "type", "resource", "x"]
_KEYS += ["extension", "valueUri", "valueUrl", "search"]
_KEYS += ["attachment", "content", "photo", "valueAttachment", "contentAttachment"]
trees = st.recursive(
    st.sampled_from(_STRINGS) | st.integers(0, 3) | st.none(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), inner),
    max_leaves=25,
)


def _outcome(walk: Callable[..., Any], *args: Any, **options: Any) -> Any:
    """What a walk gives, or the error it raises (type and message), for comparing two."""
    try:
        return walk(*args, **options)
    except Exception as exc:  # noqa: BLE001 - any error must be the same error
        return (type(exc), str(exc))


@settings(max_examples=400, deadline=None)
@given(document=trees, create=st.booleans())
def test_the_walk_gives_what_it_gave_before_its_speed_work(document: Any, create: bool) -> None:
    """Both directions, on any tree of the elements the walk looks at: the same document or
    the same error as the walk before its fast paths (``tests/unit/mapping/before``)."""
    snapshot = copy.deepcopy(document)
    assert _outcome(REWRITER.to_client, document) == _outcome(BEFORE.to_client, document)
    assert _outcome(REWRITER.to_upstream, document, create=create) == _outcome(
        BEFORE.to_upstream, document, create=create
    )
    assert document == snapshot


_RESOURCES = [
    {
        "resourceType": "Observation",
        "id": "1",
        "contained": [{"resourceType": "Patient", "id": "1"}],
    },
    {"resourceType": "Observation", "id": "c-obs-1", "subject": {"reference": "#p"}},
    {
        "resourceType": "Bundle",
        "type": "transaction",
        "id": "1",
        "entry": [
            {
                "fullUrl": "urn:uuid:1",
                "resource": {"resourceType": "Patient", "id": "c-1"},
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=x"},
            },
            {"request": {"method": "GET", "url": "Observation?subject=Patient/c-1"}},
            {
                "request": {"method": "PUT", "url": "Patient/c-1"},
                "resource": {"resourceType": "Patient"},
            },
        ],
    },
    {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"url": f"{UP}/Patient/1"}],
        "entry": [
            {
                "fullUrl": f"{UP}/Patient/1",
                "resource": {"resourceType": "Patient", "id": "1"},
                "response": {"location": "Patient/1/_history/1"},
            },
        ],
    },
]


@pytest.mark.parametrize(
    "document", _RESOURCES, ids=["contained", "anchor", "transaction", "searchset"]
)
def test_these_documents_walk_as_before(document: Any) -> None:
    """Shapes the random trees rarely reach: contained resources, Bundles with requests."""
    for create in (False, True):
        assert _outcome(REWRITER.to_client, document) == _outcome(BEFORE.to_client, document)
        assert _outcome(REWRITER.to_upstream, document, create=create) == _outcome(
            BEFORE.to_upstream, document, create=create
        )


@pytest.mark.parametrize("depth", [254, 255, 256, 257, 258])
@pytest.mark.parametrize("leaf", ["x", {"reference": "Patient/1"}, []], ids=["str", "dict", "list"])
def test_the_depth_limit_is_where_it_was(depth: int, leaf: Any) -> None:
    """Lists nested ``depth`` deep around a leaf: refused (or not) as before, leaves in lists
    counted as one level down."""
    document: Any = leaf
    for _ in range(depth):
        document = [document]
    for toward in ("client", "upstream"):
        new = REWRITER.to_client if toward == "client" else REWRITER.to_upstream
        old = BEFORE.to_client if toward == "client" else BEFORE.to_upstream
        assert _outcome(new, document) == _outcome(old, document)


# -- every element of a Bundle entry, and the Bundle's own links --------------------------------


def _ext(place: str, value: str) -> dict[str, Any]:
    """An extension whose value names ``value`` the way ``place`` says."""
    if place == "reference":
        return {"url": "http://x/ref", "valueReference": {"reference": value}}
    return {"url": "http://x/uri", place: value}


def entry_links(patient: str, obs: str, *, base: str = UP) -> dict[str, Any]:
    """A Bundle naming ``Patient/<patient>`` (and one Observation) in each element of an entry
    that is neither its ``fullUrl``, ``request``, ``response`` nor ``resource``, and in its own
    links' and extensions' (R4 Bundle.entry.link, Element.extension, BackboneElement
    .modifierExtension, Bundle.entry.search)."""
    named = f"Patient/{patient}"
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "link": [
            {
                "relation": "related",
                "url": f"{base}/{named}",
                "extension": [_ext("reference", named)],
            }
        ],
        "extension": [_ext("valueUri", f"{base}/{named}")],
        "entry": [
            {
                "link": [
                    {"relation": "alternate", "url": f"{base}/{named}/_history/2"},
                    {"relation": "related", "url": f"Observation/{obs}"},
                    {"relation": "x", "url": "Patient", "extension": [_ext("reference", named)]},
                ],
                "extension": [
                    _ext("reference", named),
                    _ext("valueUri", f"{base}/{named}"),
                    _ext("valueUrl", named),
                ],
                "modifierExtension": [_ext("reference", f"{base}/{named}")],
                "search": {"mode": "match", "extension": [_ext("reference", named)]},
                "request": {
                    "method": "GET",
                    "url": named,
                    "extension": [_ext("valueUri", named)],
                },
                "response": {"status": "200", "extension": [_ext("reference", named)]},
                "resource": {"resourceType": "Basic", "extension": [_ext("valueUri", named)]},
            }
        ],
    }


def test_every_element_of_an_entry_and_the_bundles_links_carry_the_clients_ids() -> None:
    """Entry links, extensions (a Reference, or a uri/url naming a resource of this upstream,
    absolute or relative), modifier extensions, search and request extensions, and the
    Bundle's own link extensions: none keeps the upstream's id; back toward the upstream,
    the same document as the upstream's."""
    out = REWRITER.to_client(entry_links("1", "9"))
    assert out == entry_links("c-1", "c-obs-9")
    assert REWRITER.to_upstream(out) == entry_links("1", "9")


@pytest.mark.parametrize(
    "place",
    [
        ("link", 0, "url"),
        ("link", 0, "extension", 0, "valueReference", "reference"),
        ("extension", 0, "valueUri"),
        ("entry", 0, "link", 0, "url"),
        ("entry", 0, "link", 2, "extension", 0, "valueReference", "reference"),
        ("entry", 0, "extension", 0, "valueReference", "reference"),
        ("entry", 0, "extension", 1, "valueUri"),
        ("entry", 0, "extension", 2, "valueUrl"),
        ("entry", 0, "modifierExtension", 0, "valueReference", "reference"),
        ("entry", 0, "search", "extension", 0, "valueReference", "reference"),
        ("entry", 0, "request", "extension", 0, "valueUri"),
    ],
    ids=[
        "bundle-link",
        "bundle-link-extension",
        "bundle-extension-uri",
        "entry-link",
        "entry-link-extension",
        "entry-extension-reference",
        "entry-extension-uri",
        "entry-extension-url",
        "entry-modifier-extension",
        "entry-search-extension",
        "entry-request-extension",
    ],
)
def test_an_untranslatable_id_in_any_element_of_an_entry_refuses_the_answer(
    place: tuple[str | int, ...],
) -> None:
    """Only this one place names ``Patient/bad``: the answer is refused, not released with it."""
    document: Any = copy.deepcopy(entry_links("1", "9"))
    holder = document
    for step in place[:-1]:
        holder = holder[step]
    holder[place[-1]] = holder[place[-1]].replace("Patient/1", "Patient/bad")
    assert "Patient/bad" in jsoncodec.encode(document).decode()
    with pytest.raises(UntranslatableId):
        REWRITER.to_client(document)


@pytest.mark.parametrize(
    ("place", "error"),
    [
        (("entry", 0, "extension", 0, "valueReference", "reference"), UnprocessableEntity),
        (("entry", 0, "modifierExtension", 0, "valueReference", "reference"), UnprocessableEntity),
        (
            ("entry", 0, "search", "extension", 0, "valueReference", "reference"),
            UnprocessableEntity,
        ),
        (("entry", 0, "link", 0, "url"), NotFound),  # as a fullUrl or Bundle.link.url
        (("link", 0, "url"), NotFound),
    ],
    ids=[
        "extension-reference",
        "modifier-extension",
        "search-extension",
        "entry-link",
        "bundle-link",
    ],
)
def test_a_client_id_we_did_not_issue_in_any_element_of_an_entry_is_refused(
    place: tuple[str | int, ...], error: type[Exception]
) -> None:
    """Writes: a client's Bundle naming an id this upstream never issued, in one element."""
    document: Any = copy.deepcopy(entry_links("c-1", "c-obs-9", base=GW))
    holder = document
    for step in place[:-1]:
        holder = holder[step]
    holder[place[-1]] = holder[place[-1]].replace("Patient/c-1", "Patient/forged")
    with pytest.raises(error):
        REWRITER.to_upstream(document)


@pytest.mark.parametrize(
    "place",
    [("entry", 0, "extension", 1, "valueUri"), ("entry", 0, "request", "extension", 0, "valueUri")],
    ids=["extension-uri", "request-extension"],
)
def test_a_client_uri_naming_an_id_we_did_not_issue_is_left_as_written(
    place: tuple[str | int, ...],
) -> None:
    """Writes: a uri is not a reference (``Questionnaire/phq9`` in a QuestionnaireResponse
    answer may be a name), so one naming nothing the gateway issued reaches the upstream as
    the client wrote it, where it was a 422 before; references stay refused (above)."""
    document: Any = copy.deepcopy(entry_links("c-1", "c-obs-9", base=GW))
    holder = document
    for step in place[:-1]:
        holder = holder[step]
    holder[place[-1]] = holder[place[-1]].replace("Patient/c-1", "Patient/forged")
    written = holder[place[-1]]
    out = REWRITER.to_upstream(document)
    for step in place:
        out = out[step]
    assert out == written
    assert "forged" in out


def test_uris_that_name_no_resource_of_this_upstream_are_untouched() -> None:
    """Another server's URL, a URN, a relative path that is no resource type, a canonical:
    not locations of this upstream's resources."""
    values = [
        "http://elsewhere.example/fhir/Patient/1",
        "urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e",
        "notatype/1",
        "Unknowntype/1",
        f"{UP}/metadata",
        "Patient",
    ]
    extensions = [_ext(kind, v) for v in values for kind in ("valueUri", "valueUrl")]
    extensions.append({"url": "http://x", "valueCanonical": f"{UP}/Patient/1"})
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"extension": extensions, "resource": {"resourceType": "Basic"}}],
    }
    resource = {"resourceType": "Basic", "extension": extensions}
    for document in (bundle, resource):
        assert REWRITER.to_client(document) is document
        assert REWRITER.to_upstream(document) is document


def _in_document_reference(attachment: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "DocumentReference", "content": [{"attachment": attachment}]}


def _in_presented_form(attachment: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "DiagnosticReport", "presentedForm": [attachment]}


def _in_extension(attachment: dict[str, Any]) -> dict[str, Any]:
    extension = {"url": "http://x/a", "valueAttachment": attachment}
    return {"resourceType": "Observation", "extension": [extension]}


@pytest.mark.parametrize(
    "build",
    [_in_document_reference, _in_presented_form, _in_extension],
    ids=["document-reference", "presented-form", "extension"],
)
@pytest.mark.parametrize("written", ["Binary/b-9", f"{UP}/Binary/b-9"])
def test_an_attachment_url_naming_an_upstream_binary_gets_the_clients_id(
    build: Callable[[dict[str, Any]], dict[str, Any]], written: str
) -> None:
    """The attack: ``attachment.url = Binary/<upstream id>`` (the most common upstream URL
    inside a resource) used to reach the client as the upstream wrote it, handing it the
    upstream's own id the mapping hides. Both walks rewrite it, and back again."""
    rewriter = ReferenceRewriter(real_resolvers()[0], "hospital-a", bases=[UP])
    document = {**build({"contentType": "application/pdf", "url": written}), "id": "d-1"}
    copied = rewriter.to_client(document)
    owned = copy.deepcopy(document)
    assert rewriter.to_client_in_place(owned)
    assert owned == copied
    assert "b-9" not in jsoncodec.encode(copied).decode()
    assert rewriter.to_upstream(copied) == document


def test_an_attachment_url_of_another_server_or_no_resource_is_left_as_written() -> None:
    rewriter = ReferenceRewriter(real_resolvers()[0], "hospital-a", bases=[UP])
    for url in ["http://elsewhere.example/Binary/1", "urn:uuid:1", "files/a.pdf", "#x"]:
        resource = {"resourceType": "Patient", "id": "p", "photo": [{"url": url}]}
        assert rewriter.to_client(resource)["photo"] == [{"url": url}]
        forged = {"resourceType": "Patient", "photo": [{"url": "Binary/forged"}]}
        assert rewriter.to_upstream(forged) == forged  # a uri, not a reference: as written
