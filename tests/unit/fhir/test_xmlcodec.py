"""FHIR XML <-> JSON at the edge: faithful (numbers as written, lists in order, every
carebundle resource round-trips), valid (an independent reader, the fhir.resources models,
reads what it writes) and safe (entities, DTDs, depth, foreign namespaces are 400s)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from middleware.errors import BadRequest, NotAcceptable
from middleware.fhir.xmlcodec import xml_to_json
from middleware.fhir.xmlrender import json_to_xml
from tests.support import carebundle_dir

DEPTH = 100


def _exact(data: bytes | str) -> Any:
    """JSON with every number kept as its text (so 1.50 and 1.5 differ)."""
    return json.loads(data, parse_float=lambda t: ("num", t), parse_int=lambda t: ("num", t))


def _resources() -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(Path(carebundle_dir()).glob("*.json")):
        bundle = json.loads(path.read_bytes())
        found.append((f"{path.stem}/Bundle", bundle))
        for i, entry in enumerate(bundle["entry"]):
            resource = entry["resource"]
            found.append((f"{path.stem}/{i}-{resource['resourceType']}", resource))
    return found


RESOURCES = _resources()


def test_carebundle_is_all_there() -> None:
    """528 resources and their 10 Bundles: a missing folder must not pass as zero cases."""
    assert len(RESOURCES) == 538


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "resource"), RESOURCES, ids=[n for n, _ in RESOURCES])
def test_carebundle_round_trip_json_xml_json(name: str, resource: dict[str, Any]) -> None:
    """Every carebundle resource (and each whole Bundle) comes back from XML as it went in,
    number text, key content and list order included; and the fhir.resources models, an
    independent FHIR XML reader, read the XML as the same resource as the JSON."""
    original = json.dumps(resource).encode()
    xml = json_to_xml(original)
    assert _exact(xml_to_json(xml, max_depth=DEPTH)) == _exact(original)
    model = get_fhir_model_class(resource["resourceType"])
    assert _text(model.model_validate_xml(xml)) == _text(model.model_validate(resource))


def _text(model: Any) -> str:
    """A model as JSON text; character references unescaped (the models' XML reader writes a
    narrative's non-ASCII characters as references, ``&#8212;`` for an em dash)."""
    return html.unescape(json.dumps(model.model_dump(mode="json"), ensure_ascii=False))


OBSERVATION = (
    b'{"resourceType":"Observation","status":"final","code":{"text":"x"},'
    b'"valueQuantity":{"value":1.50,"unit":"mg"},'
    b'"component":[{"code":{"text":"b"},"valueQuantity":{"value":0.000001}},'
    b'{"code":{"text":"a"},"valueQuantity":{"value":1E+2}},'
    b'{"code":{"text":"c"},"valueInteger":7}]}'
)


def test_decimals_keep_their_text_to_xml() -> None:
    """1.50 stays 1.50 and 0.000001 is not 1e-06 (FHIR decimals carry their precision in
    their text; the fhir.resources models write 1.5 and 1e-06)."""
    xml = json_to_xml(OBSERVATION)
    assert b'<value value="1.50"/>' in xml
    assert b'<value value="0.000001"/>' in xml
    assert b'<value value="1E+2"/>' in xml
    assert b'<valueInteger value="7"/>' in xml


def test_decimals_keep_their_text_from_xml() -> None:
    xml = (
        b'<Observation xmlns="http://hl7.org/fhir"><status value="final"/>'
        b'<code><text value="x"/></code>'
        b'<valueQuantity><value value="1.50"/></valueQuantity>'
        b'<component><code><text value="b"/></code><valueQuantity><value value="0.000001"/>'
        b"</valueQuantity></component></Observation>"
    )
    out = xml_to_json(xml, max_depth=DEPTH)
    assert b'"value":1.50' in out
    assert b'"value":0.000001' in out


def test_xml_elements_follow_fhir_order_whatever_the_json_order() -> None:
    """XML element order is the StructureDefinition's (R4 xml.html); JSON's is free."""
    xml = json_to_xml(
        b'{"valueQuantity":{"unit":"mg","value":2},"code":{"text":"x"},'
        b'"status":"final","resourceType":"Observation","id":"o1"}'
    )
    order = [xml.index(tag) for tag in (b"<id", b"<status", b"<code", b"<valueQuantity")]
    assert order == sorted(order)
    assert xml.index(b"<value ") < xml.index(b"<unit ")


def test_list_order_and_primitive_extensions_survive_both_ways() -> None:
    """Repeating primitives with ``_given`` aligned by index (R4 json.html §2.6.2: null
    where an item has no extension), and repeated elements in their order."""
    patient = (
        b'{"resourceType":"Patient","name":[{"family":"Z","given":["b","a","c"],'
        b'"_given":[null,{"extension":[{"url":"http://x","valueString":"mid"}]},null]},'
        b'{"family":"A"}],"birthDate":"1970","_birthDate":{"id":"d1"}}'
    )
    xml = json_to_xml(patient)
    assert xml.index(b'"b"') < xml.index(b'"a"') < xml.index(b'"c"')
    assert xml.index(b'"Z"') < xml.index(b'"A"')
    assert b'<birthDate value="1970" id="d1"/>' in xml
    assert _exact(xml_to_json(xml, max_depth=DEPTH)) == _exact(patient)


def test_contained_resources_and_narrative_round_trip() -> None:
    document = (
        b'{"resourceType":"Observation","text":{"status":"generated","div":'
        b'"<div xmlns=\\"http://www.w3.org/1999/xhtml\\"><p>hi <b>there</b></p></div>"},'
        b'"contained":[{"resourceType":"Patient","id":"c1","active":true}],'
        b'"status":"final","code":{"text":"x"},"subject":{"reference":"#c1"}}'
    )
    xml = json_to_xml(document)
    assert b"<contained><Patient><id value=" in xml
    assert b'<div xmlns="http://www.w3.org/1999/xhtml"><p>hi <b>there</b></p></div>' in xml
    assert _exact(xml_to_json(xml, max_depth=DEPTH)) == _exact(document)


def test_elements_the_models_do_not_know_are_still_written() -> None:
    """An answer is rendered whole: an element unknown to the models goes last, as written."""
    xml = json_to_xml(b'{"resourceType":"Patient","future":{"x":1},"active":true}')
    assert xml.index(b"<active") < xml.index(b'<future><x value="1"/></future>')


@pytest.mark.parametrize(
    "body",
    [b"[]", b'{"a":1}', b"not json", b'{"resourceType":"bad type"}', b"[" * 300 + b"]" * 300],
    ids=["array", "no-resource-type", "not-json", "bad-type-name", "too-deep"],
)
def test_what_is_not_a_json_resource_is_not_acceptable_as_xml(body: bytes) -> None:
    with pytest.raises(NotAcceptable):
        json_to_xml(body)


# --- hostile and malformed XML --------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<Patient xmlns="http://hl7.org/fhir"><gender value="&lol3;"/></Patient>"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE p [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Patient xmlns="http://hl7.org/fhir"><gender value="&xxe;"/></Patient>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!doctype Patient SYSTEM "http://attacker.test/fhir.dtd">
<Patient xmlns="http://hl7.org/fhir"><active value="true"/></Patient>"""

UNDECLARED_ENTITY = b'<Patient xmlns="http://hl7.org/fhir"><gender value="&xxe;"/></Patient>'


def _deep(levels: int) -> bytes:
    inner = b"<extension url='u'>" * levels + b"</extension>" * levels
    return b'<Patient xmlns="http://hl7.org/fhir">' + inner + b"</Patient>"


@pytest.mark.parametrize(
    "body",
    [
        BILLION_LAUGHS,
        EXTERNAL_ENTITY,
        EXTERNAL_DTD,
        UNDECLARED_ENTITY,
        _deep(DEPTH + 5),
        _deep(5000),
        b"<Patient><active value='true'/></Patient>",
        b'<Patient xmlns="http://hl7.org/fhir/other"><active value="true"/></Patient>',
        b'<Patient xmlns="http://hl7.org/fhir"><active xmlns="urn:x" value="true"/></Patient>',
        b'<Patient xmlns="http://hl7.org/fhir"><active value="true">',
        b"",
        b'<Quantity xmlns="http://hl7.org/fhir"><value value="1"/></Quantity>',
        b'<Nope xmlns="http://hl7.org/fhir"/>',
        b'<Patient xmlns="http://hl7.org/fhir"><notAnElement value="1"/></Patient>',
        b'<Patient xmlns="http://hl7.org/fhir"><active value="yes"/></Patient>',
        b'<Patient xmlns="http://hl7.org/fhir"><multipleBirthInteger value="1,\\"x\\":2"/>'
        b"</Patient>",
        b'<Patient xmlns="http://hl7.org/fhir"><gender value="male"/><gender value="female"/>'
        b"</Patient>",
        b'<Patient xmlns="http://hl7.org/fhir">text<active value="true"/></Patient>',
        b'<Patient xmlns="http://hl7.org/fhir" evil="1"><active value="true"/></Patient>',
        b'<Bundle xmlns="http://hl7.org/fhir"><entry><resource/></entry></Bundle>',
        b'<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/>'
        b'<div xmlns="http://hl7.org/fhir">x</div></text></Patient>',
    ],
    ids=[
        "billion-laughs",
        "external-entity",
        "external-dtd",
        "undeclared-entity",
        "too-deep",
        "far-too-deep",
        "no-namespace",
        "wrong-namespace",
        "foreign-child",
        "unclosed",
        "empty",
        "not-a-resource",
        "unknown-type",
        "unknown-element",
        "bad-boolean",
        "number-injection",
        "repeated-single",
        "stray-text",
        "stray-attribute",
        "empty-resource-slot",
        "narrative-not-xhtml",
    ],
)
def test_hostile_or_malformed_xml_is_a_400(body: bytes) -> None:
    """Nothing a client sends as XML is expanded, fetched or turned into a 500."""
    with pytest.raises(BadRequest):
        xml_to_json(body, max_depth=DEPTH)


def test_a_body_at_the_depth_limit_is_read() -> None:
    out = json.loads(xml_to_json(_deep(DEPTH // 2 - 2), max_depth=DEPTH))
    assert out["resourceType"] == "Patient"
