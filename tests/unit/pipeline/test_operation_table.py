"""The operations table: lookup (deny by default, a type's row over ``*``), the default rows,
and the rows that refuse start-up."""

from __future__ import annotations

import pytest

from middleware.errors import SettingsError
from middleware.fhir.request import Level
from middleware.pipeline.forwarded import holds_patient_data
from middleware.pipeline.operation_table import DEFAULT_TABLE, Mode, parse_operations
from middleware.settings import load_settings

T, INST, S = Level.TYPE, Level.INSTANCE, Level.SYSTEM


@pytest.mark.parametrize(
    ("rtype", "level", "operation", "mode"),
    [
        # filtered
        ("Patient", INST, "$everything", Mode.BUNDLE),
        ("Patient", T, "$everything", Mode.BUNDLE),
        ("Observation", T, "$lastn", Mode.BUNDLE),
        ("Composition", INST, "$document", Mode.DOCUMENT),
        ("Observation", T, "$stats", Mode.STATS),
        # forwarded
        ("ValueSet", T, "$expand", Mode.FORWARD),
        ("CodeSystem", T, "$lookup", Mode.FORWARD),
        ("ConceptMap", T, "$translate", Mode.FORWARD),
        ("Observation", T, "$validate", Mode.FORWARD),
        # refused: instance-level $validate reads a stored record; not named; wrong level
        ("Observation", INST, "$validate", Mode.REFUSE),
        ("Patient", T, "$match", Mode.REFUSE),
        ("Observation", INST, "$everything", Mode.REFUSE),
        ("Observation", INST, "$lastn", Mode.REFUSE),
        ("Composition", T, "$document", Mode.REFUSE),
        (None, S, "$validate", Mode.REFUSE),
        (None, S, "$export", Mode.REFUSE),
        ("Consent", T, "$validate", Mode.REFUSE),
        ("Patient", INST, None, Mode.REFUSE),
    ],
    ids=str,
)
def test_default_table(rtype: str | None, level: Level, operation: str | None, mode: Mode) -> None:
    assert DEFAULT_TABLE.mode(rtype, level, operation) is mode


def test_a_type_row_wins_over_the_any_type_row() -> None:
    table = parse_operations({"Patient/$validate": "refuse"})
    assert table.mode("Patient", T, "$validate") is Mode.REFUSE
    assert table.mode("Observation", T, "$validate") is Mode.FORWARD


def test_replacing_the_defaults_keeps_only_the_rows_given() -> None:
    table = parse_operations({"ValueSet/$expand": "forward"}, replace_defaults=True)
    assert table.mode("ValueSet", T, "$expand") is Mode.FORWARD
    assert table.mode("Patient", INST, "$everything") is Mode.REFUSE


@pytest.mark.parametrize(
    ("key", "mode", "message"),
    [
        ("Patient/[id]/$everything", "forward", "cannot be forwarded unjudged"),
        ("*/[id]/$validate", "forward", "cannot be forwarded unjudged"),
        ("$graphql", "forward", "$graphql cannot be allowed"),
        ("Patient/[id]/$graphql", "filter", "$graphql cannot be allowed"),
        ("Consent/$expand", "forward", "served by the gateway itself"),
        ("Foo/$x", "forward", "unknown resource type Foo"),
        ("Patient/$", "forward", "expected $op"),
        ("Patient/everything", "filter", "expected $op"),
        ("Patient/[ID]/$everything", "filter", "expected $op"),
        ("Observation/$lastn", "allow", "is not one of"),
        ("Patient/$stats", "filter:stats", "Observation/$stats only"),
        # forward: only operations that carry no patient data, on their own types
        ("Patient/$everything", "forward", "carry no patient data may be forwarded"),
        ("Observation/$stats", "forward", "carry no patient data may be forwarded"),
        ("Patient/$merge", "forward", "carry no patient data may be forwarded"),
        ("$process-message", "forward", "carry no patient data may be forwarded"),
        ("ValueSet/$expnd", "forward", "carry no patient data may be forwarded"),
        ("Observation/$expand", "forward", "carry no patient data may be forwarded"),
        ("$validate", "forward", "carry no patient data may be forwarded"),
        # filter: only on operations whose answer has the shape the mode judges
        ("Observation/$stats", "filter:bundle", "judges operations answering a Bundle"),
        ("CodeSystem/$lookup", "filter", "judges operations answering a Bundle"),
        ("Observation/$lastm", "filter", "judges operations answering a Bundle"),
        ("Composition/[id]/$document", "filter:bundle", "answering a Bundle"),
        ("Patient/[id]/$everything", "filter:document", "answering a document"),
        # $export is the gateway's own, whatever the row says
        ("$export", "refuse", "$export is served by the gateway itself"),
        ("Patient/$export", "forward", "$export is served by the gateway itself"),
        ("Group/[id]/$export", "filter", "$export is served by the gateway itself"),
        ("*/$export", "refuse", "$export is served by the gateway itself"),
        ("$export-poll-status", "forward", "$export is served by the gateway itself"),
    ],
    ids=[
        "forward-instance",
        "forward-any-instance",
        "graphql-system",
        "graphql-instance",
        "gateway-type",
        "unknown-type",
        "empty-op",
        "no-dollar",
        "bad-level",
        "bad-mode",
        "stats-elsewhere",
        "forward-everything",
        "forward-stats",
        "forward-merge",
        "forward-process-message",
        "forward-misspelt",
        "forward-wrong-type",
        "forward-system-validate",
        "bundle-stats",
        "bundle-lookup",
        "bundle-misspelt",
        "bundle-document",
        "document-everything",
        "export-system-refuse",
        "export-patient-forward",
        "export-group-filter",
        "export-any-refuse",
        "export-poll-status",
    ],
)
def test_invalid_rows_refuse_startup_naming_the_row(key: str, mode: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(overrides={"upstream": "http://up.test/fhir", "operations": {key: mode}})
    assert f"operations: {key!r}" in str(caught.value)
    assert message in str(caught.value)


def test_rows_come_from_toml_and_the_environment() -> None:
    env = {"CONSENTRY_OPERATIONS": '{"Observation/$lastn": "refuse"}'}
    settings = load_settings(env=env, overrides={"upstream": "http://up.test/fhir"})
    assert settings.operation_table.mode("Observation", T, "$lastn") is Mode.REFUSE
    assert settings.operation_table.mode("ValueSet", T, "$expand") is Mode.FORWARD


@pytest.mark.parametrize(
    ("document", "holds"),
    [
        ({"resourceType": "ValueSet", "expansion": {"contains": [{"code": "a"}]}}, False),
        ({"resourceType": "OperationOutcome", "issue": []}, False),
        (
            {
                "resourceType": "Parameters",
                "parameter": [{"resource": {"resourceType": "Observation"}}],
            },
            True,
        ),
        ({"resourceType": "ValueSet", "contained": [{"resourceType": "Patient"}]}, True),
        ({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Consent"}}]}, True),
        (
            {
                "resourceType": "Parameters",
                "parameter": [
                    {
                        "resource": {
                            "resourceType": "Device",
                            "patient": {"reference": "Patient/p1"},
                        }
                    }
                ],
            },
            True,
        ),
        (
            {
                "resourceType": "Parameters",
                "parameter": [{"resource": {"resourceType": "Device", "id": "d1"}}],
            },
            False,
        ),
    ],
    ids=[
        "valueset",
        "outcome",
        "parameters-part",
        "contained-patient",
        "gateway-own",
        "device-of-a-patient",
        "device-of-nobody",
    ],
)
def test_forwarded_answers_with_patient_data_are_recognised(
    document: dict[str, object], holds: bool
) -> None:
    assert holds_patient_data(document) is holds


@pytest.mark.parametrize(
    "rows",
    [
        {"Patient/$match": "filter", "Encounter/[id]/$everything": "filter"},
        {"Patient/[id]/$summary": "filter:document"},
        {"Patient/$validate": "forward", "ValueSet/$validate-code": "forward"},
    ],
    ids=["bundles", "ips-summary", "forwards"],
)
def test_rows_the_gateway_can_enforce_are_accepted(rows: dict[str, str]) -> None:
    parse_operations(rows)
