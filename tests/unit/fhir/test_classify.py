"""The classification table of FHIR R4 REST (http://hl7.org/fhir/R4/http.html): each accepted
shape becomes exactly one FhirRequest; everything else is refused with one exact error class."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.errors import (
    BadRequest,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PathRejected,
    UnsupportedMediaType,
)
from middleware.fhir.classify import classify, classify_bundle
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.fhir.resource_types import RESOURCE_TYPES

Act = Interaction
SYSTEM, TYPE, INSTANCE = Level.SYSTEM, Level.TYPE, Level.INSTANCE

FORM = (("content-type", "application/x-www-form-urlencoded"),)
JSON_PATCH = (("content-type", "application/json-patch+json"),)
FHIR_JSON = (("content-type", "application/fhir+json"),)
ID64 = "a" * 64
ID65 = "a" * 65


@dataclass(frozen=True)
class Accept:
    name: str
    method: str
    path: str
    expected: FhirRequest
    query: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    base: str = "/fhir"


@dataclass(frozen=True)
class Reject:
    name: str
    method: str
    path: str
    error: type[GatewayError]
    status: int
    query: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    raw: bytes | None = None
    base: str = "/fhir"
    allowed: tuple[str, ...] | None = None


def run(
    method: str,
    path: str,
    *,
    query: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (),
    raw: bytes | None = None,
    base: str = "/fhir",
) -> FhirRequest:
    raw_path = raw if raw is not None else path.encode("utf-8")
    return classify(method, path, raw_path, query, dict(headers), base_path=base)


req = FhirRequest


ACCEPTS = [
    # capabilities
    Accept(
        "capabilities", "GET", "/fhir/metadata", req(Act.CAPABILITIES, "GET", SYSTEM, "metadata")
    ),
    Accept(
        "capabilities-query",
        "GET",
        "/fhir/metadata",
        req(Act.CAPABILITIES, "GET", SYSTEM, "metadata", query=b"_format=json"),
        query=b"_format=json",
    ),
    # instance level
    Accept(
        "read",
        "GET",
        "/fhir/Patient/123",
        req(Act.READ, "GET", INSTANCE, "Patient/123", resource_type="Patient", resource_id="123"),
    ),
    Accept(
        "read-id-dots-dashes",
        "GET",
        "/fhir/Observation/a-B.9",
        req(
            Act.READ,
            "GET",
            INSTANCE,
            "Observation/a-B.9",
            resource_type="Observation",
            resource_id="a-B.9",
        ),
    ),
    Accept(
        "read-id-64-chars",
        "GET",
        f"/fhir/Patient/{ID64}",
        req(
            Act.READ, "GET", INSTANCE, f"Patient/{ID64}", resource_type="Patient", resource_id=ID64
        ),
    ),
    Accept(
        "update",
        "PUT",
        "/fhir/Patient/123",
        req(Act.UPDATE, "PUT", INSTANCE, "Patient/123", resource_type="Patient", resource_id="123"),
    ),
    Accept(
        "patch-json-patch",
        "PATCH",
        "/fhir/Patient/123",
        req(
            Act.PATCH,
            "PATCH",
            INSTANCE,
            "Patient/123",
            resource_type="Patient",
            resource_id="123",
            patch_format="json-patch",
        ),
        headers=JSON_PATCH,
    ),
    Accept(
        "patch-fhirpath-charset",
        "PATCH",
        "/fhir/Patient/123",
        req(
            Act.PATCH,
            "PATCH",
            INSTANCE,
            "Patient/123",
            resource_type="Patient",
            resource_id="123",
            patch_format="fhirpath-patch",
        ),
        headers=(("content-type", "application/fhir+json; charset=utf-8"),),
    ),
    Accept(
        "patch-media-type-case-insensitive",
        "PATCH",
        "/fhir/Patient/123",
        req(
            Act.PATCH,
            "PATCH",
            INSTANCE,
            "Patient/123",
            resource_type="Patient",
            resource_id="123",
            patch_format="json-patch",
        ),
        headers=(("content-type", "Application/JSON-Patch+JSON"),),
    ),
    Accept(
        "delete",
        "DELETE",
        "/fhir/Patient/123",
        req(
            Act.DELETE,
            "DELETE",
            INSTANCE,
            "Patient/123",
            resource_type="Patient",
            resource_id="123",
        ),
    ),
    # history and vread
    Accept(
        "vread",
        "GET",
        "/fhir/Patient/123/_history/2",
        req(
            Act.VREAD,
            "GET",
            INSTANCE,
            "Patient/123/_history/2",
            resource_type="Patient",
            resource_id="123",
            version_id="2",
        ),
    ),
    Accept(
        "history-instance",
        "GET",
        "/fhir/Patient/123/_history",
        req(
            Act.HISTORY_INSTANCE,
            "GET",
            INSTANCE,
            "Patient/123/_history",
            resource_type="Patient",
            resource_id="123",
        ),
    ),
    Accept(
        "history-type",
        "GET",
        "/fhir/Patient/_history",
        req(Act.HISTORY_TYPE, "GET", TYPE, "Patient/_history", resource_type="Patient"),
    ),
    Accept(
        "history-system",
        "GET",
        "/fhir/_history",
        req(Act.HISTORY_SYSTEM, "GET", SYSTEM, "_history", query=b"_since=2024-01-01"),
        query=b"_since=2024-01-01",
    ),
    # create, plain and conditional
    Accept(
        "create",
        "POST",
        "/fhir/Patient",
        req(Act.CREATE, "POST", TYPE, "Patient", resource_type="Patient"),
    ),
    Accept(
        "create-conditional",
        "POST",
        "/fhir/Patient",
        req(Act.CREATE, "POST", TYPE, "Patient", resource_type="Patient", conditional=True),
        headers=(("if-none-exist", "identifier=http://x|1"),),
    ),
    Accept(
        "create-empty-if-none-exist-is-plain",
        "POST",
        "/fhir/Patient",
        req(Act.CREATE, "POST", TYPE, "Patient", resource_type="Patient"),
        headers=(("if-none-exist", " "),),
    ),
    # conditional update / patch / delete
    Accept(
        "conditional-update",
        "PUT",
        "/fhir/Patient",
        req(
            Act.UPDATE,
            "PUT",
            TYPE,
            "Patient",
            query=b"identifier=x|1",
            resource_type="Patient",
            conditional=True,
        ),
        query=b"identifier=x|1",
    ),
    Accept(
        "conditional-patch",
        "PATCH",
        "/fhir/Patient",
        req(
            Act.PATCH,
            "PATCH",
            TYPE,
            "Patient",
            query=b"_id=1",
            resource_type="Patient",
            conditional=True,
            patch_format="json-patch",
        ),
        query=b"_id=1",
        headers=JSON_PATCH,
    ),
    Accept(
        "conditional-delete",
        "DELETE",
        "/fhir/Patient",
        req(
            Act.DELETE,
            "DELETE",
            TYPE,
            "Patient",
            query=b"_format=json&name=x",
            resource_type="Patient",
            conditional=True,
        ),
        query=b"_format=json&name=x",
    ),
    # search at type and system level
    Accept(
        "search-type",
        "GET",
        "/fhir/Observation",
        req(
            Act.SEARCH_TYPE,
            "GET",
            TYPE,
            "Observation",
            query=b"code=1234-5",
            resource_type="Observation",
        ),
        query=b"code=1234-5",
    ),
    Accept(
        "search-type-no-query",
        "GET",
        "/fhir/Observation",
        req(Act.SEARCH_TYPE, "GET", TYPE, "Observation", resource_type="Observation"),
    ),
    Accept(
        "search-type-post",
        "POST",
        "/fhir/Observation/_search",
        req(
            Act.SEARCH_TYPE,
            "POST",
            TYPE,
            "Observation/_search",
            resource_type="Observation",
            via_post=True,
        ),
        headers=(("content-type", "application/x-www-form-urlencoded; charset=utf-8"),),
    ),
    Accept("search-system", "GET", "/fhir", req(Act.SEARCH_SYSTEM, "GET", SYSTEM, "")),
    Accept(
        "search-system-query",
        "GET",
        "/fhir",
        req(Act.SEARCH_SYSTEM, "GET", SYSTEM, "", query=b"_type=Patient"),
        query=b"_type=Patient",
    ),
    Accept(
        "search-system-post",
        "POST",
        "/fhir/_search",
        req(Act.SEARCH_SYSTEM, "POST", SYSTEM, "_search", via_post=True),
        headers=FORM,
    ),
    # compartment search
    Accept(
        "search-compartment",
        "GET",
        "/fhir/Patient/123/Observation",
        req(
            Act.SEARCH_COMPARTMENT,
            "GET",
            TYPE,
            "Patient/123/Observation",
            resource_type="Observation",
            compartment=("Patient", "123"),
        ),
    ),
    Accept(
        "search-compartment-encounter",
        "GET",
        "/fhir/Encounter/e1/Condition",
        req(
            Act.SEARCH_COMPARTMENT,
            "GET",
            TYPE,
            "Encounter/e1/Condition",
            resource_type="Condition",
            compartment=("Encounter", "e1"),
        ),
    ),
    Accept(
        "search-compartment-post",
        "POST",
        "/fhir/Patient/123/Observation/_search",
        req(
            Act.SEARCH_COMPARTMENT,
            "POST",
            TYPE,
            "Patient/123/Observation/_search",
            resource_type="Observation",
            compartment=("Patient", "123"),
            via_post=True,
        ),
        headers=FORM,
    ),
    # batch / transaction (provisional until classify_bundle)
    Accept("batch-provisional", "POST", "/fhir", req(Act.BATCH, "POST", SYSTEM, "")),
    # POST [base]/ is POST [base] (clients post transactions there); the only slash allowed
    Accept("batch-base-slash", "POST", "/fhir/", req(Act.BATCH, "POST", SYSTEM, "")),
    Accept(
        "batch-nested-base-slash",
        "POST",
        "/api/r4/",
        req(Act.BATCH, "POST", SYSTEM, ""),
        base="/api/r4",
    ),
    Accept(
        "batch-base-given-with-slash",
        "POST",
        "/fhir/",
        req(Act.BATCH, "POST", SYSTEM, ""),
        base="/fhir/",
    ),
    Accept("batch-root-base", "POST", "/", req(Act.BATCH, "POST", SYSTEM, ""), base=""),
    # operations
    Accept(
        "operation-system-get",
        "GET",
        "/fhir/$export",
        req(Act.OPERATION, "GET", SYSTEM, "$export", operation="$export"),
    ),
    Accept(
        "operation-system-post",
        "POST",
        "/fhir/$process-message",
        req(Act.OPERATION, "POST", SYSTEM, "$process-message", operation="$process-message"),
    ),
    Accept(
        "operation-type",
        "POST",
        "/fhir/Patient/$match",
        req(
            Act.OPERATION,
            "POST",
            TYPE,
            "Patient/$match",
            resource_type="Patient",
            operation="$match",
        ),
    ),
    Accept(
        "operation-instance",
        "GET",
        "/fhir/Patient/123/$everything",
        req(
            Act.OPERATION,
            "GET",
            INSTANCE,
            "Patient/123/$everything",
            resource_type="Patient",
            resource_id="123",
            operation="$everything",
        ),
    ),
    Accept(
        "operation-name-underscore",
        "GET",
        "/fhir/$my_op-2",
        req(Act.OPERATION, "GET", SYSTEM, "$my_op-2", operation="$my_op-2"),
    ),
    Accept(
        "graphql-system",
        "GET",
        "/fhir/$graphql",
        req(Act.GRAPHQL, "GET", SYSTEM, "$graphql", query=b"query=x", operation="$graphql"),
        query=b"query=x",
    ),
    Accept(
        "graphql-instance",
        "POST",
        "/fhir/Patient/123/$graphql",
        req(
            Act.GRAPHQL,
            "POST",
            INSTANCE,
            "Patient/123/$graphql",
            resource_type="Patient",
            resource_id="123",
            operation="$graphql",
        ),
    ),
    # other base paths
    Accept(
        "root-base-read",
        "GET",
        "/Patient/1",
        req(Act.READ, "GET", INSTANCE, "Patient/1", resource_type="Patient", resource_id="1"),
        base="",
    ),
    Accept(
        "root-base-search-system", "GET", "/", req(Act.SEARCH_SYSTEM, "GET", SYSTEM, ""), base=""
    ),
    Accept(
        "root-base-metadata",
        "GET",
        "/metadata",
        req(Act.CAPABILITIES, "GET", SYSTEM, "metadata"),
        base="",
    ),
    Accept(
        "nested-base",
        "GET",
        "/api/r4/Patient",
        req(Act.SEARCH_TYPE, "GET", TYPE, "Patient", resource_type="Patient"),
        base="/api/r4",
    ),
    Accept(
        "base-given-with-trailing-slash",
        "GET",
        "/fhir/Patient",
        req(Act.SEARCH_TYPE, "GET", TYPE, "Patient", resource_type="Patient"),
        base="/fhir/",
    ),
]


@pytest.mark.parametrize("case", ACCEPTS, ids=[case.name for case in ACCEPTS])
def test_classify_accepts(case: Accept) -> None:
    """Each FHIR REST shape becomes exactly the expected FhirRequest, every field included."""
    got = run(case.method, case.path, query=case.query, headers=case.headers, base=case.base)
    assert got == case.expected


INSTANCE_METHODS = ("GET", "PUT", "PATCH", "DELETE")

REJECTS = [
    # path tricks
    Reject("trailing-slash", "GET", "/fhir/Patient/1/", PathRejected, 400),
    Reject("base-trailing-slash", "GET", "/fhir/", PathRejected, 400),
    Reject("post-base-two-slashes", "POST", "/fhir//", PathRejected, 400),
    Reject("post-type-trailing-slash", "POST", "/fhir/Patient/", PathRejected, 400),
    Reject("post-search-trailing-slash", "POST", "/fhir/_search/", PathRejected, 400),
    Reject("put-base-trailing-slash", "PUT", "/fhir/", PathRejected, 400),
    Reject("post-base-slash-encoded", "POST", "/fhir/", PathRejected, 400, raw=b"/fhir%2F"),
    Reject("empty-segment", "GET", "/fhir//Patient", PathRejected, 400),
    Reject("dot-dot-segment", "GET", "/fhir/Patient/../Observation", PathRejected, 400),
    Reject("dot-segment", "GET", "/fhir/./Patient", PathRejected, 400),
    Reject("dot-dot-into-base", "GET", "/fhirx/../fhir/Patient", PathRejected, 400),
    Reject("matrix-parameter", "GET", "/fhir/Patient/1;x=y", PathRejected, 400),
    Reject("semicolon-in-base", "GET", "/fhir;v=1/Patient", PathRejected, 400),
    Reject("backslash", "GET", "/fhir/Patient\\1", PathRejected, 400),
    Reject("nul", "GET", "/fhir/Patient/1\x00", PathRejected, 400),
    Reject("newline", "GET", "/fhir/Patient/1\n", PathRejected, 400),
    Reject("del-char", "GET", "/fhir/Patient/1\x7f", PathRejected, 400),
    Reject("c1-control", "GET", "/fhir/Patient/1\x85", PathRejected, 400),
    Reject("percent-left-after-decoding", "GET", "/fhir/Patient/%2F1", PathRejected, 400),
    Reject("relative-path", "GET", "fhir/Patient", PathRejected, 400),
    Reject("empty-path", "GET", "", PathRejected, 400),
    Reject(
        "raw-encoded-slash",
        "GET",
        "/fhir/Patient/1",
        PathRejected,
        400,
        raw=b"/fhir/Patient%2F1",
    ),
    Reject(
        "raw-encoded-slash-lower",
        "GET",
        "/fhir/Patient/1",
        PathRejected,
        400,
        raw=b"/fhir/Patient%2f1",
    ),
    Reject(
        "raw-encoded-backslash",
        "GET",
        "/fhir/Patient\\1",
        PathRejected,
        400,
        raw=b"/fhir/Patient%5C1",
    ),
    Reject(
        "raw-encoded-dot",
        "GET",
        "/fhir/Patient/a.b",
        PathRejected,
        400,
        raw=b"/fhir/Patient/a%2Eb",
    ),
    Reject(
        "raw-encoded-dot-dot",
        "GET",
        "/fhir/Patient/../x",
        PathRejected,
        400,
        raw=b"/fhir/Patient/%2e%2e/x",
    ),
    Reject(
        "raw-encoded-nul",
        "GET",
        "/fhir/Patient/1\x00",
        PathRejected,
        400,
        raw=b"/fhir/Patient/1%00",
    ),
    Reject(
        "raw-double-encoding",
        "GET",
        "/fhir/Patient/%2F1",
        PathRejected,
        400,
        raw=b"/fhir/Patient/%252F1",
    ),
    Reject("root-base-trailing-slash", "GET", "/Patient/1/", PathRejected, 400, base=""),
    Reject("root-base-empty-segment", "GET", "//Patient", PathRejected, 400, base=""),
    # outside the base
    Reject("prefix-not-base", "GET", "/fhirx/Patient", NotFound, 404),
    Reject("root-not-base", "GET", "/", NotFound, 404),
    Reject("other-prefix", "GET", "/admin/fhir/Patient", NotFound, 404),
    Reject("root-base-sees-fhir-as-type", "GET", "/fhir/Patient/1", NotFound, 404, base=""),
    # method-override headers
    Reject(
        "x-http-method-override",
        "POST",
        "/fhir/Patient",
        BadRequest,
        400,
        headers=(("x-http-method-override", "DELETE"),),
    ),
    Reject(
        "x-http-method",
        "POST",
        "/fhir/Patient",
        BadRequest,
        400,
        headers=(("x-http-method", "DELETE"),),
    ),
    Reject(
        "x-method-override",
        "GET",
        "/fhir/Patient/1",
        BadRequest,
        400,
        headers=(("x-method-override", "PUT"),),
    ),
    Reject(
        "override-header-empty",
        "GET",
        "/fhir/Patient/1",
        BadRequest,
        400,
        headers=(("x-http-method-override", ""),),
    ),
    # methods
    Reject("head", "HEAD", "/fhir/Patient/1", MethodNotAllowed, 405, allowed=INSTANCE_METHODS),
    Reject(
        "options-metadata", "OPTIONS", "/fhir/metadata", MethodNotAllowed, 405, allowed=("GET",)
    ),
    Reject("options-base", "OPTIONS", "/fhir", MethodNotAllowed, 405, allowed=("GET", "POST")),
    Reject(
        "lowercase-get", "get", "/fhir/Patient/1", MethodNotAllowed, 405, allowed=INSTANCE_METHODS
    ),
    Reject(
        "trace",
        "TRACE",
        "/fhir/Patient",
        MethodNotAllowed,
        405,
        allowed=("GET", "POST", "PUT", "PATCH", "DELETE"),
    ),
    Reject("empty-method", "", "/fhir/_history", MethodNotAllowed, 405, allowed=("GET",)),
    Reject(
        "post-instance", "POST", "/fhir/Patient/1", MethodNotAllowed, 405, allowed=INSTANCE_METHODS
    ),
    Reject(
        "get-type-search", "GET", "/fhir/Patient/_search", MethodNotAllowed, 405, allowed=("POST",)
    ),
    Reject("get-system-search", "GET", "/fhir/_search", MethodNotAllowed, 405, allowed=("POST",)),
    Reject("put-metadata", "PUT", "/fhir/metadata", MethodNotAllowed, 405, allowed=("GET",)),
    Reject("delete-base", "DELETE", "/fhir", MethodNotAllowed, 405, allowed=("GET", "POST")),
    Reject(
        "delete-vread",
        "DELETE",
        "/fhir/Patient/1/_history/2",
        MethodNotAllowed,
        405,
        allowed=("GET",),
    ),
    Reject(
        "post-history", "POST", "/fhir/Patient/1/_history", MethodNotAllowed, 405, allowed=("GET",)
    ),
    Reject("put-operation", "PUT", "/fhir/$export", MethodNotAllowed, 405, allowed=("GET", "POST")),
    Reject(
        "delete-instance-operation",
        "DELETE",
        "/fhir/Patient/1/$everything",
        MethodNotAllowed,
        405,
        allowed=("GET", "POST"),
    ),
    Reject(
        "patch-graphql",
        "PATCH",
        "/fhir/$graphql",
        MethodNotAllowed,
        405,
        allowed=("GET", "POST"),
    ),
    Reject(
        "post-compartment",
        "POST",
        "/fhir/Patient/1/Observation",
        MethodNotAllowed,
        405,
        allowed=("GET",),
    ),
    # case-exact names and FHIR grammar
    Reject("lowercase-type", "GET", "/fhir/patient/1", NotFound, 404),
    Reject("uppercase-type", "GET", "/fhir/PATIENT", NotFound, 404),
    Reject("unknown-type", "GET", "/fhir/Unicorn/1", NotFound, 404),
    Reject("metadata-wrong-case", "GET", "/fhir/Metadata", NotFound, 404),
    Reject("history-wrong-case", "GET", "/fhir/_History", NotFound, 404),
    Reject("unknown-underscore-literal", "GET", "/fhir/_validate", NotFound, 404),
    Reject("id-65-chars", "GET", f"/fhir/Patient/{ID65}", BadRequest, 400),
    Reject("id-underscore", "GET", "/fhir/Patient/a_b", BadRequest, 400),
    Reject("id-space", "GET", "/fhir/Patient/a b", BadRequest, 400),
    Reject("id-non-ascii", "GET", "/fhir/Patient/\u00e9", BadRequest, 400),
    Reject("type-history-wrong-case", "GET", "/fhir/Patient/_History", BadRequest, 400),
    Reject("version-id-invalid", "GET", "/fhir/Patient/1/_history/v_1", BadRequest, 400),
    Reject("version-id-65-chars", "GET", f"/fhir/Patient/1/_history/{ID65}", BadRequest, 400),
    Reject("operation-name-digit", "GET", "/fhir/$1op", BadRequest, 400),
    Reject("operation-name-empty", "GET", "/fhir/Patient/$", BadRequest, 400),
    Reject("operation-name-dot", "POST", "/fhir/Patient/1/$a.b", BadRequest, 400),
    Reject("graphql-type-level", "GET", "/fhir/Patient/$graphql", NotFound, 404),
    Reject("compartment-star", "GET", "/fhir/Patient/x/*", NotFound, 404),
    Reject("compartment-lowercase-type", "GET", "/fhir/Patient/x/observation", NotFound, 404),
    Reject("not-a-compartment-type", "GET", "/fhir/Observation/x/Patient", NotFound, 404),
    Reject("compartment-extra-segment", "GET", "/fhir/Patient/1/Observation/2", NotFound, 404),
    Reject("vread-extra-segment", "GET", "/fhir/Patient/1/_history/2/x", NotFound, 404),
    Reject("operation-on-version", "GET", "/fhir/Patient/1/_history/2/$meta", NotFound, 404),
    Reject("operation-extra-segment", "GET", "/fhir/Patient/1/$everything/x", NotFound, 404),
    Reject("search-on-instance", "POST", "/fhir/Patient/1/_search", NotFound, 404),
    Reject("metadata-subpath", "GET", "/fhir/metadata/x", NotFound, 404),
    # conditional writes need criteria
    Reject("conditional-delete-no-query", "DELETE", "/fhir/Patient", BadRequest, 400),
    Reject("conditional-update-no-query", "PUT", "/fhir/Patient", BadRequest, 400),
    Reject(
        "conditional-patch-no-query", "PATCH", "/fhir/Patient", BadRequest, 400, headers=JSON_PATCH
    ),
    Reject(
        "conditional-delete-only-format",
        "DELETE",
        "/fhir/Patient",
        BadRequest,
        400,
        query=b"_format=json",
    ),
    Reject(
        "conditional-delete-blank-value", "DELETE", "/fhir/Patient", BadRequest, 400, query=b"name="
    ),
    Reject(
        "conditional-delete-separators", "DELETE", "/fhir/Patient", BadRequest, 400, query=b"&&"
    ),
    # media types
    Reject("patch-no-content-type", "PATCH", "/fhir/Patient/1", UnsupportedMediaType, 415),
    Reject(
        "patch-plain-json",
        "PATCH",
        "/fhir/Patient/1",
        UnsupportedMediaType,
        415,
        headers=(("content-type", "application/json"),),
    ),
    Reject(
        "patch-xml-patch",
        "PATCH",
        "/fhir/Patient/1",
        UnsupportedMediaType,
        415,
        headers=(("content-type", "application/xml-patch+xml"),),
    ),
    Reject(
        "search-post-json",
        "POST",
        "/fhir/Patient/_search",
        UnsupportedMediaType,
        415,
        headers=FHIR_JSON,
    ),
    Reject("search-post-no-content-type", "POST", "/fhir/_search", UnsupportedMediaType, 415),
    Reject(
        "compartment-search-post-no-content-type",
        "POST",
        "/fhir/Patient/1/Observation/_search",
        UnsupportedMediaType,
        415,
    ),
]


@pytest.mark.parametrize("case", REJECTS, ids=[case.name for case in REJECTS])
def test_classify_rejects(case: Reject) -> None:
    """Anything that is not a valid FHIR REST interaction raises exactly one error class."""
    with pytest.raises(case.error) as info:
        run(
            case.method,
            case.path,
            query=case.query,
            headers=case.headers,
            raw=case.raw,
            base=case.base,
        )
    assert type(info.value) is case.error
    assert info.value.status == case.status
    if case.allowed is not None:
        assert isinstance(info.value, MethodNotAllowed)
        assert info.value.allowed == case.allowed


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/fhir/Patient/John-Smith-1970/x", None),
        ("/fhir/Patient/John_Smith", None),
        ("/fhir/Patient/John-Smith/_history/x_y", None),
        ("/fhir/Patient/John-Smith/", None),
        ("/fhir/Patient/John.Smith", b"/fhir/Patient/John%2ESmith"),
    ],
    ids=["not-found-shape", "bad-id", "bad-vid", "trailing-slash", "raw-encoding"],
)
def test_diagnostics_never_echo_the_path(path: str, raw: bytes | None) -> None:
    """Ids may be PHI: a refusal's diagnostics never repeat what the client sent."""
    with pytest.raises(GatewayError) as info:
        run("DELETE", path, raw=raw)
    assert "Smith" not in info.value.diagnostics


def test_raw_path_none_is_accepted() -> None:
    """Servers that cannot give raw_path still get classification from the decoded path."""
    got = classify("GET", "/fhir/Patient/1", None, b"", {}, base_path="/fhir")
    assert got.interaction is Act.READ


def test_raw_path_query_is_not_inspected() -> None:
    """An encoded slash in a query that a server left in raw_path is not a path trick."""
    got = run("GET", "/fhir/Patient", raw=b"/fhir/Patient?identifier=a%2Fb")
    assert got.interaction is Act.SEARCH_TYPE


# classify_bundle: POST [base] is settled by the body's Bundle.type

BATCH_REQUEST = run("POST", "/fhir", query=b"_format=json")


@pytest.mark.parametrize(
    ("bundle_type", "interaction"),
    [("batch", Act.BATCH), ("transaction", Act.TRANSACTION)],
    ids=["batch", "transaction"],
)
def test_classify_bundle_accepts(bundle_type: str, interaction: Interaction) -> None:
    """A batch or transaction Bundle settles the interaction; nothing else changes."""
    got = classify_bundle(BATCH_REQUEST, bundle_type)
    assert got == req(interaction, "POST", SYSTEM, "", query=b"_format=json")
    assert got.is_write


BAD_BUNDLE_TYPES: list[str | None] = [
    None,
    "",
    "document",
    "message",
    "collection",
    "searchset",
    "history",
    "batch-response",
    "transaction-response",
    "Batch",
    "TRANSACTION",
]


@pytest.mark.parametrize("bundle_type", BAD_BUNDLE_TYPES, ids=[repr(t) for t in BAD_BUNDLE_TYPES])
def test_classify_bundle_rejects(bundle_type: str | None) -> None:
    """Anything but a Bundle of type batch or transaction (case-exact) is a 400."""
    with pytest.raises(BadRequest) as info:
        classify_bundle(BATCH_REQUEST, bundle_type)
    assert type(info.value) is BadRequest
    assert info.value.status == 400


def test_classify_bundle_is_idempotent() -> None:
    """Settling an already-settled request again follows the body, not the earlier answer."""
    transaction = classify_bundle(BATCH_REQUEST, "transaction")
    assert classify_bundle(transaction, "batch").interaction is Act.BATCH


def test_classify_bundle_refuses_other_interactions() -> None:
    """Calling it on anything but POST [base] is a programming error."""
    with pytest.raises(ValueError, match="POST"):
        classify_bundle(run("GET", "/fhir/Bundle/1"), "batch")


# property: classify is total over arbitrary input, in the GatewayError sense

WORDS = [
    "Patient",
    "Observation",
    "metadata",
    "_history",
    "_search",
    "$everything",
    "$graphql",
    "1",
]
TRICKS = ["patient", ".", "..", "", "*", "a;b", "fhir"]
SEGMENT = st.one_of(st.sampled_from(WORDS), st.sampled_from(TRICKS), st.text(max_size=8))
METHOD = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "get"])
CONTENT_TYPES = [
    "application/x-www-form-urlencoded",
    "application/json-patch+json",
    "application/fhir+json",
    "text/plain",
]
HEADERS = st.dictionaries(
    st.sampled_from(["content-type", "if-none-exist", "x-http-method"]),
    st.one_of(st.sampled_from(CONTENT_TYPES), st.text(max_size=8)),
)


@given(
    method=METHOD,
    segments=st.lists(SEGMENT, max_size=6),
    raw=st.one_of(st.none(), st.binary(max_size=16)),
    query=st.binary(max_size=16),
    headers=HEADERS,
    base=st.sampled_from(["/fhir", ""]),
)
def test_classify_returns_valid_request_or_gateway_error(
    method: str,
    segments: list[str],
    raw: bytes | None,
    query: bytes,
    headers: dict[str, str],
    base: str,
) -> None:
    """For any input, classify returns a request naming a known type, or raises GatewayError."""
    path = base + "/" + "/".join(segments) if segments else base or "/"
    try:
        got = classify(method, path, raw, query, headers, base_path=base)
    except GatewayError:
        return
    assert got.resource_type is None or got.resource_type in RESOURCE_TYPES
    assert path.endswith(got.path)
    assert got.query == query


@given(path=st.text(max_size=40))
def test_classify_never_raises_other_errors_on_arbitrary_text(path: str) -> None:
    """Arbitrary text paths never escape as anything but a GatewayError."""
    try:
        got = classify("GET", path, None, b"", {}, base_path="/fhir")
    except GatewayError:
        return
    assert got.resource_type is None or got.resource_type in RESOURCE_TYPES
