"""Which format an answer of the proxied API is in, and ``_format`` taken out of what goes on
(R4 http.html §3.1.0.1.9; RFC 9110 §12.5.1 for ``Accept`` and its ``q`` values)."""

from __future__ import annotations

import pytest

from middleware.errors import BadRequest, NotAcceptable
from middleware.fhir.negotiate import answer_in_xml, check_accept, split_format

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


@pytest.mark.parametrize(
    ("accept", "xml"),
    [
        # no preference, or JSON named: JSON
        (None, False),
        ("", False),
        ("application/fhir+json", False),
        ("*/*", False),
        ("application/json, application/fhir+xml", False),
        # FHIR XML asked for: XML
        ("application/fhir+xml", True),
        ("application/xml+fhir", True),
        ("application/fhir+xml, */*", True),
        ("application/fhir+xml, */*;q=0.1", True),
        ("application/fhir+json;q=0.5, application/fhir+xml", True),
        # q=0 means "not this"
        ("application/fhir+xml;q=0, */*", False),
        ("application/fhir+xml;q=0, application/fhir+json", False),
        ("application/fhir+json;q=0, application/fhir+xml", True),
        # generic XML only when nothing JSON is acceptable: a browser gets JSON
        (BROWSER, False),
        ("application/xml", True),
        ("text/xml", True),
        ("application/xml, */*", False),
    ],
    ids=repr,
)
def test_accept(accept: str | None, xml: bool) -> None:
    headers = {} if accept is None else {"accept": accept}
    assert answer_in_xml(headers, ()) is xml


@pytest.mark.parametrize(
    "accept",
    ["text/turtle", "application/fhir+json;q=0", "application/fhir+xml;q=0", "*/*;q=0"],
)
def test_nothing_answerable_is_406(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        answer_in_xml({"accept": accept}, ())


@pytest.mark.parametrize(
    ("formats", "xml"),
    [
        (["xml"], True),
        (["application/fhir+xml", "xml"], True),
        (["json"], False),
        (["application/fhir+json", "json"], False),
    ],
)
def test_format_wins_over_accept(formats: list[str], xml: bool) -> None:
    accept = {"accept": "application/fhir+json" if xml else "application/fhir+xml"}
    assert answer_in_xml(accept, formats) is xml


def test_formats_that_disagree_are_400() -> None:
    """Was answered by the last one, the first one sent upstream."""
    with pytest.raises(BadRequest):
        answer_in_xml({}, ["xml", "json"])
    with pytest.raises(NotAcceptable):
        answer_in_xml({}, ["xml", "ttl"])


@pytest.mark.parametrize(
    ("encoded", "kept", "formats"),
    [
        (b"code=x", b"code=x", []),
        (b"_format=xml", b"", ["xml"]),
        (b"code=x&_format=json&b=2", b"code=x&b=2", ["json"]),
        (b"%5Fformat=xml&code=x", b"code=x", ["xml"]),
        (b"%5fformat=application%2Ffhir%2Bxml", b"", ["application/fhir+xml"]),
        (b"_format=application/fhir+xml", b"", ["application/fhir xml"]),
        (b"format=xml&x_format=1", b"format=xml&x_format=1", []),
        (b"code=x&%5F%66%6Frmat=xml", b"code=x", ["xml"]),
    ],
    ids=[
        "none",
        "only",
        "middle",
        "encoded-name",
        "encoded-lower",
        "plus-is-space",
        "others",
        "every-letter-encoded",
    ],
)
def test_split_format_by_decoded_name(encoded: bytes, kept: bytes, formats: list[str]) -> None:
    assert split_format(encoded) == (kept, formats)


def test_json_only_endpoints_honour_q_zero() -> None:
    check_accept({"accept": "application/fhir+json"}, ())
    with pytest.raises(NotAcceptable):
        check_accept({"accept": "application/fhir+json;q=0"}, ())


def test_an_unencoded_plus_in_format_is_read_as_meant() -> None:
    """``?_format=application/fhir+xml`` written as is decodes to a space (form encoding)."""
    assert answer_in_xml({}, ["application/fhir xml"]) is True
    assert answer_in_xml({}, ["application/fhir json"]) is False
