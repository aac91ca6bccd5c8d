"""Labels on data, the pure rules (consent.labels): purpose-of-use labels against the caller's
purposes with the v3 PurposeOfUse hierarchy, Part 2 data and its marking."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.consent.labels import (
    ACT_CODE,
    ACT_REASON,
    DEFAULT_LABEL_RULES,
    DEFAULT_PART2_NOTICE,
    DISPLAY_URL,
    PART2,
    PURPOSE_PARENT,
    REFRAIN,
    LabelRules,
    Screen,
    has_part2_inline,
    mark_part2,
    parse_labels,
    purpose_refusal,
    purposes_admit,
    screen,
)
from middleware.consent.model import Coding
from middleware.consent.summary import INLINE_LABEL_URL


def pou(*codes: str) -> frozenset[Coding]:
    return frozenset((ACT_REASON, code) for code in codes)


def label(code: str, system: str = ACT_REASON) -> dict[str, str]:
    return {"system": system, "code": code}


@pytest.mark.parametrize(
    ("labels", "purposes", "released"),
    [
        # the same purpose
        (["TREAT"], ["TREAT"], True),
        # a specialisation of the labelled purpose (ETREAT is-a TREAT; BTG is-a ETREAT)
        (["TREAT"], ["ETREAT"], True),
        (["TREAT"], ["BTG"], True),
        (["HOPERAT"], ["LABELING"], True),  # two levels: LABELING < HSYSADMIN < HOPERAT
        (["HPAYMT"], ["ELIGVER"], True),
        # a more general purpose does not meet a specialised label
        (["ETREAT"], ["TREAT"], False),
        (["CLINTRCHPC"], ["HRESCH"], False),
        # an unrelated purpose, and none at all
        (["TREAT"], ["HMARKT"], False),
        (["TREAT"], [], False),
        # several labels are alternatives: one met is enough
        (["HRESCH", "TREAT"], ["COC"], True),
        (["HRESCH", "PUBHLTH"], ["COC"], False),
        # several purposes: any one meeting a label is enough
        (["PUBHLTH"], ["HMARKT", "THREAT"], True),
    ],
    ids=lambda v: ",".join(v) if isinstance(v, list) else str(v),
)
def test_purpose_labels_against_the_callers_purposes(
    labels: list[str], purposes: list[str], released: bool
) -> None:
    security = [label(code) for code in labels]
    expected = Screen.RELEASE if released else Screen.WITHHOLD
    assert screen(security, pou(*purposes), DEFAULT_LABEL_RULES) is expected


def test_a_caller_purpose_in_another_system_meets_no_label() -> None:
    """Only v3-ActReason purposes count: a local code spelled ``TREAT`` is not treatment."""
    purposes = frozenset({("urn:example:pou", "TREAT")})
    assert screen([label("TREAT")], purposes, DEFAULT_LABEL_RULES) is Screen.WITHHOLD


def test_the_retired_act_reason_url_is_the_same_code_system() -> None:
    old = "http://hl7.org/fhir/v3/ActReason"
    assert screen([label("TREAT", old)], pou("ETREAT"), DEFAULT_LABEL_RULES) is Screen.RELEASE
    assert purposes_admit({"TREAT"}, frozenset({(old, "COC")}))


@pytest.mark.parametrize(
    "security",
    [
        None,
        "TREAT",
        [],
        [label("N", "http://terminology.hl7.org/CodeSystem/v3-Confidentiality")],
        [{"code": "TREAT"}],  # no system: labels nothing the gateway can read
        [label("PurposeOfUse")],  # the abstract head of the value set is no label
        [label("CONSENTED")],  # an ActReason code outside PurposeOfUse
        ["TREAT", 3, None],
    ],
    ids=["none", "string", "empty", "confidentiality", "no-system", "abstract", "other", "junk"],
)
def test_labels_that_are_no_purpose_of_use_release(security: Any) -> None:
    assert screen(security, frozenset(), DEFAULT_LABEL_RULES) is Screen.RELEASE


def test_the_hierarchy_is_a_tree_under_the_top_level_purposes() -> None:
    """Every parent is itself a purpose (no dangling names), and no chain loops."""
    for code, parent in PURPOSE_PARENT.items():
        seen = {code}
        at = parent
        while at is not None:
            assert at in PURPOSE_PARENT
            assert at not in seen
            seen.add(at)
            at = PURPOSE_PARENT[at]
    roots = {c for c, p in PURPOSE_PARENT.items() if p is None}
    assert roots == {"HMARKT", "HOPERAT", "HPAYMT", "HRESCH", "PATRQT", "PUBHLTH", "TREAT"}


@given(
    st.sampled_from(sorted(PURPOSE_PARENT)),
    st.sets(st.sampled_from(sorted(PURPOSE_PARENT)), max_size=4),
)
def test_a_purpose_meets_a_label_exactly_when_the_label_is_above_or_equal_to_it(
    asked: str, labelled: set[str]
) -> None:
    """Property: released iff some label is the purpose itself or one of its ancestors."""
    ancestors = {asked}
    at = PURPOSE_PARENT[asked]
    while at is not None:
        ancestors.add(at)
        at = PURPOSE_PARENT[at]
    security = [label(code) for code in labelled]
    verdict = screen(security, pou(asked), DEFAULT_LABEL_RULES)
    enforced = labelled - DEFAULT_LABEL_RULES.ignored_purposes  # HTEST: a tag (settings)
    if not enforced:
        assert verdict is Screen.RELEASE
    else:
        assert (verdict is Screen.RELEASE) == bool(ancestors & enforced)
    everything = LabelRules(ignored_purposes=frozenset())
    strict = screen(security, pou(asked), everything)
    assert (strict is Screen.RELEASE) == (not labelled or bool(ancestors & labelled))
    assert screen(security, pou(asked), everything, by_purpose=False) is Screen.RELEASE


# --- Part 2 data


def test_part2_is_the_privacy_law_code_and_the_configured_sensitivities() -> None:
    rules = LabelRules(parse_labels("SUD, http://hl7.org/fhir/v3/ActCode|ETH"))
    assert rules.part2 == {PART2, (ACT_CODE, "SUD"), (ACT_CODE, "ETH")}
    assert screen([label("42CFRPart2", ACT_CODE)], frozenset(), rules) is Screen.PART2
    assert screen([label("SUD", ACT_CODE)], frozenset(), rules) is Screen.PART2
    assert screen([label("SUD", ACT_CODE)], frozenset(), DEFAULT_LABEL_RULES) is Screen.RELEASE


def test_a_purpose_label_the_caller_does_not_meet_withholds_part2_data_too() -> None:
    security = [label("42CFRPart2", ACT_CODE), label("TREAT")]
    assert screen(security, pou("HPAYMT"), DEFAULT_LABEL_RULES) is Screen.WITHHOLD
    assert screen(security, pou("TREAT"), DEFAULT_LABEL_RULES) is Screen.PART2


@pytest.mark.parametrize(
    "text", ["|SUD", "urn:x|", "SUD,  ,"], ids=["no-system", "no-code", "blanks"]
)
def test_parse_labels(text: str) -> None:
    if text == "SUD,  ,":
        assert parse_labels(text) == {(ACT_CODE, "SUD")}
    else:
        with pytest.raises(ValueError, match="label"):
            parse_labels(text)


def test_a_blank_notice_is_refused() -> None:
    with pytest.raises(ValueError, match="notice"):
        LabelRules(notice="  ")


def test_mark_part2_adds_the_refrain_label_and_the_notice_once() -> None:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": {"security": [label("42CFRPart2", ACT_CODE)]},
    }
    mark_part2(resource, DEFAULT_LABEL_RULES)
    mark_part2(resource, DEFAULT_LABEL_RULES)
    meta = resource["meta"]
    refrains = [c for c in meta["security"] if (c["system"], c["code"]) == REFRAIN]
    assert len(refrains) == 1
    assert meta["extension"] == [
        {"url": DISPLAY_URL, "valueAnnotation": {"text": DEFAULT_PART2_NOTICE}}
    ]
    assert "42 CFR part 2" in DEFAULT_PART2_NOTICE


def test_mark_part2_on_a_resource_without_meta() -> None:
    resource: dict[str, Any] = {"resourceType": "Observation", "meta": "junk"}
    mark_part2(resource, LabelRules(notice="Part 2 notice."))
    assert resource["meta"]["security"][0]["code"] == "NORDSCLCD"
    assert resource["meta"]["extension"][0]["valueAnnotation"]["text"] == "Part 2 notice."


def test_an_inline_part2_label_is_found_at_any_depth() -> None:
    inline = {"url": INLINE_LABEL_URL, "valueCoding": label("42CFRPart2", ACT_CODE)}
    resource = {"resourceType": "Observation", "note": [{"text": "x", "extension": [inline]}]}
    assert has_part2_inline(resource, DEFAULT_LABEL_RULES)
    other = {"url": INLINE_LABEL_URL, "valueCoding": label("PSY", ACT_CODE)}
    assert not has_part2_inline({"note": [{"extension": [other]}]}, DEFAULT_LABEL_RULES)


def test_purpose_refusal_names_the_labels_for_explain() -> None:
    resource = {"resourceType": "Observation", "meta": {"security": [label("TREAT"), label("COC")]}}
    reason = purpose_refusal(resource, pou("HMARKT"))
    assert reason is not None
    assert "COC, TREAT" in reason
    assert purpose_refusal(resource, pou("ETREAT")) is None
    assert purpose_refusal({"resourceType": "Observation"}, frozenset()) is None
