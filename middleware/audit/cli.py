"""``consentry audit ...``: the compliance officer's commands, each working from the store URL.

    consentry audit search --store sqlite:consentry.db [--patient Patient/x] [--agent A]
        [--since 2026-01-01] [--until 2026-01-31] [--purpose CODE] [--format csv|ndjson]
    consentry audit accounting --patient Patient/x [--format csv|bundle|pdf] [--out FILE]
    consentry audit access-report --patient Patient/x [--format csv|pdf] [--out FILE]
    consentry audit user-report --agent Practitioner/y [--format csv|pdf] [--out FILE]
    consentry audit export --report accounting|access-report|user-report|date-range
        [--patient ...] [--agent ...] [--since ...] [--until ...] [--format ndjson|csv]
        --key-file consentry-ledger.key --out FILE [--checkpoint WITNESSED.note]
    consentry audit verify-export FILE --trust trust.toml
    consentry audit reindex --store ... --key-file consentry-ledger.key
    consentry audit shred --patient Patient/x --reason TEXT --key-file consentry-ledger.key
    consentry audit consent-attempts --patient Patient/x [--suspect Patient/y] --key-file ...
    consentry audit retention [--apply] --config consentry.toml --key-file consentry-ledger.key

Reports come from the audit index (``middleware.audit.accounting``, ``reports``,
``report_csv``); ``export`` adds the proofs (``middleware.audit.export``); ``verify-export``
needs only the file and the trust policy (``middleware.audit.verify_export``). Commands that
read evidence or sign take the ledger's key file. Exit status: 0 done (``verify-export``:
verified), 1 ``verify-export`` found something, 2 the command could not run (its reason on
standard error, no stack trace). Long runs draw a progress bar on a terminal only.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from middleware.audit import cli_admin, cli_attempts, cli_reports, cli_retention, cli_suspend
from middleware.audit.cli_common import Usage
from middleware.errors import GatewayError, SettingsError
from middleware.ledger.errors import LedgerError

__all__ = ["register"]

_DEFAULT_STORE = "sqlite:consentry.db"
_DEFAULT_KEY = "consentry-ledger.key"

_Handler = Callable[[argparse.Namespace, TextIO], int]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``audit`` and its subcommands to ``commands``; each sets ``run(args, out)``."""
    parser = commands.add_parser(
        "audit",
        help="search, report on, export and verify the audit trail",
        description="The audit trail: search it, produce the HIPAA accounting and the access "
        "reports, export them with proofs, verify an export offline, rebuild the index, "
        "crypto-shred a patient.",
    )
    actions = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name, (summary, add_arguments, handler) in _COMMANDS.items():
        sub = actions.add_parser(name, help=summary, description=summary)
        add_arguments(sub)
        sub.set_defaults(run=functools.partial(_run, name, handler))


def _run(name: str, handler: _Handler, args: argparse.Namespace, out: TextIO) -> int:
    try:
        return handler(args, out)
    except (Usage, LedgerError, GatewayError, SettingsError, OSError, ValueError) as exc:
        print(f"consentry audit {name}: {exc}", file=sys.stderr)
        return 2


# -- arguments ------------------------------------------------------------------------------


def _store(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=_DEFAULT_STORE,
        help=f"sqlite:PATH or postgresql://... (default {_DEFAULT_STORE})",
    )
    parser.add_argument("--schema", default="public", help="PostgreSQL schema (default public)")


def _key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key-file",
        type=Path,
        default=Path(_DEFAULT_KEY),
        help=f"the ledger's key file (default {_DEFAULT_KEY}); opens the evidence",
    )


def _scope(parser: argparse.ArgumentParser, *, patient: bool = True, agent: bool = True) -> None:
    if patient:
        parser.add_argument("--patient", help="Patient/<id>")
    if agent:
        parser.add_argument("--agent", help="who acted: Practitioner/<id> or issuer#subject")
    parser.add_argument("--since", help="first day or time (2026-01-01 or RFC 3339), UTC")
    parser.add_argument("--until", help="last day or time (inclusive), UTC")


def _config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        help="the gateway's TOML settings: its accounting exemptions, look-backs and "
        "after-hours window (default: the documented defaults)",
    )


def _output(parser: argparse.ArgumentParser, formats: tuple[str, ...]) -> None:
    parser.add_argument("--format", choices=formats, default=formats[0], help="output format")
    parser.add_argument("--out", type=Path, help="write here (default: standard output)")


def _search_args(parser: argparse.ArgumentParser) -> None:
    _store(parser)
    _scope(parser)
    parser.add_argument("--purpose", help="purpose of use: system|code or a bare code")
    parser.add_argument("--type", dest="event_type", help="AuditEvent.type as system|code")
    parser.add_argument("--action", choices=("C", "R", "U", "D", "E"), help="AuditEvent.action")
    parser.add_argument("--outcome", choices=("0", "4", "8", "12"), help="AuditEvent.outcome")
    parser.add_argument(
        "--sort", default="recorded_us", help="column to sort on (default recorded_us)"
    )
    _output(parser, ("csv", "ndjson"))


def _accounting_args(parser: argparse.ArgumentParser) -> None:
    _config(parser)
    _store(parser)
    _key(parser)  # finds the periods shredded for the patient (middleware.audit.shredded)
    _scope(parser, agent=False)
    _output(parser, ("csv", "bundle", "pdf"))
    parser.add_argument("--detail", action="store_true", help="CSV: one row per disclosure")


def _access_args(parser: argparse.ArgumentParser) -> None:
    _config(parser)
    _store(parser)
    _scope(parser, agent=False)
    _output(parser, ("csv", "pdf"))


def _user_args(parser: argparse.ArgumentParser) -> None:
    _config(parser)
    _store(parser)
    _scope(parser, patient=False)
    _output(parser, ("csv", "pdf"))


def _export_args(parser: argparse.ArgumentParser) -> None:
    _config(parser)
    _store(parser)
    _key(parser)
    parser.add_argument(
        "--report",
        required=True,
        choices=("accounting", "access-report", "user-report", "date-range"),
        help="which report's entries to export",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="prove against this checkpoint (a witnessed one, as GET /ledger/checkpoint "
        "serves it with its cosignatures) instead of the log's latest",
    )
    _scope(parser)
    _output(parser, ("ndjson", "csv"))
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="processes that make a large date-range export (default and most: one per "
        "usable core, and one per 10,000 rows; 1: this process alone)",
    )


def _verify_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="an export (NDJSON or CSV) or a receipt")
    parser.add_argument("--trust", type=Path, required=True, help="trust policy file (TOML)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="processes that check lines (default: one per core; 1: this process alone)",
    )


def _reindex_args(parser: argparse.ArgumentParser) -> None:
    _store(parser)
    _key(parser)
    parser.add_argument("--batch", type=int, default=2000, help="rows per transaction")


def _retention_args(parser: argparse.ArgumentParser) -> None:
    _config(parser)
    _store(parser)
    _key(parser)
    parser.add_argument(
        "--apply", action="store_true", help="remove the evidence (default: only list it)"
    )
    parser.add_argument("--operator", help="who orders it (default: the login name)")


def _shred_args(parser: argparse.ArgumentParser) -> None:
    _store(parser)
    _key(parser)
    parser.add_argument("--patient", required=True, help="Patient/<id> to crypto-shred")
    parser.add_argument(
        "--reason", required=True, help="why (recorded on the ledger; write no PHI here)"
    )
    parser.add_argument("--operator", help="who orders it (default: the login name)")


def _attempts_args(parser: argparse.ArgumentParser) -> None:
    _store(parser)
    _key(parser)
    parser.add_argument("--patient", required=True, help="Patient/<id> whose consents")
    parser.add_argument(
        "--suspect",
        action="append",
        help="Patient/<id> to test a pseudonymous caller against (repeatable)",
    )
    parser.add_argument("--out", type=Path, help="write here (default: standard output)")


def _suspend_args(parser: argparse.ArgumentParser) -> None:
    _store(parser)
    _key(parser)
    parser.add_argument("--agency", help="the agency or official: Organization/<id> etc.")
    parser.add_argument("--until", help="last day (or RFC 3339 time) it specified, inclusive")
    parser.add_argument("--oral", action="store_true", help="an oral statement (30 days at most)")
    parser.add_argument("--lift", type=int, help="end the suspension at this ledger index")
    parser.add_argument("--reason", required=True, help="why (recorded; write no PHI here)")
    parser.add_argument("--operator", help="who orders it (default: the login name)")


_COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], _Handler]] = {
    "search": (
        "search the audit index; every element a column (ONC 170.315(d)(3))",
        _search_args,
        cli_reports.search,
    ),
    "accounting": (
        "the HIPAA accounting of disclosures of one patient (45 CFR 164.528)",
        _accounting_args,
        cli_reports.accounting,
    ),
    "access-report": (
        "every read and write of one patient's record",
        _access_args,
        cli_reports.access,
    ),
    "user-report": (
        "every patient one user touched in a period",
        _user_args,
        cli_reports.user,
    ),
    "export": (
        "export a report's entries with proofs against one signed checkpoint",
        _export_args,
        cli_reports.export,
    ),
    "verify-export": (
        "verify an export or a receipt offline against a trust policy (exit 1 on a finding)",
        _verify_args,
        cli_reports.verify,
    ),
    "reindex": (
        "rebuild the audit index from the ledger's evidence",
        _reindex_args,
        cli_admin.reindex,
    ),
    "shred": (
        "crypto-shred a patient's audit evidence, recorded as an admin ledger entry",
        _shred_args,
        cli_admin.shred,
    ),
    "consent-attempts": (
        "who tried to read or change one patient's consents, callers resolved",
        _attempts_args,
        cli_attempts.consent_attempts,
    ),
    "retention": (
        "list (or with --apply remove) the evidence of entries past their kind's retention",
        _retention_args,
        cli_retention.retention,
    ),
    "suspend": (
        "record (or --lift) a 45 CFR 164.528(a)(2) suspension of accountings to an agency",
        _suspend_args,
        cli_suspend.suspend,
    ),
}
