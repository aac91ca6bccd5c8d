"""Search parameters: token ORs, identifier systems, modifiers, and what is never guessed."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.errors import BadRequest
from middleware.mapping import map_search
from middleware.mapping.profile import Profile
from middleware.mapping.tokens import escape, format_token, parse_token, split, unescape
from tests.unit.mapping.builders import (
    LOCAL,
    LOINC,
    UNIT_ATTRIBUTE,
    binding,
    element,
    group,
    make_profile,
    r5_map,
    target,
    unit,
)

LAB = r5_map(
    group(
        element("A", target("X")),
        element("A2", target("X")),
        element("N", target("NX", "source-is-narrower-than-target")),
        element("R", target("RX", "related-to")),
        element("CREA", target("C1", dependsOn=unit("mg/dL"))),
        element("C,1", target("ESC")),
    ),
    additionalAttribute=UNIT_ATTRIBUTE,
)
ALIASES = {"aliases": [{"upstream": "urn:oid:1.2.3", "client": "http://mrn.example"}]}


def profile(*, strict: bool = True, modifiers: str = "reject", **bind: Any) -> Profile:
    bind.setdefault("auto", {"search": ["equivalent", "source-is-broader-than-target"]})
    bind.setdefault("search", ["Observation.code", "Observation.code-value-quantity"])
    bind.setdefault("attributes", {"unit": ["Observation.valueQuantity"]})
    return make_profile(
        LAB,
        binding(**bind),
        files={"identifiers/a.json": ALIASES},
        identifiers="identifiers/a.json",
        strict=strict,
        search={"modifiers": modifiers},
    )


def searched(params: list[tuple[str, str]], p: Profile | None = None) -> list[tuple[str, str]]:
    return list(map_search("Observation", params, p or profile()).params)


L = f"{LOCAL}|"
Q = f"{LOINC}|"
TOKENS = [
    ("one-to-one", "code", f"{Q}X", f"{Q}X,{L}A,{L}A2"),
    ("broader-term-finds-narrower", "code", f"{Q}NX", f"{Q}NX,{L}N"),
    ("related-to-not-in-policy", "code", f"{Q}RX", f"{Q}RX"),
    ("or-list", "code", f"{Q}X,{Q}NX", f"{Q}X,{L}A,{L}A2,{Q}NX,{L}N"),
    ("duplicates-once", "code", f"{Q}X,{L}A", f"{Q}X,{L}A,{L}A2"),
    ("composite", "code-value-quantity", f"{Q}NX$gt5.40", f"{Q}NX$gt5.40,{L}N$gt5.40"),
    ("no-system", "code", "X", "X"),
    ("explicit-no-system", "code", "|X", "|X"),
    ("other-system", "code", "http://snomed.info/sct|X", "http://snomed.info/sct|X"),
    ("unbound-parameter", "category", f"{Q}X", f"{Q}X"),
    ("missing-modifier", "code:missing", "true", "true"),
    ("escaped-comma", "code", f"{Q}ESC", f"{Q}ESC,{L}C\\,1"),
    ("unmapped-passes", "code", f"{Q}NOPE", f"{Q}NOPE"),
]


@pytest.mark.parametrize(
    ("name", "value", "expected"), [t[1:] for t in TOKENS], ids=[t[0] for t in TOKENS]
)
def test_token_parameters(name: str, value: str, expected: str) -> None:
    assert searched([(name, value)]) == [(name, expected)]


def test_order_and_repetitions_are_kept() -> None:
    params = [("code", f"{Q}X"), ("_count", "10"), ("code", f"{Q}NX")]
    assert searched(params) == [
        ("code", f"{Q}X,{L}A,{L}A2"),
        ("_count", "10"),
        ("code", f"{Q}NX,{L}N"),
    ]


MODIFIERS = ["text", "in", "not-in", "below", "above", "not", "code-text", "text-advanced"]


@pytest.mark.parametrize("modifier", MODIFIERS)
def test_unfaithful_modifiers_are_refused(modifier: str) -> None:
    with pytest.raises(BadRequest) as caught:
        searched([(f"code:{modifier}", f"{Q}X")])
    assert (caught.value.status, caught.value.code) == (400, "not-supported")


@pytest.mark.parametrize("modifier", MODIFIERS)
def test_unfaithful_modifiers_pass_unchanged_when_allowed(modifier: str) -> None:
    assert searched([(f"code:{modifier}", f"{Q}X")], profile(modifiers="pass")) == [
        (f"code:{modifier}", f"{Q}X")
    ]


# --- never guessed


def test_conditional_candidates_are_refused_when_strict() -> None:
    with pytest.raises(BadRequest, match="depends on other elements"):
        searched([("code", f"{Q}C1")])


def test_conditional_candidates_are_left_out_when_not_strict() -> None:
    result = map_search("Observation", [("code", f"{Q}C1")], profile(strict=False))
    assert result.params == (("code", f"{Q}C1"),)
    assert result.notes == (f"code: {Q}C1 (depends on other elements) left untranslated",)


def test_any_code_of_a_system_is_refused_when_strict() -> None:
    with pytest.raises(BadRequest, match="any code"):
        searched([("code", Q)])


def test_unmapped_reject_is_a_400() -> None:
    strict = profile(unmapped={"search": {"mode": "reject"}})
    with pytest.raises(BadRequest) as caught:
        searched([("code", f"{Q}NOPE")], strict)
    assert caught.value.code == "code-invalid"


# --- identifiers


IDENTIFIERS = [
    ("identifier", "identifier", "http://mrn.example|42", "urn:oid:1.2.3|42"),
    ("chained", "subject.identifier", "http://mrn.example|42", "urn:oid:1.2.3|42"),
    ("reference-by-identifier", "subject:identifier", "http://mrn.example|42", "urn:oid:1.2.3|42"),
    ("typed-chain", "subject:Patient.identifier", "http://mrn.example|42", "urn:oid:1.2.3|42"),
    (
        "or-list",
        "identifier",
        "http://mrn.example|42,http://other|7,9",
        "urn:oid:1.2.3|42,http://other|7,9",
    ),
    ("escaped-value", "identifier", "http://mrn.example|4\\,2", "urn:oid:1.2.3|4\\,2"),
    ("no-system", "identifier", "42", "42"),
    ("of-type", "identifier:of-type", "http://t|MR|42", "http://t|MR|42"),
    ("missing", "identifier:missing", "false", "false"),
]


@pytest.mark.parametrize(
    ("name", "value", "expected"), [i[1:] for i in IDENTIFIERS], ids=[i[0] for i in IDENTIFIERS]
)
def test_identifier_parameters(name: str, value: str, expected: str) -> None:
    assert searched([(name, value)]) == [(name, expected)]


def test_identifier_text_follows_the_modifier_policy() -> None:
    with pytest.raises(BadRequest):
        searched([("identifier:text", "mrn")])


# --- token text


SPLITS = [
    ("plain", "a,b", ",", ["a", "b"]),
    ("escaped", "a\\,b,c", ",", ["a\\,b", "c"]),
    ("escaped-backslash", "a\\\\,b", ",", ["a\\\\", "b"]),
    ("trailing-backslash", "a\\", ",", ["a\\"]),
    ("empty", "", ",", [""]),
]


@pytest.mark.parametrize(
    ("text", "sep", "parts"), [s[1:] for s in SPLITS], ids=[s[0] for s in SPLITS]
)
def test_split(text: str, sep: str, parts: list[str]) -> None:
    assert split(text, sep) == parts


def test_tokens_round_trip_through_escaping() -> None:
    for system, code in [("http://a|b", "c,d$e\\f"), ("s", ""), ("", "x")]:
        token = parse_token(format_token(system, code))
        assert (token.system, token.code) == (system, code)
    assert unescape(escape("a,b|c$d\\e")) == "a,b|c$d\\e"
    assert parse_token("X").system is None
