"""``consentry mappings check`` passes on the shipped files and names every problem of a broken
copy; ``consentry mappings explain`` prints each rule with the file and line it comes from."""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from middleware.cli import main
from middleware.mapping.cli import run_command

MAPPINGS = Path(__file__).parents[3] / "mappings"
LAB_MAP = "conceptmaps/hospital-a-lab-to-loinc.json"
LEGACY_MAP = "conceptmaps/hospital-a-legacy-lab-to-loinc.json"
R5_PROFILE = "profiles/r5-client-r4-server.json"


def run(action: str, *argv: str) -> tuple[int, str]:
    out = io.StringIO()
    status = run_command(action, list(argv), stdout=out)
    return status, out.getvalue()


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    root = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, root)
    return root


def edit(root: Path, relative: str, change: Callable[[Any], None]) -> None:
    path = root / relative
    document = json.loads(path.read_text(encoding="utf-8"))
    change(document)
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")


# -- check --------------------------------------------------------------------------------------


def test_check_passes_on_the_shipped_mappings(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run("check", "--mappings", str(MAPPINGS))
    assert status == 0
    assert re.fullmatch(r"ok: 2 profiles, \d+ golden cases, \d+ warnings\n", out)
    warnings = capsys.readouterr().err
    assert "its reverse is ambiguous" in warnings  # strict hospital-a refuses those writes


def test_the_console_script_runs_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mappings", "check", "--mappings", str(MAPPINGS)]) == 0
    assert capsys.readouterr().out.startswith("ok: 2 profiles")


def _golden_expectation(root: Path) -> None:
    edit(
        root,
        "golden/hospital-a/response-observation-potassium.json",
        lambda case: case["expected"].update(status="preliminary"),
    )


def _duplicate_key(root: Path) -> None:
    path = root / LEGACY_MAP
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace('"status":', '"version": "1.0.0",\n  "status":', 1), "utf-8")


def _cycle(root: Path) -> None:
    edit(
        root,
        LEGACY_MAP,
        lambda cm: cm["group"][0].update(
            unmapped={
                "mode": "other-map",
                "otherMap": "https://hospital-a.example/fhir/ConceptMap/lab-to-loinc|1.0.0",
            }
        ),
    )


def _unpinned(root: Path) -> None:
    path = root / LAB_MAP
    text = path.read_text(encoding="utf-8")
    path.write_text(text.replace("legacy-lab-to-loinc|1.0.0", "legacy-lab-to-loinc"), "utf-8")


def _write_back(root: Path) -> None:
    def allow(profile: dict[str, Any]) -> None:
        profile["conceptmaps"][0]["auto"]["write"] = ["equivalent", "source-is-broader-than-target"]

    edit(root, R5_PROFILE, allow)


def _ambiguous_write_back(root: Path) -> None:
    edit(root, "profiles/hospital-a.json", lambda profile: profile.update(strict=False))


def _same_upstream(root: Path) -> None:
    edit(root, R5_PROFILE, lambda profile: profile.update(upstream="hospital-a"))


def _patients(root: Path) -> None:
    edit(root, R5_PROFILE, lambda profile: profile.update(patients={"resolver": "mpi"}))


def _patients_table(root: Path) -> None:
    edit(
        root,
        R5_PROFILE,
        lambda profile: profile.update(
            patients={"resolver": "table", "file": "identifiers/x.json"}
        ),
    )
    rows = [
        {"type": "Patient", "upstream": "1", "client": "alice"},
        {"type": "Patient", "upstream": "2", "client": "alice"},
    ]
    (root / "identifiers/x.json").write_text(json.dumps({"ids": rows}), "utf-8")


def _orphan_golden(root: Path) -> None:
    (root / "golden/nobody").mkdir()


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (_golden_expectation, "response-observation-potassium: output differs at .status"),
        (_duplicate_key, "key 'version' appears twice in one object"),
        (_cycle, "other-map cycle"),
        (
            _unpinned,
            "other-map https://hospital-a.example/fhir/ConceptMap/legacy-lab-to-loinc is not pinned",
        ),
        (_write_back, "used for write-back: https://consentry.dev/fhir/ConceptMap/v2-0078"),
        (
            _ambiguous_write_back,
            "used for write-back: https://hospital-a.example/fhir/ConceptMap/lab-to-loinc|1.0.0: http://loinc.org|4548-4",
        ),
        (_same_upstream, "upstream hospital-a also has profile hospital-a"),
        (_patients, "r5-client-r4-server: patients.resolver: 'mpi' is not 'opaque' or 'table'"),
        (_patients_table, "identifiers/x.json: ids[1]: client id Patient/alice is listed twice"),
        (_orphan_golden, "golden/nobody: no profile names this golden folder"),
    ],
    ids=[
        "golden",
        "duplicate-key",
        "cycle",
        "unpinned",
        "write-back",
        "ambiguous-write-back",
        "same-upstream",
        "patients",
        "patients-table",
        "orphan-golden",
    ],
)
def test_check_fails_with_one_line_per_problem(
    broken: Path, breakage: Callable[[Path], None], expected: str
) -> None:
    breakage(broken)
    status, out = run("check", "--mappings", str(broken))
    assert status == 1
    lines = out.splitlines()
    assert any(expected in line for line in lines), out
    assert not any(line.startswith("ok:") for line in lines)


def test_a_profile_that_does_not_load_names_its_file_on_each_line(broken: Path) -> None:
    edit(broken, "profiles/hospital-a.json", lambda p: p.update(strict="yes", search=[]))
    status, out = run("check", "--mappings", str(broken))
    assert status == 1
    assert out.splitlines() == [
        f"{broken}/profiles/hospital-a.json: strict: must be true or false",
        f"{broken}/profiles/hospital-a.json: search: may only hold 'modifiers'",
        f"{broken}/profiles/hospital-a.json: search.modifiers: None is not 'pass' or 'reject'",
    ]


def test_an_empty_folder_has_no_profiles(tmp_path: Path) -> None:
    assert run("check", "--mappings", str(tmp_path)) == (
        1,
        f"{tmp_path}/profiles: holds no profiles\n",
    )


# -- explain ------------------------------------------------------------------------------------


def case_input(tmp_path: Path, profile: str, name: str) -> Path:
    case = json.loads((MAPPINGS / "golden" / profile / f"{name}.json").read_text("utf-8"))
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(case["input"]), "utf-8")
    return path


RULE = re.compile(
    r"^(?P<where>\S+): (?P<source>\S+) -> (?P<target>\S+) \((?P<rel>[^)]+)\) (by (?P<map>\S+) )?at (?P<file>\S+):(?P<line>\d+)$"
)


def rules(out: str) -> list[re.Match[str]]:
    return [m for m in map(RULE.match, out.splitlines()) if m]


def assert_lines_hold_their_codes(found: list[re.Match[str]], *, reverse: bool = False) -> None:
    """Each rule's file:line is the ConceptMap element (or alias) it names."""
    for rule in found:
        line = Path(rule["file"]).read_text("utf-8").splitlines()[int(rule["line"]) - 1]
        named = rule["target"] if reverse and rule["map"] else rule["source"]
        assert named.rsplit("|", 1)[-1] in line, (rule.group(), line)


def test_explain_an_answer_prints_each_rule_with_file_and_line(tmp_path: Path) -> None:
    resource = case_input(tmp_path, "hospital-a", "response-searchset")
    status, out = run(
        "explain",
        "--mappings",
        str(MAPPINGS),
        "--profile",
        "hospital-a",
        "--resource",
        str(resource),
    )
    assert status == 0
    found = rules(out)
    summary = {
        (r["where"], r["source"].rsplit("|")[-1], r["target"].rsplit("|")[-1], r["rel"])
        for r in found
    }
    assert ("Observation.code", "GLU-POC", "2339-0", "source-is-narrower-than-target") in summary
    assert ("Observation.code", "BUN", "3094-0", "equivalent") in summary  # through other-map
    assert (
        "identifier",
        "urn:oid:1.2.3.4.5",
        "http://hospital-a.example/mrn",
        "identifier alias",
    ) in summary
    legacy = [r for r in found if r["source"].endswith("|BUN")]
    assert legacy[0]["file"].endswith(LEGACY_MAP)
    assert (
        legacy[0]["map"] == "https://hospital-a.example/fhir/ConceptMap/legacy-lab-to-loinc|1.0.0"
    )
    assert_lines_hold_their_codes(found)
    assert "note: Observation.code: http://hospital-a.example/CodeSystem/lab|MISC no-map" in out
    assert "\nresult:\n{" in out


def test_explain_a_write_locates_the_reverse_entry(tmp_path: Path) -> None:
    resource = case_input(tmp_path, "hospital-a", "write-reverse-translates")
    status, out = run(
        "explain",
        "--mappings",
        str(MAPPINGS),
        "--profile",
        "hospital-a",
        "--resource",
        str(resource),
        "--operation",
        "write",
    )
    assert status == 0
    found = rules(out)
    assert {(r["source"], r["target"]) for r in found if r["map"]} == {
        ("http://loinc.org|2345-7", "http://hospital-a.example/CodeSystem/lab|GLU")
    }
    assert_lines_hold_their_codes(found, reverse=True)


def test_explain_an_r4_map_and_its_unmapped_rule(tmp_path: Path) -> None:
    resource = case_input(tmp_path, "r5-client-r4-server", "response-wider-and-provided")
    status, out = run(
        "explain",
        "--mappings",
        str(MAPPINGS),
        "--profile",
        "r5-client-r4-server",
        "--resource",
        str(resource),
    )
    assert status == 0
    found = {r["source"].rsplit("|")[-1]: r for r in rules(out)}
    assert found["VS"]["rel"] == "source-is-narrower-than-target"
    provided = found["D"]
    line = Path(provided["file"]).read_text("utf-8").splitlines()[int(provided["line"]) - 1]
    assert '"unmapped"' in line  # use-source-code comes from group.unmapped


def test_explain_traces_a_fixed_unmapped_policy_to_the_profile(
    broken: Path, tmp_path: Path
) -> None:
    fixed = {
        "mode": "fixed",
        "coding": {"system": "http://hospital-a.example/CodeSystem/lab", "code": "MISC"},
        "relationship": "related-to",
    }
    edit(
        broken,
        "profiles/hospital-a.json",
        lambda p: p["conceptmaps"][0]["unmapped"].update(write=fixed),
    )
    path = tmp_path / "write.json"
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "9999-9"}]},
    }
    path.write_text(json.dumps(observation), "utf-8")
    argv = ["--mappings", str(broken), "--profile", "hospital-a", "--resource", str(path)]
    status, out = run("explain", *argv, "--operation", "write")
    assert status == 0
    [rule] = rules(out)
    assert (rule["source"], rule["target"], rule["rel"]) == (
        "(unmapped)",
        "http://hospital-a.example/CodeSystem/lab|MISC",
        "related-to",
    )
    line = Path(rule["file"]).read_text("utf-8").splitlines()[int(rule["line"]) - 1]
    assert rule["file"].endswith("profiles/hospital-a.json")
    assert '"unmapped"' in line


def test_explain_a_search() -> None:
    status, out = run(
        "explain",
        "--mappings",
        str(MAPPINGS),
        "--profile",
        "hospital-a",
        "--search",
        "Observation?code=http://loinc.org|4548-4&identifier=http://hospital-a.example/mrn|7",
    )
    assert status == 0
    found = rules(out)
    assert [(r["where"], r["target"].rsplit("|")[-1]) for r in found] == [
        ("code", "A1C"),
        ("code", "A1C-POC"),
        ("identifier", "urn:oid:1.2.3.4.5"),
    ]
    assert_lines_hold_their_codes([r for r in found if r["map"]], reverse=True)
    assert '"urn:oid:1.2.3.4.5|7"' in out


def test_explain_prints_a_refusal_and_exits_1() -> None:
    status, out = run(
        "explain",
        "--mappings",
        str(MAPPINGS),
        "--profile",
        "hospital-a",
        "--search",
        "Observation?code:text=x",
    )
    assert status == 1
    assert out.startswith("refused: 400 search parameter code:text")


def test_explain_with_nothing_to_do_says_so(tmp_path: Path) -> None:
    path = tmp_path / "patient.json"
    path.write_text('{"resourceType": "Patient", "id": "1"}', "utf-8")
    status, out = run(
        "explain", "--mappings", str(MAPPINGS), "--profile", "hospital-a", "--resource", str(path)
    )
    assert (status, out.splitlines()[0]) == (0, "no rule applied")


@pytest.mark.parametrize(
    "argv",
    [
        ["--profile", "nobody", "--search", "Observation?code=x"],
        ["--profile", "hospital-a", "--resource", "/nonexistent.json"],
        ["--profile", "hospital-a"],
        ["--profile", "hospital-a", "--search", "x", "--resource", "y"],
    ],
    ids=["unknown-profile", "missing-file", "no-input", "two-inputs"],
)
def test_explain_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert run("explain", "--mappings", str(MAPPINGS), *argv)[0] == 2
    assert capsys.readouterr().err


def test_explain_refuses_a_file_that_is_not_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{", "utf-8")
    assert (
        run(
            "explain",
            "--mappings",
            str(MAPPINGS),
            "--profile",
            "hospital-a",
            "--resource",
            str(path),
        )[0]
        == 2
    )
    assert "not JSON" in capsys.readouterr().err
