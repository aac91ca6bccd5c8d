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
    contained_labels,
    has_part2_inline,
    mark_part2,
    parse_labels,
    purpose_refusal,
    purposes_admit,
    relabelling_refused,
    screen,
    screen_resource,
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
        [],
        [label("N", "http://terminology.hl7.org/CodeSystem/v3-Confidentiality")],
        [{"code": "TREAT"}],  # no system: labels nothing the gateway can read
        [label("PurposeOfUse")],  # the abstract head of the value set is no label
        [label("CONSENTED")],  # an ActReason code outside PurposeOfUse
        ["TREAT", 3, None],
    ],
    ids=["none", "empty", "confidentiality", "no-system", "abstract", "other", "junk"],
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
    reason = purpose_refusal(resource, pou("HMARKT"), DEFAULT_LABEL_RULES)
    assert reason is not None
    assert "COC, TREAT" in reason
    assert purpose_refusal(resource, pou("ETREAT"), DEFAULT_LABEL_RULES) is None
    assert (
        purpose_refusal({"resourceType": "Observation"}, frozenset(), DEFAULT_LABEL_RULES) is None
    )


def test_purpose_refusal_uses_the_deployments_rules() -> None:
    """``$explain`` must say what the enforcer does: a deployment that ignores TREAT labels
    releases a TREAT-labelled resource, and the explanation must not claim a refusal."""
    resource = {"resourceType": "Observation", "meta": {"security": [label("HTEST")]}}
    enforced = LabelRules(ignored_purposes=frozenset())
    assert purpose_refusal(resource, pou("HMARKT"), DEFAULT_LABEL_RULES) is None
    assert purpose_refusal(resource, pou("HMARKT"), enforced) is not None


# --- odd shapes and aliases: what cannot be read is not vouched for


@pytest.mark.parametrize(
    "security",
    [
        "TREAT",
        label("TREAT"),  # one coding where a list belongs
        42,
    ],
    ids=["string", "object", "number"],
)
def test_labels_that_are_not_a_list_withhold(security: Any) -> None:
    """Attack: an upstream record whose ``meta.security`` is one object, not a list, was
    released to every caller (the labels were not read)."""
    assert screen(security, pou("TREAT"), DEFAULT_LABEL_RULES) is Screen.WITHHOLD


@pytest.mark.parametrize(
    ("system", "code", "verdict"),
    [
        ("urn:oid:2.16.840.1.113883.5.8", "TREAT", Screen.WITHHOLD),
        ("http://hl7.org/fhir/v3/ActReason", "TREAT", Screen.WITHHOLD),
        ("urn:oid:2.16.840.1.113883.5.4", "42CFRPart2", Screen.PART2),
        ("http://hl7.org/fhir/v3/ActCode", "42CFRPart2", Screen.PART2),
    ],
    ids=["actreason-oid", "actreason-old-url", "actcode-oid", "actcode-old-url"],
)
def test_aliases_of_the_v3_systems_are_the_same_labels(
    system: str, code: str, verdict: Screen
) -> None:
    """Attack: a label spelled with the HL7 OID of its code system was not recognised."""
    assert screen([label(code, system)], pou("HMARKT"), DEFAULT_LABEL_RULES) is verdict


def test_a_part2_code_with_no_system_is_part2() -> None:
    """Attack: ``{"code": "42CFRPart2"}`` without a system was released unmarked under a
    general permit; a configured Part 2 code too."""
    assert screen([{"code": "42CFRPart2"}], frozenset(), DEFAULT_LABEL_RULES) is Screen.PART2
    rules = LabelRules(parse_labels("SUD"))
    assert screen([{"code": "SUD"}], frozenset(), rules) is Screen.PART2
    assert screen([{"code": "SUD"}], frozenset(), DEFAULT_LABEL_RULES) is Screen.RELEASE
    inline = {"url": INLINE_LABEL_URL, "valueCoding": {"code": "42CFRPart2"}}
    assert has_part2_inline({"note": [{"extension": [inline]}]}, DEFAULT_LABEL_RULES)


# --- contained resources roll up to their container


def _container(*inner: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "contained": list(inner)}


def _labelled(*codings: dict[str, str]) -> dict[str, Any]:
    return {"resourceType": "Condition", "meta": {"security": list(codings)}}


@pytest.mark.parametrize(
    ("resource", "verdict"),
    [
        (_container(_labelled(label("TREAT"))), Screen.WITHHOLD),
        (_container({"resourceType": "Condition"}, _labelled(label("HRESCH"))), Screen.WITHHOLD),
        (_container(_labelled(label("42CFRPart2", ACT_CODE))), Screen.PART2),
        (_container(_labelled(label("HMARKT"))), Screen.RELEASE),  # the caller's purpose
        (_container({"resourceType": "Condition", "meta": {"security": "TREAT"}}), Screen.WITHHOLD),
        (
            {"resourceType": "Observation", "contained": {"resourceType": "Condition"}},
            Screen.WITHHOLD,
        ),
        (_container(_container(_container(_container(_container(_container()))))), Screen.WITHHOLD),
        (_container("junk", {"resourceType": "Condition"}), Screen.RELEASE),
    ],
    ids=[
        "purpose",
        "second",
        "part2",
        "admitted",
        "not-a-list",
        "contained-object",
        "deep",
        "junk",
    ],
)
def test_contained_labels_roll_up_to_the_container(resource: Any, verdict: Screen) -> None:
    """Attack: a TREAT- or Part 2-labelled Condition contained in an unlabelled Observation
    was released with it to a marketing caller, unmarked."""
    assert screen_resource(resource, pou("HMARKT"), DEFAULT_LABEL_RULES) is verdict


def test_contained_labels_are_collected_canonical() -> None:
    resource = _container(_labelled(label("42CFRPart2", "http://hl7.org/fhir/v3/ActCode")))
    assert contained_labels(resource) == {PART2}
    assert contained_labels({"resourceType": "Observation"}) == frozenset()


# --- writes may not take away labels the caller is not entitled to


def _with(*codings: dict[str, str]) -> dict[str, Any]:
    return {"resourceType": "Observation", "meta": {"security": list(codings)}}


@pytest.mark.parametrize(
    ("before", "after", "refused"),
    [
        (_with(label("TREAT"), label("HRESCH")), _with(label("TREAT")), True),  # HRESCH not met
        # TREAT met, but the caller is not relabelling: a PUT without it opened the record
        (_with(label("TREAT"), label("HRESCH")), _with(label("HRESCH")), True),
        (_with(label("42CFRPart2", ACT_CODE)), {"resourceType": "Observation"}, True),
        (_with(label("42CFRPart2", ACT_CODE)), _with(label("42CFRPart2", ACT_CODE)), False),
        (_with(label("HRESCH")), _with(label("HMARKT")), True),  # changed: HRESCH removed
        ({"resourceType": "Observation"}, _with(label("HRESCH")), False),  # added
        (_with(label("HTEST")), {"resourceType": "Observation"}, False),  # ignored purpose
        (
            _with(label("42CFRPart2", "http://hl7.org/fhir/v3/ActCode")),
            _with(label("42CFRPart2", ACT_CODE)),
            False,
        ),
    ],
    ids=["removes-unmet", "removes-met", "strips-part2", "keeps-part2", "changes", "adds",
         "ignored", "respelled"],
)  # fmt: skip
def test_relabelling_refused(before: Any, after: Any, refused: bool) -> None:
    """Attack: a PATCH ``remove /meta/security`` (or a PUT without the labels) opened a
    labelled record to every caller."""
    assert relabelling_refused(before, after, pou("TREAT"), DEFAULT_LABEL_RULES) is refused
    # A caller acting to relabel (v3-ActReason LABELING) may remove any of them.
    relabeller = pou("TREAT") | pou("LABELING")
    assert relabelling_refused(before, after, relabeller, DEFAULT_LABEL_RULES) is False
