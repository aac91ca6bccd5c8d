"""HIPAA accounting of disclosures (45 CFR 164.528) over audit index rows. Pure: no I/O, no clock.

:func:`account` takes one patient's :class:`~middleware.audit.row.AuditRow` s (fetched by the
caller from the index), the time the accounting is made (``as_of_us``), the period, the
:class:`AccountingRules` and the suspensions in effect, and returns an :class:`Accounting`.

Which rows are disclosures: entries of kind ``DISCLOSURE`` (the recorder writes that kind when
data of the patient reached the caller, HTTP status below 400). Writes, refused requests and
consent or admin entries release nothing and are never accounted.

Which disclosures are left out (164.528(a)(1)), decided per row:

* (i) treatment, payment, health care operations; (iv) pursuant to an authorization;
  (v) facility directory, persons involved in care, notification; (vi) national security;
  (vii) correctional institutions and custody: by the row's purpose-of-use codes and
  :attr:`AccountingRules.exempt` (the default mapping is :data:`DEFAULT_EXEMPT`, documented in
  docs/audit.md). A row is exempt only when it names at least one purpose and *every* purpose
  it names is exempt: a token carrying ``TREAT`` and ``HRESCH`` may have served research.
* (ii) to the individual: the row's agent is the patient (``fhirUser`` = the patient), or one
  of the ``self_agents`` the caller knows to be the patient's own logins.
* (ix) before the compliance date: :attr:`AccountingRules.compliance_date_us`.
* Not a disclosure at all: a release inside the covered entity is a use (45 CFR 160.103),
  recognised by the caller's organization (:attr:`AccountingRules.internal_organizations`).
* (iii) incidental and (viii) limited data set have no trace in a row: never applied.

A disclosure without any purpose is accounted (fail towards accounting). Repeated disclosures
to one recipient for one purpose are summarised as 164.528(b)(3) allows (the first in full,
then the number, the period and the last date). Suspensions: 164.528(a)(2), see
:class:`Suspension`. Crypto-shredded rows cannot be read; the accounting lists the periods
they cover (:attr:`Accounting.shredded_periods`) instead of dropping them silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from middleware.audit.purposes import (
    ACT_REASON,
    DEFAULT_EXEMPT,
    EXEMPTIONS,
    parse_exempt,
    purpose_text,
)
from middleware.audit.row import AuditRow
from middleware.ledger.leaf import EntryKind, micros

__all__ = [
    "ACT_REASON",
    "DEFAULT_EXEMPT",
    "EXEMPTIONS",
    "Accounting",
    "AccountingEntry",
    "AccountingRules",
    "Disclosure",
    "Recipient",
    "RecipientInfo",
    "ShreddedPeriod",
    "Suspension",
    "account",
    "exemption",
    "parse_exempt",
    "periods_of",
    "purpose_text",
    "years_before",
]

_DAY_US = 86_400_000_000
_ORAL_LIMIT_US = 30 * _DAY_US  # 164.528(a)(2)(ii)(C)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def years_before(at_us: int, years: int) -> int:
    """``at_us`` moved back ``years`` calendar years (29 February -> 28 February)."""
    at = _EPOCH + timedelta(microseconds=at_us)
    try:
        back = at.replace(year=at.year - years)
    except ValueError:
        back = at.replace(year=at.year - years, day=28)
    return micros(back)


@dataclass(frozen=True, slots=True)
class AccountingRules:
    """The configurable rules. ``exempt``: purpose -> category (:func:`parse_exempt`).
    ``lookback_years``: the default period (164.528(a)(1): up to six years before the
    request). ``compliance_date_us``: disclosures before it are left out ((a)(1)(ix)); None:
    none. ``summarise``: apply 164.528(b)(3) to repeated disclosures.
    ``internal_organizations``: the covered entity's own organization references; a release
    to a caller of one of them is a use, not a disclosure (45 CFR 160.103), and is left out."""

    exempt: Mapping[str, str] = field(default_factory=lambda: DEFAULT_EXEMPT)
    lookback_years: int = 6
    compliance_date_us: int | None = None
    summarise: bool = True
    internal_organizations: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.lookback_years < 1:
            raise ValueError("lookback_years must be positive")
        if any(c not in EXEMPTIONS for c in self.exempt.values()):
            raise ValueError("unknown exemption category")


@dataclass(frozen=True, slots=True)
class Suspension:
    """A 164.528(a)(2) suspension, recorded as an audited admin entry at ``ledger_index``.

    The covered entity "must temporarily suspend an individual's right to receive an accounting
    of disclosures to a health oversight agency or law enforcement official ... for the time
    specified by such agency or official" ((a)(2)(i)). So: while in force at the time the
    accounting is made (``start_us <= as_of < end``), disclosures to ``agency`` (the row's
    agent or organization) are left out; once it has expired they are accounted again. An
    ``oral`` statement suspends for no longer than 30 days from ``start_us`` ((a)(2)(ii)(C))
    unless a written one follows (record that as another, written, suspension)."""

    start_us: int
    end_us: int
    agency: str
    reason: str
    ledger_index: int
    oral: bool = False

    @property
    def effective_end_us(self) -> int:
        """When the suspension stops applying (exclusive)."""
        if self.oral:
            return min(self.end_us, self.start_us + _ORAL_LIMIT_US)
        return self.end_us

    def in_force(self, at_us: int) -> bool:
        """Whether the suspension applies to an accounting made at ``at_us``."""
        return self.start_us <= at_us < self.effective_end_us


@dataclass(frozen=True, slots=True)
class RecipientInfo:
    """What the recipient directory knows of an agent or organization (164.528(b)(2)(ii))."""

    name: str
    address: str | None = None


@dataclass(frozen=True, slots=True)
class Recipient:
    """Who received the data: the agent, their organization and the client application, and
    the directory's name and address when known (else ``name`` is the agent reference)."""

    agent: str | None
    organization: str | None
    client: str | None
    name: str
    address: str | None = None


@dataclass(frozen=True, slots=True)
class Disclosure:
    """One accountable disclosure: ledger ``index``, time, recipient, the resource types
    disclosed (the brief description), the purposes as ``system|code`` and in plain words."""

    index: int
    recorded_us: int
    recipient: Recipient
    resource_types: tuple[str, ...]
    purposes: tuple[str, ...]
    purpose_text: str


@dataclass(frozen=True, slots=True)
class AccountingEntry:
    """One line of the accounting: the disclosures to one recipient for one purpose, in time
    order. ``first`` is given in full and, when ``count`` > 1, the 164.528(b)(3) summary:
    the number, the last date, every ledger index, the resource types of them all."""

    members: tuple[Disclosure, ...]

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("an accounting entry has at least one disclosure")

    @property
    def first(self) -> Disclosure:
        """The first disclosure, in full (164.528(b)(3)(i))."""
        return self.members[0]

    @property
    def count(self) -> int:
        """How many disclosures (164.528(b)(3)(ii))."""
        return len(self.members)

    @property
    def last_us(self) -> int:
        """The time of the last one (164.528(b)(3)(iii))."""
        return self.members[-1].recorded_us

    @property
    def indexes(self) -> tuple[int, ...]:
        """The ledger index of every disclosure the entry stands for."""
        return tuple(d.index for d in self.members)

    @property
    def resource_types(self) -> tuple[str, ...]:
        """Every resource type disclosed (the brief description)."""
        return tuple(sorted({t for d in self.members for t in d.resource_types}))

    @property
    def summarised(self) -> bool:
        """Whether this entry stands for repeated disclosures."""
        return self.count > 1


@dataclass(frozen=True, slots=True)
class ShreddedPeriod:
    """A run of the patient's entries whose evidence was crypto-shredded: from, to (inclusive)
    and how many of them were disclosures (their content can no longer be read)."""

    start_us: int
    end_us: int
    disclosures: int


def periods_of(runs: Iterable[Sequence[AuditRow]]) -> tuple[ShreddedPeriod, ...]:
    """One :class:`ShreddedPeriod` per non-empty run of shredded rows (each in time order)."""
    return tuple(
        ShreddedPeriod(
            run[0].recorded_us,
            run[-1].recorded_us,
            sum(r.kind == EntryKind.DISCLOSURE for r in run),
        )
        for run in runs
        if run
    )


@dataclass(frozen=True, slots=True)
class Accounting:
    """The accounting of ``patient`` for ``since_us`` .. ``until_us`` made at ``as_of_us``.

    ``left_out``: exemption category -> number of disclosures left out for it (what the
    patient is told). ``suspended``: ledger indexes left out under a suspension in force; for
    the compliance officer only, never rendered for the patient (telling would defeat
    164.528(a)(2)). ``foreign_rows``: rows of another patient that were passed in and ignored.
    """

    patient: str
    since_us: int
    until_us: int
    as_of_us: int
    entries: tuple[AccountingEntry, ...]
    shredded_periods: tuple[ShreddedPeriod, ...]
    left_out: Mapping[str, int] = field(default_factory=dict)
    suspended: tuple[int, ...] = ()
    foreign_rows: int = 0

    @property
    def disclosures(self) -> int:
        """How many disclosures the entries stand for."""
        return sum(entry.count for entry in self.entries)


def account(
    rows: Iterable[AuditRow],
    *,
    patient: str,
    as_of_us: int,
    rules: AccountingRules | None = None,
    since_us: int | None = None,
    until_us: int | None = None,
    suspensions: Sequence[Suspension] = (),
    directory: Mapping[str, RecipientInfo] | None = None,
    self_agents: frozenset[str] = frozenset(),
    pseudonym: bytes | None = None,
) -> Accounting:
    """The accounting of disclosures of ``patient`` (``Patient/<id>``); see the module doc.

    ``since_us`` defaults to ``rules.lookback_years`` before ``as_of_us``, ``until_us`` to
    ``as_of_us`` (both inclusive). Rows naming another patient are ignored (counted in
    ``foreign_rows``); shredded rows count only when ``pseudonym`` is None or theirs matches.
    """
    rules = rules or AccountingRules()
    since = years_before(as_of_us, rules.lookback_years) if since_us is None else since_us
    until = as_of_us if until_us is None else until_us
    if since > until:
        raise ValueError("the period starts after it ends")
    active = [s for s in suspensions if s.in_force(as_of_us)]
    agencies = {s.agency for s in active}
    left_out: dict[str, int] = {}
    suspended: list[int] = []
    accountable: list[Disclosure] = []
    foreign = 0
    ordered = sorted(rows, key=lambda r: (r.recorded_us, r.index))
    runs: list[list[AuditRow]] = [[]]
    for row in ordered:
        if not since <= row.recorded_us <= until:
            continue
        if row.shredded:
            if pseudonym is not None and row.pseudonym != pseudonym:
                foreign += 1
                continue
            runs[-1].append(row)
            continue
        if row.patient != patient:
            foreign += 1
            continue
        if runs[-1]:
            runs.append([])
        if row.kind != EntryKind.DISCLOSURE:
            continue
        reason = _exemption(row, patient, rules, self_agents)
        if reason is not None:
            left_out[reason] = left_out.get(reason, 0) + 1
        elif agencies and ({row.agent, row.organization} & agencies):
            suspended.append(row.index)
        else:
            accountable.append(_disclosure(row, directory or {}))
    periods = periods_of(runs)
    return Accounting(
        patient=patient,
        since_us=since,
        until_us=until,
        as_of_us=as_of_us,
        entries=_entries(accountable, summarise=rules.summarise),
        shredded_periods=periods,
        left_out=MappingProxyType(left_out),
        suspended=tuple(suspended),
        foreign_rows=foreign,
    )


def exemption(row: AuditRow, patient: str, rules: AccountingRules) -> str | None:
    """The 164.528(a)(1) category that leaves ``row`` (a disclosure of ``patient``) out of
    the accounting under ``rules``, or None: it is accounted (what :func:`account` decides
    per row, suspensions and ``self_agents`` aside; the export verifier re-applies it)."""
    return _exemption(row, patient, rules, frozenset())


def _exemption(
    row: AuditRow, patient: str, rules: AccountingRules, self_agents: frozenset[str]
) -> str | None:
    """The 164.528(a)(1) category that leaves ``row`` out, or None: it is accounted."""
    if row.agent is not None and (row.agent == patient or row.agent in self_agents):
        return "individual"
    if row.organization is not None and row.organization in rules.internal_organizations:
        return "internal-use"
    if rules.compliance_date_us is not None and row.recorded_us < rules.compliance_date_us:
        return "before-compliance"
    if not row.purposes:
        return None  # no purpose recorded: fail towards accounting
    categories = [rules.exempt.get(p) for p in row.purposes]
    if any(c is None for c in categories):
        return None
    return categories[0]


def _disclosure(row: AuditRow, directory: Mapping[str, RecipientInfo]) -> Disclosure:
    known = (row.agent and directory.get(row.agent)) or (
        row.organization and directory.get(row.organization)
    )
    name = known.name if known else (row.agent or row.organization or row.client or "unknown")
    recipient = Recipient(
        agent=row.agent,
        organization=row.organization,
        client=row.client,
        name=name,
        address=known.address if known else None,
    )
    purposes = tuple(sorted(set(row.purposes)))
    text = ", ".join(purpose_text(p) for p in purposes) if purposes else "not stated"
    return Disclosure(
        index=row.index,
        recorded_us=row.recorded_us,
        recipient=recipient,
        resource_types=tuple(sorted(set(row.resource_types))),
        purposes=purposes,
        purpose_text=text,
    )


def _entries(disclosures: list[Disclosure], *, summarise: bool) -> tuple[AccountingEntry, ...]:
    """164.528(b)(3): group by (recipient, purposes) keeping the first disclosure in full."""
    groups: dict[object, list[Disclosure]] = {}
    for d in disclosures:  # already in (time, index) order
        r = d.recipient
        key = (r.agent, r.organization, r.client, d.purposes) if summarise else d.index
        groups.setdefault(key, []).append(d)
    entries = [AccountingEntry(tuple(group)) for group in groups.values()]
    entries.sort(key=lambda e: (e.first.recorded_us, e.first.index))
    return tuple(entries)
