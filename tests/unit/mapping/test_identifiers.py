"""Identifier-system aliases: a bijection, applied wherever an identifier sits."""

from __future__ import annotations

from typing import Any

import pytest

from middleware.mapping.identifiers import AliasTable, parse_aliases

OID = "urn:oid:1.2.3.4.5"
URL = "http://hospital.example/mrn"
TABLE = AliasTable({OID: URL}, {URL: OID})


def test_every_identifier_element_is_renamed() -> None:
    resource = {
        "resourceType": "Bundle",
        "entry": [
            {
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [
                        {"system": OID, "value": "1"},
                        {"system": "http://x", "value": "2"},
                    ],
                    "managingOrganization": {"identifier": {"system": OID, "value": "org"}},
                    "contained": [
                        {"resourceType": "Patient", "identifier": [{"system": OID, "value": "3"}]}
                    ],
                }
            }
        ],
    }
    out = TABLE.rewrite(resource, "client")
    patient = out["entry"][0]["resource"]
    assert [i["system"] for i in patient["identifier"]] == [URL, "http://x"]
    assert patient["managingOrganization"]["identifier"]["system"] == URL
    assert patient["contained"][0]["identifier"][0]["system"] == URL
    assert TABLE.rewrite(out, "upstream") == resource


def test_a_system_elsewhere_is_not_an_identifier() -> None:
    resource = {"resourceType": "Observation", "code": {"coding": [{"system": OID, "code": "x"}]}}
    assert TABLE.rewrite(resource, "client") is resource


def test_malformed_identifiers_are_left_alone() -> None:
    resource: dict[str, Any] = {"identifier": [{"system": {"odd": 1}}, "text", None]}
    assert TABLE.rewrite(resource, "client") is resource


def test_tokens() -> None:
    assert TABLE.rewrite_token(f"{URL}|42", "upstream") == f"{OID}|42"
    assert TABLE.rewrite_token("42", "upstream") == "42"
    assert TABLE.rewrite_token("|42", "upstream") == "|42"


PROBLEMS = [
    ("not-a-list", {"aliases": {}}, "needs exactly one key, 'aliases'"),
    ("extra-key", {"aliases": [], "x": 1}, "needs exactly one key, 'aliases'"),
    ("self", {"aliases": [{"upstream": "a", "client": "a"}]}, "a is aliased to itself"),
    ("empty", {"aliases": [{"upstream": "", "client": "b"}]}, "must be non-empty"),
    (
        "unknown-key",
        {"aliases": [{"upstream": "a", "client": "b", "x": 1}]},
        "needs 'upstream' and 'client'",
    ),
    (
        "upstream-twice",
        {"aliases": [{"upstream": "a", "client": "b"}, {"upstream": "a", "client": "c"}]},
        "a already appears",
    ),
    (
        "client-twice",
        {"aliases": [{"upstream": "a", "client": "b"}, {"upstream": "c", "client": "b"}]},
        "b already appears",
    ),
    (
        "both-sides",
        {"aliases": [{"upstream": "a", "client": "b"}, {"upstream": "b", "client": "c"}]},
        "b already appears",
    ),
]


@pytest.mark.parametrize(
    ("raw", "message"), [p[1:] for p in PROBLEMS], ids=[p[0] for p in PROBLEMS]
)
def test_the_table_must_be_a_bijection(raw: Any, message: str) -> None:
    problems: list[str] = []
    assert parse_aliases(raw, problems) == AliasTable()
    assert any(message in p for p in problems), problems
