"""A bad mapping stops the gateway at load with one SettingsError naming the file and problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from middleware.errors import SettingsError
from middleware.mapping import load_profile, load_profiles
from middleware.mapping.profile import build_profile
from tests.unit.mapping.builders import (
    CANONICAL,
    UNIT_ATTRIBUTE,
    binding,
    element,
    group,
    make_profile,
    profile_json,
    r5_map,
    reader,
    target,
    unit,
)

MAPPINGS = Path(__file__).parents[3] / "mappings"
GOOD = r5_map(group(element("A", target("X"))))


def test_the_shipped_profiles_load() -> None:
    profiles = load_profiles(MAPPINGS)
    assert set(profiles) == {"hospital-a", "r5-client-r4-server"}
    a = profiles["hospital-a"]
    assert [b.canonical for b in a.bindings] == [
        "https://hospital-a.example/fhir/ConceptMap/lab-to-loinc|1.0.0",
        "https://hospital-a.example/fhir/ConceptMap/legacy-lab-to-loinc|1.0.0",
    ]
    assert a.identifiers.to_client == {"urn:oid:1.2.3.4.5": "http://hospital-a.example/mrn"}
    r5 = profiles["r5-client-r4-server"]
    assert (r5.client_version, r5.upstream_version) == ("R5", "R4")


def test_irreversible_entries_are_reported_as_warnings() -> None:
    warnings = load_profiles(MAPPINGS)["hospital-a"].warnings
    assert any("4548-4 is the target of" in w and "ambiguous" in w for w in warnings)
    assert any("GLU-POC" in w and "not equivalent" in w for w in warnings)


def test_defaults_fail_closed() -> None:
    p = make_profile(GOOD)
    assert (p.strict, p.modifiers) == (True, "reject")
    [b] = p.bindings
    assert {op: b.unmapped(op).mode for op in ("response", "search", "write")} == {
        "response": "pass",
        "search": "pass",
        "write": "reject",
    }
    assert b.auto("write") == frozenset({"equivalent"})


def test_source_client_swaps_the_directions() -> None:
    p = make_profile(GOOD, binding(source="client"))
    [b] = p.bindings
    assert (b.to_client.direction, b.to_upstream.direction) == ("reverse", "forward")


def broken(change: dict[str, Any] | None = None, **bind: Any) -> dict[str, Any]:
    return profile_json(binding(**bind), **(change or {}))


# (id, profile JSON, files, expected fragment of the message)
PROBLEMS: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("missing-map-file", broken(), {}, "conceptmaps/lab.json: cannot be read"),
    (
        "bad-relationship-in-map",
        broken(),
        {"conceptmaps/lab.json": r5_map(group(element("A", target("X", "wider"))))},
        "conceptmaps/lab.json: ConceptMap.group[0].element[0].target[0].relationship: 'wider'",
    ),
    (
        "pinned-version-differs",
        broken(canonical="http://example.org/fhir/ConceptMap/lab|2"),
        {"conceptmaps/lab.json": GOOD},
        f"conceptmaps/lab.json: holds {CANONICAL}, but the profile pins "
        "http://example.org/fhir/ConceptMap/lab|2",
    ),
    (
        "unpinned-version",
        broken(canonical="http://x"),
        {"conceptmaps/lab.json": GOOD},
        "the map's url|version",
    ),
    (
        "element-typo",
        broken(elements=["Observation.cdoe"]),
        {"conceptmaps/lab.json": GOOD},
        "conceptmaps[0].elements[0]: Observation has no element 'cdoe' in R4",
    ),
    (
        "element-not-codeableconcept",
        broken(elements=["Observation.status"]),
        {"conceptmaps/lab.json": GOOD},
        "Observation.status is a primitive in R4, not a CodeableConcept",
    ),
    (
        "bad-search",
        broken(search=["observation.code"]),
        {"conceptmaps/lab.json": GOOD},
        "conceptmaps[0].search[0]: 'observation.code' is not 'ResourceType.parameter'",
    ),
    (
        "bad-auto",
        broken(auto={"write": ["wider"]}),
        {"conceptmaps/lab.json": GOOD},
        "conceptmaps[0].auto.write",
    ),
    (
        "fixed-for-search",
        broken(unmapped={"search": {"mode": "fixed"}}),
        {"conceptmaps/lab.json": GOOD},
        "conceptmaps[0].unmapped.search.mode: 'fixed' is not pass or reject",
    ),
    (
        "fixed-without-system",
        broken(
            unmapped={
                "write": {"mode": "fixed", "coding": {"code": "X"}, "relationship": "equivalent"}
            }
        ),
        {"conceptmaps/lab.json": GOOD},
        "a Coding always has a system",
    ),
    (
        "unknown-key",
        broken({"colour": "red"}),
        {"conceptmaps/lab.json": GOOD},
        "unknown key 'colour'",
    ),
    (
        "bad-version",
        broken({"fhir": {"client": "R6", "upstream": "R4"}}),
        {"conceptmaps/lab.json": GOOD},
        "fhir.client: 'R6'",
    ),
    (
        "id-mismatch",
        broken({"id": "other"}),
        {"conceptmaps/lab.json": GOOD},
        "must match the file name",
    ),
    (
        "depends-on-source-unknown",
        broken(),
        {
            "conceptmaps/lab.json": r5_map(
                group(element("A", target("X", dependsOn=unit("mg")))),
                additionalAttribute=UNIT_ATTRIBUTE,
            )
        },
        "its dependsOn/product use unit; say in 'attributes' where each is read",
    ),
    (
        "other-map-cycle",
        broken(),
        {
            "conceptmaps/lab.json": r5_map(
                group(
                    element("A", target("X")), unmapped={"mode": "other-map", "otherMap": CANONICAL}
                )
            )
        },
        f"other-map cycle: {CANONICAL} -> {CANONICAL}",
    ),
    (
        "other-map-not-pinned",
        broken(),
        {
            "conceptmaps/lab.json": r5_map(
                group(
                    element("A", target("X")),
                    unmapped={"mode": "other-map", "otherMap": "http://gone"},
                )
            )
        },
        "other-map http://gone is not loaded; pin it in the profile",
    ),
    (
        "missing-aliases",
        broken({"identifiers": "identifiers/a.json"}),
        {"conceptmaps/lab.json": GOOD},
        "identifiers/a.json: cannot be read",
    ),
    (
        "bad-aliases",
        broken({"identifiers": "identifiers/a.json"}),
        {
            "conceptmaps/lab.json": GOOD,
            "identifiers/a.json": {"aliases": [{"upstream": "a", "client": "a"}]},
        },
        "identifiers/a.json: aliases[0]: a is aliased to itself",
    ),
]


@pytest.mark.parametrize(
    ("raw", "files", "message"), [p[1:] for p in PROBLEMS], ids=[p[0] for p in PROBLEMS]
)
def test_problems_name_the_file_and_the_fault(
    raw: dict[str, Any], files: dict[str, Any], message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        build_profile(raw, name="profiles/test.json", read=reader(files))
    text = str(caught.value)
    assert text.startswith("invalid mapping profile profiles/test.json:")
    assert message in text


def test_every_problem_is_reported_at_once() -> None:
    raw = profile_json(binding(elements=["Observation.cdoe"], search=["x"]), colour="red")
    with pytest.raises(SettingsError) as caught:
        build_profile(raw, name="profiles/test.json", read=reader({"conceptmaps/lab.json": GOOD}))
    assert len(str(caught.value).splitlines()) == 4


def test_two_maps_for_one_system_in_one_element_are_refused() -> None:
    other = r5_map(group(element("B", target("Y"))), url="http://other")
    raw = profile_json(
        binding(), binding(canonical="http://other|1", file="conceptmaps/other.json")
    )
    files = {"conceptmaps/lab.json": GOOD, "conceptmaps/other.json": other}
    with pytest.raises(SettingsError, match="is translated by"):
        build_profile(raw, name="profiles/test.json", read=reader(files))


# --- the file loader


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_loader_reads_below_the_mappings_folder(tmp_path: Path) -> None:
    write(tmp_path, "conceptmaps/lab.json", json.dumps(GOOD))
    path = write(tmp_path, "profiles/test.json", json.dumps(profile_json(binding())))
    assert load_profile(path).id == "test"


LOADER = [
    ("not-json", "{", "conceptmaps/lab.json: is not valid JSON"),
    ("duplicate-key", '{"a": 1, "a": 2}', "key 'a' appears twice"),
]


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in LOADER], ids=[c[0] for c in LOADER])
def test_loader_is_strict_about_json(tmp_path: Path, text: str, message: str) -> None:
    write(tmp_path, "conceptmaps/lab.json", text)
    path = write(tmp_path, "profiles/test.json", json.dumps(profile_json(binding())))
    with pytest.raises(SettingsError, match=message):
        load_profile(path)


def test_loader_refuses_paths_outside_the_folder(tmp_path: Path) -> None:
    write(tmp_path, "outside.json", json.dumps(GOOD))
    root = tmp_path / "mappings"
    path = write(
        root, "profiles/test.json", json.dumps(profile_json(binding(file="../outside.json")))
    )
    with pytest.raises(SettingsError, match="is outside the mappings folder"):
        load_profile(path)
