"""FHIR XML at its limits: what the converter refuses or repairs so that nothing a client or an
upstream sends becomes a 500, an expanded entity, or an unbounded cost.

Each case tells the attack it stands for; each failed on the converter before these limits
(UTF-16 bodies bypassed the DTD check, a repeated element doubled the JSON depth, a control
character in an answer made lxml raise, client-sent root names filled the model caches)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from lxml import etree

from middleware.errors import BadRequest
from middleware.fhir import xml_schema, xmlcodec
from middleware.fhir.xmlcodec import xml_to_json
from middleware.fhir.xmlrender import json_to_xml

DEPTH = 100

# --- encodings: FHIR XML is UTF-8 -------------------------------------------------------------

LAUGHS = """<?xml version="1.0" encoding="{enc}"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<Patient xmlns="http://hl7.org/fhir"><gender value="&lol2;"/></Patient>"""
#: An entity declared in the internal subset and used where an element goes: left unexpanded
#: by the parser, it is an ``_Entity`` node among the children (was a 500 from etree.QName).
ENTITY_CHILD = """<?xml version="1.0" encoding="{enc}"?>
<!DOCTYPE Patient [<!ENTITY e "<active value='true'/>">]>
<Patient xmlns="http://hl7.org/fhir">&e;</Patient>"""
PLAIN = '<Patient xmlns="http://hl7.org/fhir"><gender value="{value}"/></Patient>'


def _encoded(text: str, codec: str, enc: str) -> bytes:
    return text.format(enc=enc).encode(codec)


@pytest.mark.parametrize(
    "body",
    [
        _encoded(LAUGHS, "utf-16", "UTF-16"),  # BOM FF FE: the raw-byte DTD check saw NULs
        _encoded(LAUGHS, "utf-16-be", "UTF-16"),  # no BOM, autodetected from '<\0?'
        _encoded(LAUGHS, "utf-32", "UTF-32"),
        _encoded(ENTITY_CHILD, "utf-16", "UTF-16"),
        _encoded(ENTITY_CHILD, "utf-16-le", "UTF-16"),
        PLAIN.format(value="m\u00e4le").encode("latin-1"),  # bytes that are not UTF-8
        b'<?xml version="1.0" encoding="ISO-8859-1"?>' + PLAIN.format(value="male").encode(),
        b"<?xml version='1.0' encoding='UTF-16'?>" + PLAIN.format(value="male").encode(),
        PLAIN.format(value="ma\x00le").encode(),
    ],
    ids=[
        "laughs-utf16-bom",
        "laughs-utf16-no-bom",
        "laughs-utf32",
        "entity-child-utf16",
        "entity-child-utf16le-no-bom",
        "latin1-bytes",
        "declared-latin1",
        "declared-utf16",
        "nul-byte",
    ],
)
def test_a_body_not_in_utf8_is_refused_before_parsing(body: bytes) -> None:
    with pytest.raises(BadRequest, match="UTF-8"):
        xml_to_json(body, max_depth=DEPTH)


@pytest.mark.parametrize(
    "body",
    [
        b"\xef\xbb\xbf" + PLAIN.format(value="male").encode(),
        b'<?xml version="1.0" encoding="utf-8"?>' + PLAIN.format(value="male").encode(),
        b"<?xml version='1.0' encoding='UTF8'?>" + PLAIN.format(value="male").encode(),
    ],
    ids=["utf8-bom", "declared-utf-8", "declared-utf8"],
)
def test_utf8_however_announced_is_read(body: bytes) -> None:
    assert json.loads(xml_to_json(body, max_depth=DEPTH)) == {
        "resourceType": "Patient",
        "gender": "male",
    }


def test_an_entity_node_in_the_tree_is_refused_not_a_500() -> None:
    """The parser's own guards are backed by the converter's: an entity reference that reached
    the tree is a 400 wherever it stands (defence in depth behind the UTF-8 check)."""
    with pytest.raises(BadRequest, match="entity"):
        xmlcodec._split(etree.Entity("e").tag)  # the guard itself


# --- depth and size -------------------------------------------------------------------------


def _nested_extensions(levels: int) -> bytes:
    inner = b"<extension url='u'>" * levels + b"<valueString value='x'/>"
    inner += b"</extension>" * levels
    return b'<Patient xmlns="http://hl7.org/fhir">' + inner + b"</Patient>"


def test_json_depth_is_measured_after_conversion() -> None:
    """60 nested extensions are 61 XML levels but 121 JSON ones (each repeating element is an
    array and an object): the JSON limit applies to what goes on, as to a JSON body."""
    with pytest.raises(BadRequest, match="deeper"):
        xml_to_json(_nested_extensions(60), max_depth=DEPTH)
    assert json.loads(xml_to_json(_nested_extensions(45), max_depth=DEPTH))


def test_the_hard_depth_limit_is_a_400_not_a_recursion_error() -> None:
    """At the highest configurable depth (256) the old recursive JSON writer overflowed."""
    with pytest.raises(BadRequest):
        xml_to_json(_nested_extensions(252), max_depth=256)


def test_more_elements_than_the_cap_is_refused_before_conversion() -> None:
    body = b'<Patient xmlns="http://hl7.org/fhir"><name>' + b'<given value="x"/>' * 10
    body += b"</name></Patient>"
    assert json.loads(xml_to_json(body, max_depth=DEPTH, max_elements=12))
    with pytest.raises(BadRequest, match="elements"):
        xml_to_json(body, max_depth=DEPTH, max_elements=11)


def test_a_primitive_with_an_extension_and_an_id_converts_without_copying() -> None:
    body = (
        b'<Patient xmlns="http://hl7.org/fhir"><gender id="g" value="male">'
        b'<extension url="u"><valueString value="v"/></extension></gender></Patient>'
    )
    assert json.loads(xml_to_json(body, max_depth=DEPTH)) == {
        "resourceType": "Patient",
        "gender": "male",
        "_gender": {"id": "g", "extension": [{"url": "u", "valueString": "v"}]},
    }


# --- the model caches are bounded ----------------------------------------------------------


def _cached_entries() -> int:
    return sum(
        fn.cache_info().currsize
        for fn in vars(xml_schema).values()
        if callable(fn) and hasattr(fn, "cache_info")
    )


def test_client_sent_root_names_do_not_grow_the_caches() -> None:
    """Every refused root name used to stay cached (a 49 KB name a request: memory grows with
    each one); only the fixed set of model types is ever looked up."""
    xml_schema.is_resource_type("Patient")
    before = _cached_entries()
    for i in range(200):
        body = f'<Z{i}{"q" * 100} xmlns="http://hl7.org/fhir"/>'.encode()
        with pytest.raises(BadRequest):
            xml_to_json(body, max_depth=DEPTH)
        assert xml_schema.elements(f"Z{i}") is None
    assert _cached_entries() == before


# --- answers: rendering is total ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"resourceType": "Patient", "gender": "ma\u0001le"}, "ma\ufffdle"),
        ({"resourceType": "Patient", "gender": "x\ud800y"}, "x\ufffdy"),
        ({"resourceType": "Patient", "gender": "a\ufffeb\u001fc"}, "a\ufffdb\ufffdc"),
        ({"resourceType": "Patient", "gender": "tab\tnl\ncr\r"}, "tab\tnl\ncr\r"),
    ],
    ids=["c0-control", "lone-surrogate", "non-characters", "allowed-whitespace"],
)
def test_characters_xml_cannot_carry_become_replacement_characters(
    document: dict[str, Any], expected: str
) -> None:
    """Legal in a JSON string, not in XML 1.0 (§2.2): an upstream answer holding one was a
    500 after its disclosure had been recorded."""
    body = json.dumps(document).encode()
    root = etree.fromstring(json_to_xml(body))
    assert root.find("{http://hl7.org/fhir}gender").get("value") == expected


def test_control_characters_in_ids_and_narrative_are_rendered() -> None:
    document = {
        "resourceType": "Observation",
        "text": {
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml">a\u0002</div>',
        },
        "code": {"id": "c\u0003", "text": "hr"},
    }
    xml = json_to_xml(json.dumps(document).encode())
    assert "\ufffd".encode() in xml
    etree.fromstring(xml)


def test_a_bundle_links_keep_the_xml_format() -> None:
    """An XML client following ``next`` gets XML again (the gateway answers ``_format``)."""
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [
            {"relation": "self", "url": "https://gw.test/fhir/Observation?code=x"},
            {"relation": "next", "url": "https://gw.test/fhir/Observation?_cursor=t"},
            {"relation": "last", "url": "https://gw.test/fhir/Observation"},
        ],
    }
    root = etree.fromstring(json_to_xml(json.dumps(bundle).encode(), link_format=True))
    urls = [u.get("value") for u in root.iter("{http://hl7.org/fhir}url")]
    assert urls == [
        "https://gw.test/fhir/Observation?code=x&_format=xml",
        "https://gw.test/fhir/Observation?_cursor=t&_format=xml",
        "https://gw.test/fhir/Observation?_format=xml",
    ]
    plain = etree.fromstring(json_to_xml(json.dumps(bundle).encode()))
    assert "_format" not in etree.tostring(plain).decode()
