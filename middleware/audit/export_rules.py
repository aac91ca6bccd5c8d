"""Which entries a per-patient export's report includes: the rule ``verify-export`` applies.

An export's ``other`` lines are the patient's entries in the period that the report leaves
out; without a rule a verifier cannot tell an exempt entry from a row relabelled ``other``.
:func:`default_rule` is the rule of each report kind, from the export's header:

- ``accounting`` (45 CFR 164.528): an entry is a row when it is a disclosure of the header's
  patient that no (a)(1) exemption leaves out under the rules the exporter applied, which
  the header carries (``rules``: :func:`rules_json`; absent, the documented defaults,
  :class:`~middleware.audit.accounting.AccountingRules`);
- ``access-report``: an entry is a row when it is the patient's and the access report shows it
  (``export_columns.access_cells``: data released, writes, refused attempts);
- other kinds: no rule (their ``other`` lines are the entries a search's filters leave out).

The header is not signed: the verifier prints the rules it applied, and the reader compares
them with the covered entity's published exemption table. Pure.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from middleware.audit.accounting import AccountingRules, exemption
from middleware.audit.export import format_time
from middleware.audit.export_columns import access_cells
from middleware.audit.export_read import parse_time
from middleware.audit.row import AuditRow
from middleware.ledger.leaf import EntryKind

__all__ = ["default_rule", "parse_rules", "rules_json"]

Rule = Callable[[AuditRow], bool]


def rules_json(rules: AccountingRules) -> dict[str, Any]:
    """What of ``rules`` decides membership, as the header's ``rules`` object: the exemption
    table, the compliance date (RFC 3339 UTC or null), the internal organizations (sorted)."""
    return {
        "exempt": dict(sorted(rules.exempt.items())),
        "compliance_date": None
        if rules.compliance_date_us is None
        else format_time(rules.compliance_date_us),
        "internal_organizations": sorted(rules.internal_organizations),
    }


def parse_rules(obj: Mapping[str, Any] | None) -> AccountingRules:
    """The :class:`AccountingRules` of a header's ``rules`` (None: the defaults); ValueError
    when it is not what :func:`rules_json` writes."""
    if obj is None:
        return AccountingRules()
    if set(obj) != {"exempt", "compliance_date", "internal_organizations"}:
        raise ValueError("the header's rules are not an accounting's")
    exempt, date, internal = obj["exempt"], obj["compliance_date"], obj["internal_organizations"]
    if not isinstance(exempt, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in exempt.items()
    ):
        raise ValueError("the exemption table maps purposes to categories")
    if not isinstance(internal, list) or not all(isinstance(o, str) for o in internal):
        raise ValueError("the internal organizations are a list of references")
    return AccountingRules(
        exempt=exempt,
        compliance_date_us=parse_time(date),
        internal_organizations=frozenset(internal),
    )


def default_rule(report: str, patient: str | None, rules: Mapping[str, Any] | None) -> Rule | None:
    """The rule of ``report`` for ``patient``'s export (module docstring); ValueError when the
    header's ``rules`` do not parse."""
    if patient is None:
        return None
    if report == "accounting":
        applied = parse_rules(rules)
        return lambda row: (
            row.kind == EntryKind.DISCLOSURE
            and row.patient == patient
            and exemption(row, patient, applied) is None
        )
    if report == "access-report":
        return lambda row: row.patient == patient and access_cells(row) is not None
    return None
