"""One export with proofs, as ``consentry audit export`` and the gateway's
``$accounting?_proofs=true`` both make it (``consentry-audit-export/v1``).

:func:`make_export` takes the index rows a report stands for, finds the named patient's chain
(its pseudonym, or :data:`~middleware.audit.export.NO_CHAIN` when no entry names the patient,
which the header then says), and collects the header and entry lines against one signed
checkpoint (:func:`~middleware.audit.export_collect.collect_export`, which checks every leaf
it reads). :func:`accounting_rows` is the selection an accounting export proves: the
patient's rows behind the accounting's disclosures. Both are shared so the CLI and the HTTP
answer are the same file for the same log; there is no second copy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from middleware.audit.accounting import Accounting, AccountingRules
from middleware.audit.export import NO_CHAIN, ExportEntry, ExportHeader
from middleware.audit.export_collect import ExportSpec, LogView, collect_export
from middleware.audit.export_rules import rules_json
from middleware.audit.row import AuditQuery, AuditRow
from middleware.storage.ledger_base import LogStore

__all__ = ["accounting_rows", "make_export"]


def accounting_rows(made: Accounting, rows: Sequence[AuditRow]) -> list[AuditRow]:
    """The rows of ``rows`` (the patient's index rows) that ``made``'s disclosures stand for."""
    wanted = {i for entry in made.entries for i in entry.indexes}
    return [row for row in rows if row.index in wanted]


async def make_export(
    store: LogStore,
    view: LogView,
    rows: Sequence[AuditRow],
    *,
    report: str,
    wrap_key: bytes,
    patient: str | None = None,
    agent: str | None = None,
    since_us: int | None = None,
    until_us: int | None = None,
    rules: AccountingRules | None = None,
) -> tuple[ExportHeader, Iterator[ExportEntry]]:
    """The header and entries of the ``report`` export of ``rows`` read through ``view``
    (a snapshot or the ``store`` itself); ``wrap_key``: the ledger key's evidence wrap key;
    ``rules``: the accounting's inclusion rules, written in the header for the verifier."""
    pseudonym = None
    if patient is not None:  # the verifier requires the chain of a named patient
        pseudonym = next((r.pseudonym for r in rows if r.pseudonym), None)
        if pseudonym is None:
            found = await store.audit_rows(AuditQuery(patient=patient, limit=1))
            pseudonym = found[0].pseudonym if found else None
        if pseudonym is None:  # no entry names the patient: the header says so
            pseudonym = NO_CHAIN
    spec = ExportSpec(
        report=report,
        patient=patient,
        agent=agent,
        since_us=since_us,
        until_us=until_us,
        pseudonym=pseudonym,
        rules=None if rules is None else rules_json(rules),
    )
    return await collect_export(
        view, spec, rows, wrapped_keys=store.audit_keys_get, wrap_key=wrap_key
    )
