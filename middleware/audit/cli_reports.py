"""``consentry audit search|accounting|access-report|user-report|export|verify-export``.

Each report command reads its rows from the audit index (paged), hands them to the report's
pure function (``accounting.account``, ``reports.access_report`` / ``user_activity`` /
``date_range``) and renders them (``report_csv``, ``report_bundle``, ``report_pdf``).
``export`` writes the report's entries with proofs (``export_collect``, ``export``);
``verify-export`` checks a file offline (``verify_export``) and prints a JSON report.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TextIO, TypeVar

from middleware.audit.accounting import Accounting, AccountingRules, account
from middleware.audit.cli_common import (
    Usage,
    all_rows,
    now_us,
    opened,
    parse_time,
    print_json,
    private_file,
    read_key,
    warn,
    write_output,
)
from middleware.audit.evidence import EVIDENCE_PURPOSE
from middleware.audit.export import EntryOpening
from middleware.audit.export_collect import ExportSpec, LogView, SnapshotView, StoreView
from middleware.audit.export_make import accounting_rows, make_export
from middleware.audit.export_parallel import PARALLEL_ROWS, PartsJob, Terminated, export_in_parts
from middleware.audit.export_write import write_csv, write_ndjson
from middleware.audit.facts_row import open_row
from middleware.audit.progress import Progress
from middleware.audit.report_bundle import accounting_bundle
from middleware.audit.report_csv import (
    access_csv,
    accounting_csv,
    date_range_csv,
    date_range_ndjson,
)
from middleware.audit.report_pdf import access_pdf, accounting_pdf, user_pdf
from middleware.audit.reports import (
    AccessReport,
    AfterHours,
    UserReport,
    access_report,
    date_range,
    user_activity,
)
from middleware.audit.row import AuditQuery, AuditRow
from middleware.audit.shredded import shredded_rows
from middleware.audit.suspensions import SuspensionLog
from middleware.audit.verify_parallel import verify_path
from middleware.ledger.leaf import LeafFields
from middleware.ledger.signing import derive_box_key
from middleware.ledger.trust import parse_policy
from middleware.settings import Settings, load_settings
from middleware.storage.consent_base import LOOKUP_PURPOSE, lookup_of
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_bulk import read_bulk
from middleware.storage.ledger_open import open_log_store

__all__ = ["access", "accounting", "export", "facts_opener", "search", "user", "verify"]

_GATEWAY_NAME = "Consentry gateway"
#: An export of at least 1/_BULK of the log reads it in one snapshot.
_BULK = 8
_T = TypeVar("_T")


def _query(args: argparse.Namespace, **extra: object) -> AuditQuery:
    fields: dict[str, object] = {
        "since_us": parse_time(args.since),
        "until_us": parse_time(args.until, end=True),
        "patient": getattr(args, "patient", None),
        "agent": getattr(args, "agent", None),
    }
    fields.update(extra)
    return AuditQuery(**fields)  # type: ignore[arg-type]


def _need(args: argparse.Namespace, name: str) -> str:
    value = getattr(args, name, None)
    if not value:
        raise Usage(f"--{name} is required for this report")
    return str(value)


# -- search ---------------------------------------------------------------------------------


def search(args: argparse.Namespace, out: TextIO) -> int:
    query = _query(
        args,
        purpose=args.purpose,
        event_type=args.event_type,
        action=args.action,
        outcome=args.outcome,
    )

    async def run() -> list[AuditRow]:
        async with opened(args) as store:
            return await all_rows(store, query)

    rows = asyncio.run(run())
    ordered = date_range(rows, since_us=0, until_us=2**63, sort=args.sort)
    render = date_range_ndjson if args.format == "ndjson" else date_range_csv
    write_output(args, out, render(ordered))
    return 0


# -- accounting, access report, user report --------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings | None:
    """The gateway's settings from ``--config`` (its exemption table, look-backs, after-hours
    window), or None for the documented defaults."""
    config: Path | None = getattr(args, "config", None)
    if config is None:
        return None
    return load_settings(config_file=config, env=os.environ)


def _rules(args: argparse.Namespace) -> AccountingRules:
    settings = _settings(args)
    return AccountingRules() if settings is None else settings.accounting_rules


def _after(args: argparse.Namespace) -> AfterHours | None:
    settings = _settings(args)
    return None if settings is None else settings.after_hours


async def _accounting(store: LogStore, args: argparse.Namespace) -> Accounting:
    patient = _need(args, "patient")
    rows = await all_rows(store, AuditQuery(patient=patient))
    rows += await _shredded(store, args, patient)
    settings = _settings(args)
    return account(
        rows,
        patient=patient,
        as_of_us=now_us(),
        rules=None if settings is None else settings.accounting_rules,
        since_us=parse_time(args.since),
        until_us=parse_time(args.until, end=True),
        suspensions=await SuspensionLog().current(store),  # 164.528(a)(2)
        # 164.528(b)(2)(ii): the recipients' names and addresses, from --config's directory
        directory=None if settings is None else settings.recipient_directory(),
    )


async def _shredded(store: LogStore, args: argparse.Namespace, patient: str) -> list[AuditRow]:
    """The patient's crypto-shredded rows (found by the shred's link, which takes the ledger
    key): the accounting names their periods. Without a readable key file they cannot be
    found, and the accounting says so on standard error rather than omit them silently."""
    lookup = await asyncio.to_thread(_lookup_key, args)
    if lookup is None:
        warn(
            "consentry audit accounting: warning: no ledger key file, so periods shredded "
            "for this patient cannot be listed"
        )
        return []
    return await shredded_rows(store, lookup_of(lookup, patient))


def _lookup_key(args: argparse.Namespace) -> bytes | None:
    path = getattr(args, "key_file", None)
    if path is None or not Path(path).is_file():
        return None
    return derive_box_key(read_key(Path(path)).data_secret, LOOKUP_PURPOSE)


def _read(
    args: argparse.Namespace, read: Callable[[LogStore, argparse.Namespace], Awaitable[_T]]
) -> _T:
    """What ``read`` makes of the store ``args`` name (opened for it, closed afterwards)."""

    async def run() -> _T:
        async with opened(args) as store:
            return await read(store, args)

    return asyncio.run(run())


def accounting(args: argparse.Namespace, out: TextIO) -> int:
    made = _read(args, _accounting)
    if args.format == "pdf":
        write_output(args, out, accounting_pdf(made, gateway_name=_GATEWAY_NAME))
    elif args.format == "bundle":
        bundle = accounting_bundle(made, gateway_name=_GATEWAY_NAME)
        write_output(args, out, json.dumps(bundle, indent=2) + "\n")
    else:
        write_output(args, out, accounting_csv(made, detail=args.detail))
    return 0


async def _access(store: LogStore, args: argparse.Namespace) -> AccessReport:
    patient = _need(args, "patient")
    rows = await all_rows(store, AuditQuery(patient=patient))
    settings = _settings(args)
    return access_report(
        rows,
        patient=patient,
        as_of_us=now_us(),
        lookback_years=3 if settings is None else settings.access_report_lookback_years,
        since_us=parse_time(args.since),
        until_us=parse_time(args.until, end=True),
    )


def access(args: argparse.Namespace, out: TextIO) -> int:
    report = _read(args, _access)
    return _write_report(
        args,
        out,
        report,
        lambda: access_pdf(report, gateway_name=_GATEWAY_NAME, after=_after(args)),
    )


async def _user(store: LogStore, args: argparse.Namespace) -> UserReport:
    agent = _need(args, "agent")
    since, until = parse_time(args.since), parse_time(args.until, end=True)
    rows = await all_rows(store, AuditQuery(agent=agent, since_us=since, until_us=until))
    return user_activity(
        rows, agent=agent, since_us=since or 0, until_us=now_us() if until is None else until
    )


def user(args: argparse.Namespace, out: TextIO) -> int:
    report = _read(args, _user)
    return _write_report(
        args,
        out,
        report,
        lambda: user_pdf(report, gateway_name=_GATEWAY_NAME, after=_after(args)),
    )


def _write_report(
    args: argparse.Namespace,
    out: TextIO,
    report: AccessReport | UserReport,
    pdf: Callable[[], bytes],
) -> int:
    """An access or user activity report as ``--format`` asks: ``pdf()`` or the CSV."""
    write_output(args, out, pdf() if args.format == "pdf" else access_csv(report))
    return 0


# -- export with proofs ---------------------------------------------------------------------


async def _report_rows(
    store: LogStore, args: argparse.Namespace
) -> tuple[list[AuditRow], int | None, int | None]:
    """The index rows the report stands for, and the period it covers (the report's own,
    with its default look-back, when it has one)."""
    kind: str = args.report
    since, until = parse_time(args.since), parse_time(args.until, end=True)
    if kind == "accounting":
        made = await _accounting(store, args)
        rows = await all_rows(store, AuditQuery(patient=made.patient))
        return accounting_rows(made, rows), made.since_us, made.until_us
    if kind == "access-report":
        report = await _access(store, args)
        wanted = {line.index for line in report.lines}
        rows = await all_rows(store, AuditQuery(patient=report.patient))
        since, until = report.since_us, report.until_us
    elif kind == "user-report":
        user_report = await _user(store, args)
        wanted = {line.index for line in user_report.lines}
        rows = await all_rows(store, _query(args))
        since, until = user_report.since_us, user_report.until_us
    else:  # every row the query matches
        return await all_rows(store, _query(args)), since, until
    return [row for row in rows if row.index in wanted], since, until


def export(args: argparse.Namespace, out: TextIO) -> int:
    """``consentry audit export``: the report's entries with proofs, to ``--out``.

    The store is opened without its replay (``open_log_store(replay=False)``), which at
    about 2 µs an entry of the whole log, more with frequent checkpoints, was most of a small
    export's time. That weakens nothing: what the replay refuses on open, the export refuses
    for everything its file holds (``export_collect``: the leaf hashes it proves against have
    the signed checkpoint's root, every leaf it reads (the exported ones and the whole
    patient chain) is valid and hashes to its proof's leaf, the chain links leaf to leaf and
    the tail holds none of it), and every line is then checked offline against the signed
    checkpoint by ``verify-export``. The log is not written: a store so opened is read-only
    and refuses every write, and a state row behind the leaves is left for the gateway's
    next open to rebuild. ``consentry serve``, ``ledger verify`` and every
    command that writes still replay."""
    if args.out is None:
        raise Usage("name the export file with --out")
    started = time.perf_counter()  # rows_per_second: both paths from here

    async def run() -> dict[str, object]:
        store = await open_log_store(args.store, schema=args.schema, replay=False)
        try:
            kind = args.report
            rows, since, until = await _report_rows(store, args)
            # Most of the log: one snapshot read beats a read per entry.
            bulk = len(rows) * _BULK >= await store.size()
            view: LogView
            if args.checkpoint is not None:  # a witnessed checkpoint (docs/ledger.md)
                view = await StoreView.at(store, args.checkpoint.read_text(encoding="utf-8"))
            elif bulk:
                view = SnapshotView(await read_bulk(args.store, schema=args.schema))
            else:
                view = await StoreView.open(store)
            header, entries = await make_export(
                store,
                view,
                rows,
                report=kind,
                wrap_key=derive_box_key(read_key(args.key_file).data_secret, EVIDENCE_PURPOSE),
                patient=getattr(args, "patient", None) if kind != "user-report" else None,
                agent=args.agent if kind == "user-report" else None,
                since_us=since,
                until_us=until,
                rules=_rules(args) if kind == "accounting" else None,
            )
            with Progress("export", total=None) as progress:
                temporary = private_file(args.out)
                write = write_csv if args.format == "csv" else write_ndjson
                with temporary.open("wb") as sink:  # UTF-8 bytes as the writers make them
                    lines = write(header, entries, sink, progress=progress.update)
                temporary.replace(args.out)
                return {
                    "out": str(args.out),
                    "report": kind,
                    "rows": len(rows),
                    "lines": lines,
                    "complete": bool(header.chain),
                    "rows_per_second": _rate(progress.done, started),
                }
        finally:
            await store.close()

    with _collector_paused():
        made = _in_parts(args, started=started) or asyncio.run(run())
    print_json(out, made)
    return 0


def _rate(done: int, started: float) -> int:
    """Per second of the command's whole run (``started``: its ``perf_counter``), whichever
    path made the file."""
    seconds = time.perf_counter() - started
    return round(done / seconds) if seconds > 0 else 0


def _in_parts(
    args: argparse.Namespace,
    *,
    min_rows: int = PARALLEL_ROWS,
    cores: int | None = None,
    started: float | None = None,
) -> dict[str, object] | None:
    """A date-range export of at least ``min_rows`` rows made by worker processes
    (``export_parallel``: at most ``cores``, None: the usable ones), the same bytes and the
    same answer as ``export``'s (its rate from ``started``, None: from here); None:
    ``export`` makes it here instead. SIGTERM or SIGHUP meanwhile ends the process as the
    signal would have, once the workers and the unfinished file are gone."""
    started = time.perf_counter() if started is None else started
    if args.report != "date-range" or args.checkpoint is not None or args.patient is not None:
        return None
    job = _parts_job(args)
    with Progress("export", total=None) as progress:
        temporary = private_file(args.out)
        try:
            made = export_in_parts(
                job,
                temporary,
                jobs=args.jobs,
                cores=cores,
                min_rows=min_rows,
                tell=progress.update,
            )
        except BaseException as exc:
            temporary.unlink(missing_ok=True)
            if isinstance(exc, Terminated):
                exc.deliver()
            raise
        if made is None:
            temporary.unlink(missing_ok=True)
            return None
        temporary.replace(args.out)
        rows, lines = made
        return {
            "out": str(args.out),
            "report": args.report,
            "rows": rows,
            "lines": lines,
            "complete": False,  # no patient chain (header.chain is None)
            "rows_per_second": _rate(progress.done, started),
        }


def _parts_job(args: argparse.Namespace) -> PartsJob:
    """What ``export`` would export for a date range without a patient (``make_export``'s
    spec: no agent, no chain, no rules)."""
    return PartsJob(
        url=args.store,
        schema=args.schema,
        query=_query(args),
        fmt=args.format,
        spec=ExportSpec(
            report=args.report,
            since_us=parse_time(args.since),
            until_us=parse_time(args.until, end=True),
        ),
        wrap_key=derive_box_key(read_key(args.key_file).data_secret, EVIDENCE_PURPOSE),
    )


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused (and restored after). An export holds every
    row, leaf and opening it writes until the end, hundreds of thousands of objects without
    a cycle among them, and each full collection walked all of them: a quarter of a 50,000-row
    export's CPU. Memory is what the export holds anyway; cycles made meanwhile are
    collected once the collector is back."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# -- verify-export --------------------------------------------------------------------------


def facts_opener(opening: EntryOpening, leaf: LeafFields, index: int) -> AuditRow:
    """The index row an entry's sealed facts say (``evidence.open_entry``, ``facts.row_of``);
    ValueError when the opening has no key or does not open."""
    if opening.key is None:
        raise ValueError("the line carries no entry key")
    # The row's index is not a column (the line's index is checked by its proof). open_row is
    # row_of(open_entry(...)) without the facts' dataclasses (same rows, same errors).
    return open_row(
        opening.key, opening.evidence, kind=leaf.kind, flags=leaf.flags, pseudonym=leaf.pseudonym
    )


def verify(args: argparse.Namespace, out: TextIO) -> int:
    try:
        policy = parse_policy(args.trust.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise Usage(f"cannot read {args.trust}: {exc}") from exc
    with Progress("verify", total=None) as progress:
        report = verify_path(
            args.file, policy, opener=facts_opener, jobs=args.jobs, count=progress.update
        )
        body = {"file": str(args.file), **report.to_json()}
        body["rows_per_second"] = round(progress.rate)
    print_json(out, body)
    return 0 if report.ok else 1
