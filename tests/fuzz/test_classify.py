"""Fuzzing request classification with paths as an ASGI server hands them over.

The raw path is drawn first, with any byte percent-encoded or not (dots, slashes, backslashes,
``%`` itself, NUL, UTF-8 of any code point), and ``path`` is what a server decodes from it
(``unquote``, as uvicorn does), so both arguments agree the way they do in production. Queries
and headers are arbitrary. :func:`classify` must answer with a request or a
:class:`~middleware.errors.GatewayError`, never another exception, and what it accepts must be
free of the path tricks its docstring promises to refuse: a gateway and an upstream that resolve
``..`` or ``%2F`` differently would see different resources.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import quote, unquote

from hypothesis import example, given, settings
from hypothesis import strategies as st

from middleware.errors import GatewayError
from middleware.fhir.classify import classify
from middleware.fhir.resource_types import RESOURCE_TYPES

_R4_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # R4 datatypes.html#id
_WORDS: Final = (
    "fhir",
    "Patient",
    "Observation",
    "Consent",
    "metadata",
    "_history",
    "_search",
    "$everything",
    "$graphql",
    "p1",
    "p.1",
    "1",
    ".",
    "..",
    "...",
    "",
    "%",
    "\\",
    ";",
    "\x00",
    "é",
    "\u202e",
    "\ufeff",
    "ǅ",
)
_segment = st.one_of(st.sampled_from(_WORDS), st.text(max_size=6))
_method = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "get", ""])
_headers = st.dictionaries(
    st.sampled_from(
        ["content-type", "if-none-exist", "x-http-method-override", "if-match", "prefer"]
    ),
    st.one_of(
        st.sampled_from(
            [
                "application/fhir+json",
                "application/json-patch+json",
                "application/x-www-form-urlencoded",
                "application/x-www-form-urlencoded; charset=utf-8",
                "application/fhir+json;;;",
                "identifier=a|b",
            ]
        ),
        st.text(max_size=12),
    ),
    max_size=3,
)


@st.composite
def _raw_paths(draw: st.DrawFn, base: str) -> bytes:
    """A raw request path: segments whose characters are each written as themselves or
    percent-encoded (upper or lower case hex), joined by ``/``."""
    segments = draw(st.lists(_segment, max_size=5))
    if draw(st.integers(0, 4)):  # mostly under the base, where classification gets deep
        segments = [*base.split("/")[1:], *segments]
    out: list[str] = []
    for segment in segments:
        chars = []
        for char in segment:
            encoded = draw(st.sampled_from(["plain", "upper", "lower"]))
            if encoded == "plain" and char.isascii() and char.isprintable() and char != "%":
                chars.append(char)
            else:
                escaped = quote(char, safe="")
                if escaped == char:  # unreserved: force an escape of its own
                    escaped = "".join(f"%{b:02X}" for b in char.encode())
                chars.append(escaped.lower() if encoded == "lower" else escaped)
        out.append("".join(chars))
    slash = draw(st.sampled_from(["/", "%2F", "%2f"])) if out else "/"
    return ("/" + slash.join(out) if out else "/").encode("ascii")


_BASES: Final = ("/fhir", "", "/a/fhir")


@st.composite
def _requests(draw: st.DrawFn) -> tuple[str, bytes]:
    base = draw(st.sampled_from(_BASES))
    return base, draw(_raw_paths(base))


@settings(max_examples=1_000)
@given(
    method=_method,
    target=_requests(),
    query=st.binary(max_size=24),
    headers=_headers,
)
@example(method="GET", target=("/fhir", b"/fhir/Patient/.."), query=b"", headers={})
@example(method="GET", target=("/fhir", b"/fhir/Patient%2F..%2Fp1"), query=b"", headers={})
@example(method="GET", target=("/fhir", b"/fhir/Patient/%2E%2E"), query=b"", headers={})
@example(method="GET", target=("/fhir", b"/fhir/Patient/p1%00"), query=b"", headers={})
@example(method="GET", target=("/fhir", b"/fhir/Patient/p%2e1"), query=b"", headers={})
@example(method="DELETE", target=("/fhir", b"/fhir/Patient"), query=b"_count=1", headers={})
def test_any_request_is_a_fhir_request_without_path_tricks_or_a_gateway_error(
    method: str, target: tuple[str, bytes], query: bytes, headers: dict[str, str]
) -> None:
    """Any method, raw path (percent-encoded or not, dots, unicode, control characters), query
    and headers: a GatewayError, or a request whose every segment is a clean name (no dot
    segment, nothing percent-encoded that splits or resolves, no control character) under the
    base, with a known resource type and an R4 id."""
    base, raw = target
    path = unquote(raw.decode("ascii"), errors="surrogateescape")
    try:
        got = classify(method, path, raw, query, headers, base_path=base)
    except GatewayError as exc:
        status = exc.status
        assert 400 <= status < 500
        return
    assert got.method == method
    assert got.query == query
    segments = got.path.split("/") if got.path else []
    assert all(s and s not in (".", "..") for s in segments), got.path
    assert not any(c in got.path for c in "%;\\\x00"), got.path
    lowered = raw.lower()
    assert not any(e in lowered for e in (b"%2f", b"%2e", b"%5c", b"%25", b"%00")), raw
    assert got.resource_type is None or got.resource_type in RESOURCE_TYPES
    for name in (got.resource_id, got.version_id):
        assert name is None or _R4_ID.fullmatch(name), name
    assert "x-http-method-override" not in headers


@settings(max_examples=500)
@given(method=_method, path=st.text(max_size=40), raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_disagreeing_path_and_raw_path_never_raise_anything_else(
    method: str, path: str, raw: bytes | None
) -> None:
    """A server whose ``path`` and ``raw_path`` disagree (or which sends no raw path) still
    gets only a GatewayError or a request."""
    try:
        classify(method, path, raw, b"", {}, base_path="/fhir")
    except GatewayError as exc:
        status = exc.status
        assert 400 <= status < 500
