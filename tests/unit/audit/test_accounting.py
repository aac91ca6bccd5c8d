"""HIPAA accounting of disclosures (45 CFR 164.528), one table per rule.

Known answers come from the rule's text, not from the code: which 164.528(a)(1) paragraph
leaves a disclosure out, what 164.528(b)(3) lets a summary say, and when a 164.528(a)(2)
suspension applies.
"""

from __future__ import annotations

import pytest

from middleware.audit.accounting import (
    DEFAULT_EXEMPT,
    EXEMPTIONS,
    AccountingRules,
    RecipientInfo,
    Suspension,
    account,
    parse_exempt,
    purpose_text,
    years_before,
)
from middleware.ledger.leaf import EntryKind
from tests.unit.audit.test_accounting_rows import (
    AR,
    DAY,
    NOW,
    OTHER,
    PATIENT,
    PSEUDONYM,
    purpose,
    row,
    shredded,
)


def accounted(*rows: object, **kwargs: object) -> list[int]:
    """The ledger indexes the accounting of PATIENT lists (all members of every entry)."""
    result = account(rows, patient=PATIENT, as_of_us=NOW, **kwargs)  # type: ignore[arg-type]
    return [i for entry in result.entries for i in entry.indexes]


# --- which rows are disclosures at all ----------------------------------------------------

KINDS = [
    (EntryKind.DISCLOSURE, True),
    (EntryKind.ACCESS_DECISION, False),  # refused or a write's decision: nothing released
    (EntryKind.ACCESS_OUTCOME, False),  # a write: data came in, none went out
    (EntryKind.CONSENT, False),
    (EntryKind.CONSENT_REVOKE, False),
    (EntryKind.ADMIN, False),
    (EntryKind.KEY_EVENT, False),
]


@pytest.mark.parametrize(("kind", "listed"), KINDS, ids=[k.label for k, _ in KINDS])
def test_only_disclosure_entries_are_accounted(kind: EntryKind, listed: bool) -> None:
    assert accounted(row(1, kind=kind)) == ([1] if listed else [])


# --- 164.528(a)(1)(i), (iv), (v): exempt purposes -------------------------------------------

PURPOSES = [
    # (a)(1)(i) treatment, payment, health care operations
    ("TREAT", "tpo"),
    ("ETREAT", "tpo"),
    ("BTG", "tpo"),
    ("COC", "tpo"),
    ("HPAYMT", "tpo"),
    ("COVAUTH", "tpo"),
    ("ELIGVER", "tpo"),
    ("HOPERAT", "tpo"),
    ("HQUALIMP", "tpo"),
    ("PATSFTY", "tpo"),
    # (a)(1)(ii) a personal representative stands for the individual (164.502(g))
    ("PWATRNY", "individual"),
    # (a)(1)(iv) pursuant to an authorization / the individual's request
    ("PATRQT", "authorization"),
    # (a)(1)(v) directory, persons involved in care, notification (164.510)
    ("HDIRECT", "care-notification"),
    ("FAMRQT", "care-notification"),
    ("SUPNWK", "care-notification"),
    ("DISASTER", "care-notification"),
    # accountable: 164.512 disclosures, research, marketing, even under HOPERAT or HPAYMT
    ("HRESCH", None),
    ("CLINTRL", None),
    ("PUBHLTH", None),
    ("THREAT", None),
    ("HLEGAL", None),
    ("GOV", None),
    ("FRAUD", None),
    ("HDECD", None),
    ("DONAT", None),
    ("MILCDM", None),
    ("MILDCRG", None),
    ("HMARKT", None),
    ("NOSUCHCODE", None),
]


@pytest.mark.parametrize(("code", "category"), PURPOSES, ids=[c for c, _ in PURPOSES])
def test_default_purpose_exemptions(code: str, category: str | None) -> None:
    result = account([row(1, purposes=purpose(code))], patient=PATIENT, as_of_us=NOW)
    if category is None:
        assert [e.first.index for e in result.entries] == [1]
        assert dict(result.left_out) == {}
    else:
        assert result.entries == ()
        assert dict(result.left_out) == {category: 1}


MIXED = [
    ((), [1]),  # no purpose at all: fail towards accounting
    (("TREAT", "HPAYMT", "HOPERAT"), []),  # every purpose exempt
    (("TREAT", "HRESCH"), [1]),  # one accountable purpose is enough
    (("HRESCH", "TREAT"), [1]),
]


@pytest.mark.parametrize(
    ("codes", "listed"), MIXED, ids=["none", "all-tpo", "tpo+research", "research+tpo"]
)
def test_a_row_is_exempt_only_when_every_purpose_is(
    codes: tuple[str, ...], listed: list[int]
) -> None:
    purposes = tuple(f"{AR}|{c}" for c in codes)
    assert accounted(row(1, purposes=purposes)) == listed


def test_a_code_of_another_system_is_not_exempt() -> None:
    assert accounted(row(1, purposes=("http://example.org/local|TREAT",))) == [1]


# --- configurable rules ---------------------------------------------------------------------

PARSE = [
    ("", DEFAULT_EXEMPT),
    ("none", {}),
    ("TREAT", {f"{AR}|TREAT": "tpo"}),
    ("PATRQT", {f"{AR}|PATRQT": "authorization"}),
    ("HRESCH=tpo", {f"{AR}|HRESCH": "tpo"}),
    ("urn:x|NS=national-security, urn:x|JAIL=custody",
     {"urn:x|NS": "national-security", "urn:x|JAIL": "custody"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "table"), PARSE, ids=["default", "none", "bare", "keeps", "recat", "local"]
)
def test_parse_exempt(text: str, table: object) -> None:
    assert dict(parse_exempt(text)) == dict(table)  # type: ignore[call-overload]


@pytest.mark.parametrize("text", ["X=bogus", "|X", "a|", "X=before-compliance", "TREAT,,X"])
def test_parse_exempt_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_exempt(text)


LOCAL = [
    ("urn:local|NATSEC", "national-security"),  # (a)(1)(vi): HL7 has no code; a local one
    ("urn:local|CUSTODY", "custody"),  # (a)(1)(vii)
]


@pytest.mark.parametrize(("code", "category"), LOCAL, ids=["national-security", "custody"])
def test_configured_local_exemptions(code: str, category: str) -> None:
    rules = AccountingRules(exempt=parse_exempt(f"{code}={category}"))
    result = account(
        [row(1, purposes=(code,)), row(2, purposes=purpose("TREAT"))],
        patient=PATIENT,
        as_of_us=NOW,
        rules=rules,
    )
    # Only the configured code is exempt: TREAT is not in this table any more.
    assert [e.first.index for e in result.entries] == [2]
    assert dict(result.left_out) == {category: 1}
    assert EXEMPTIONS[category][0].startswith("164.528(a)(1)(v")


def test_nothing_exempt_when_configured_so() -> None:
    rules = AccountingRules(exempt=parse_exempt("none"))
    assert accounted(row(1, purposes=purpose("TREAT")), rules=rules) == [1]


# --- 164.528(a)(1)(ii): to the individual ---------------------------------------------------

SELF = [
    ("fhirUser is the patient", PATIENT, frozenset(), []),
    ("a known login of the patient", "https://idp#pat-1", frozenset({"https://idp#pat-1"}), []),
    ("another patient's fhirUser", OTHER, frozenset(), [1]),
    ("a practitioner", "Practitioner/dr1", frozenset(), [1]),
]


@pytest.mark.parametrize(
    ("agent", "selves", "listed"), [s[1:] for s in SELF], ids=[s[0] for s in SELF]
)
def test_disclosures_to_the_patient_are_left_out(
    agent: str, selves: frozenset[str], listed: list[int]
) -> None:
    assert accounted(row(1, agent=agent), self_agents=selves) == listed


# --- 164.528(a)(1)(ix): before the compliance date -------------------------------------------


@pytest.mark.parametrize(
    ("at", "listed"), [(NOW - 5 * DAY, []), (NOW - 3 * DAY, [1])], ids=["before", "on"]
)
def test_before_the_compliance_date(at: int, listed: list[int]) -> None:
    rules = AccountingRules(compliance_date_us=NOW - 3 * DAY)
    assert accounted(row(1, at=at), rules=rules) == listed


# --- the period: six years back by default (164.528(a)(1), (a)(3)) ---------------------------

PERIOD = [
    ("just inside six years", years_before(NOW, 6), {}, [1]),
    ("just outside six years", years_before(NOW, 6) - 1, {}, []),
    ("now", NOW, {}, [1]),
    ("after now", NOW + 1, {}, []),
    ("a shorter period asked for", NOW - 20 * DAY, {"since_us": NOW - 15 * DAY}, []),
    ("configured two years", years_before(NOW, 3), {"rules": AccountingRules(lookback_years=2)},
     []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("at", "kw", "listed"), [p[1:] for p in PERIOD], ids=[p[0] for p in PERIOD]
)
def test_period(at: int, kw: dict[str, object], listed: list[int]) -> None:
    assert accounted(row(1, at=at), **kw) == listed


YEARS = [
    (NOW, 6, 1551398400_000000),  # 2025-03-01 -> 2019-03-01
    (1709164800_000000, 1, 1677542400_000000),  # 2024-02-29 -> 2023-02-28
]


@pytest.mark.parametrize(("at", "years", "back"), YEARS, ids=["plain", "leap-day"])
def test_years_before(at: int, years: int, back: int) -> None:
    assert years_before(at, years) == back


def test_period_must_not_end_before_it_starts() -> None:
    with pytest.raises(ValueError):
        account([], patient=PATIENT, as_of_us=NOW, since_us=NOW, until_us=NOW - 1)


# --- 164.528(b)(3): repeated disclosures to one recipient for one purpose ----------------------

SUMMARY = [
    # (description, rows, expected entries as lists of indexes)
    ("one disclosure", [row(1)], [[1]]),
    ("same recipient and purpose", [row(1, at=NOW - 9 * DAY), row(2, at=NOW - 5 * DAY),
                                     row(3, at=NOW - DAY)], [[1, 2, 3]]),
    ("another purpose", [row(1), row(2, purposes=purpose("PUBHLTH"))], [[1], [2]]),
    ("another agent", [row(1), row(2, agent="Practitioner/dr2")], [[1], [2]]),
    ("another organization", [row(1), row(2, organization="Organization/o2")], [[1], [2]]),
    ("interleaved", [row(1, at=NOW - 9 * DAY), row(2, at=NOW - 8 * DAY, agent="X/1"),
                     row(3, at=NOW - 7 * DAY)], [[1, 3], [2]]),
    ("input order does not matter", [row(3, at=NOW - DAY), row(1, at=NOW - 9 * DAY)], [[1, 3]]),
]  # fmt: skip


@pytest.mark.parametrize(("rows", "groups"), [s[1:] for s in SUMMARY], ids=[s[0] for s in SUMMARY])
def test_summaries(rows: list[object], groups: list[list[int]]) -> None:
    result = account(rows, patient=PATIENT, as_of_us=NOW)  # type: ignore[arg-type]
    assert [list(e.indexes) for e in result.entries] == groups


def test_a_summary_gives_the_first_in_full_then_number_and_last_date() -> None:
    rows = [row(1, at=NOW - 9 * DAY, types=("Condition",)), row(2, at=NOW - 2 * DAY)]
    (entry,) = account(rows, patient=PATIENT, as_of_us=NOW).entries
    assert entry.summarised
    assert (entry.first.index, entry.first.recorded_us) == (1, NOW - 9 * DAY)
    assert entry.first.resource_types == ("Condition",)
    assert (entry.count, entry.last_us) == (2, NOW - 2 * DAY)
    assert entry.resource_types == ("Condition", "Observation")
    assert entry.first.purpose_text == "healthcare research"


def test_summaries_can_be_turned_off() -> None:
    rules = AccountingRules(summarise=False)
    result = account([row(1), row(2)], patient=PATIENT, as_of_us=NOW, rules=rules)
    assert [e.indexes for e in result.entries] == [(1,), (2,)]


# --- recipients: the directory (164.528(b)(2)(ii)) --------------------------------------------

DIRECTORY = {
    "Practitioner/dr1": RecipientInfo("Dr Ada Lovelace", "1 Main St"),
    "Organization/o9": RecipientInfo("County Health Department", None),
}
RECIPIENTS = [
    ("agent known", {}, ("Dr Ada Lovelace", "1 Main St")),
    ("organization known", {"agent": "Practitioner/x", "organization": "Organization/o9"},
     ("County Health Department", None)),
    ("unknown: the agent reference", {"agent": "Practitioner/x"}, ("Practitioner/x", None)),
    ("no agent: the client", {"agent": None, "organization": None}, ("app-1", None)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kw", "expected"), [r[1:] for r in RECIPIENTS], ids=[r[0] for r in RECIPIENTS]
)
def test_recipient_names(kw: dict[str, object], expected: tuple[str, str | None]) -> None:
    result = account([row(1, **kw)], patient=PATIENT, as_of_us=NOW, directory=DIRECTORY)  # type: ignore[arg-type]
    recipient = result.entries[0].first.recipient
    assert (recipient.name, recipient.address) == expected


# --- 164.528(a)(2): suspensions ---------------------------------------------------------------

AGENCY = "Organization/police"
SUSPENSIONS = [
    ("in force", Suspension(NOW - DAY, NOW + DAY, AGENCY, "investigation", 7), []),
    ("expired", Suspension(NOW - 9 * DAY, NOW - DAY, AGENCY, "investigation", 7), [1]),
    ("not started yet", Suspension(NOW + DAY, NOW + 9 * DAY, AGENCY, "investigation", 7), [1]),
    ("ends now: expired", Suspension(NOW - DAY, NOW, AGENCY, "investigation", 7), [1]),
    ("another agency", Suspension(NOW - DAY, NOW + DAY, "Organization/fbi", "x", 7), [1]),
    ("oral, within 30 days", Suspension(NOW - 29 * DAY, NOW + 90 * DAY, AGENCY, "x", 7, oral=True),
     []),
    ("oral, past 30 days", Suspension(NOW - 30 * DAY, NOW + 90 * DAY, AGENCY, "x", 7, oral=True),
     [1]),
    ("written, past 30 days", Suspension(NOW - 30 * DAY, NOW + 90 * DAY, AGENCY, "x", 7), []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("suspension", "listed"), [s[1:] for s in SUSPENSIONS], ids=[s[0] for s in SUSPENSIONS]
)
def test_suspensions(suspension: Suspension, listed: list[int]) -> None:
    rows = [row(1, organization=AGENCY, at=NOW - 40 * DAY)]
    result = account(rows, patient=PATIENT, as_of_us=NOW, suspensions=[suspension])
    assert [i for e in result.entries for i in e.indexes] == listed
    assert list(result.suspended) == ([] if listed else [1])


def test_a_suspension_matches_the_agent_too_and_spares_other_recipients() -> None:
    susp = Suspension(NOW - DAY, NOW + DAY, "Practitioner/detective", "x", 7)
    rows = [row(1, agent="Practitioner/detective"), row(2)]
    result = account(rows, patient=PATIENT, as_of_us=NOW, suspensions=[susp])
    assert [e.first.index for e in result.entries] == [2]
    assert result.suspended == (1,)


# --- crypto-shredded rows ---------------------------------------------------------------------


def test_shredded_rows_are_reported_as_periods() -> None:
    rows = [
        shredded(row(1, at=NOW - 9 * DAY)),
        shredded(row(2, at=NOW - 8 * DAY, kind=EntryKind.ACCESS_OUTCOME)),
        row(3, at=NOW - 7 * DAY),
        shredded(row(4, at=NOW - 6 * DAY)),
    ]
    result = account(rows, patient=PATIENT, as_of_us=NOW, pseudonym=PSEUDONYM)
    periods = [(p.start_us, p.end_us, p.disclosures) for p in result.shredded_periods]
    assert periods == [(NOW - 9 * DAY, NOW - 8 * DAY, 1), (NOW - 6 * DAY, NOW - 6 * DAY, 1)]
    assert [e.first.index for e in result.entries] == [3]


def test_shredded_rows_of_another_pseudonym_are_ignored() -> None:
    other = shredded(row(1, patient=OTHER))
    result = account([other], patient=PATIENT, as_of_us=NOW, pseudonym=PSEUDONYM)
    assert result.shredded_periods == ()
    assert result.foreign_rows == 1


# --- another patient's row never appears ------------------------------------------------------

FOREIGN = [
    ("other patient", {"patient": OTHER}),
    ("no patient", {"patient": None}),
    ("other patient, to our patient as agent", {"patient": OTHER, "agent": PATIENT}),
]


@pytest.mark.parametrize("kw", [f[1] for f in FOREIGN], ids=[f[0] for f in FOREIGN])
def test_another_patients_row_is_never_included(kw: dict[str, object]) -> None:
    result = account([row(1, **kw), row(2)], patient=PATIENT, as_of_us=NOW)  # type: ignore[arg-type]
    assert [e.first.index for e in result.entries] == [2]
    assert result.foreign_rows == 1


# --- plain words ------------------------------------------------------------------------------

TEXTS = [
    (f"{AR}|TREAT", "treatment"),
    (f"{AR}|PUBHLTH", "public health"),
    (f"{AR}|ZZZ", "ZZZ"),
    ("urn:local|X", "X"),
]


@pytest.mark.parametrize(("code", "text"), TEXTS, ids=["treat", "pubhlth", "unknown", "local"])
def test_purpose_text(code: str, text: str) -> None:
    assert purpose_text(code) == text


def test_every_default_exemption_is_a_known_category() -> None:
    assert set(DEFAULT_EXEMPT.values()) <= set(EXEMPTIONS)


# --- uses inside the covered entity are not disclosures (45 CFR 160.103) ------------------------

INTERNAL = [
    ("own organization", "Organization/o1", []),
    ("another organization", "Organization/o2", [1]),
    ("no organization", None, [1]),
]


@pytest.mark.parametrize(
    ("organization", "listed"), [i[1:] for i in INTERNAL], ids=[i[0] for i in INTERNAL]
)
def test_releases_inside_the_covered_entity_are_uses(
    organization: str | None, listed: list[int]
) -> None:
    rules = AccountingRules(internal_organizations=frozenset({"Organization/o1"}))
    result = account(
        [row(1, organization=organization)], patient=PATIENT, as_of_us=NOW, rules=rules
    )
    assert [i for e in result.entries for i in e.indexes] == listed
    assert dict(result.left_out) == ({} if listed else {"internal-use": 1})


def test_internal_use_is_not_a_purpose_category() -> None:
    with pytest.raises(ValueError):
        parse_exempt("TREAT=internal-use")
