"""``GET {base}/Patient/<id>/$accounting?_proofs=true&_format=csv|ndjson``: the accounting of
disclosures as a verifiable export (``consentry-audit-export/v1``).

The same file ``consentry audit export --report accounting --patient <id> --format csv|ndjson``
writes (both call :func:`middleware.audit.export_make.make_export`): a header naming one
signed checkpoint, then a line per entry with its inclusion proof, and for each disclosure
the opening of its sealed facts, so ``consentry audit verify-export`` checks it offline
against the gateway's trust policy. The openings hand out entry keys, so the answer is for
the auditor only (:mod:`middleware.audit.accounting_http` refuses anybody else, a patient
included, with 403 before anything is read). A patient no entry names gets a valid export
with no rows (its header says there is no chain), as the CLI writes it.

Bounded as the other reports over HTTP are: an export of more than
:data:`~middleware.audit.report_http.MAX_REPORT_ROWS` rows is refused with 422 ``too-costly``
(:class:`~middleware.audit.report_http.TooCostly`; the CLI, which streams to a file, has no
cap); the file is built in memory and its proofs are computed off the event loop.

With a witness quorum (``witnessed``: :meth:`~middleware.ledger.witnessing.Witnessing.published`)
the file is made against the newest checkpoint that quorum cosigned, cosignatures included,
so a verifier whose trust policy requires them accepts it; entries after it are not in the
file yet. Until one exists the answer is 503.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Final, Literal

from middleware.audit import report_http
from middleware.audit.accounting import Accounting, AccountingRules
from middleware.audit.export import ExportEntry, ExportHeader
from middleware.audit.export_collect import StoreView
from middleware.audit.export_make import accounting_rows, make_export
from middleware.audit.export_write import write_csv, write_ndjson
from middleware.audit.httptypes import Reply
from middleware.audit.row import AuditRow
from middleware.errors import ServiceUnavailable
from middleware.storage.ledger_base import LogStore

__all__ = ["ProvenAccounting"]

_MEDIA: Final = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}
_NO_STORE: Final = ("cache-control", "no-store")


class ProvenAccounting:
    """Makes the verifiable export of an accounting (module docstring) from the ledger
    ``store`` under ``wrap_key`` (the ledger key's evidence wrap key); ``row_cap``: the most
    entries proven (None: the reports' :data:`~middleware.audit.report_http.MAX_REPORT_ROWS`)."""

    def __init__(
        self,
        *,
        store: Callable[[], Awaitable[LogStore]],
        wrap_key: bytes,
        rules: AccountingRules,
        row_cap: int | None = None,
        witnessed: Callable[[], Awaitable[str | None]] | None = None,
    ) -> None:
        self._store = store
        self._witnessed = witnessed
        self._wrap_key = wrap_key
        self._rules = rules
        self._cap = row_cap

    async def __call__(
        self, made: Accounting, rows: Sequence[AuditRow], wanted: Literal["csv", "ndjson"]
    ) -> Reply:
        """The export of ``made`` (``rows``: the patient's index rows it was made from) as
        ``wanted``; :class:`~middleware.audit.report_http.TooCostly` beyond the cap."""
        selected = accounting_rows(made, rows)
        cap = report_http.MAX_REPORT_ROWS if self._cap is None else self._cap
        if len(selected) > cap:
            raise report_http.TooCostly(
                f"the accounting proves more than {cap} entries: use consentry audit export"
            )
        store = await self._store()
        if self._witnessed is None:
            view = await StoreView.open(store)
        elif (note := await self._witnessed()) is None:
            raise ServiceUnavailable("no checkpoint carries a quorum of cosignatures yet")
        else:
            view = await StoreView.at(store, note)
        header, entries = await make_export(
            store,
            view,
            selected,
            report="accounting",
            wrap_key=self._wrap_key,
            patient=made.patient,
            since_us=made.since_us,
            until_us=made.until_us,
            rules=self._rules,
        )
        body = await asyncio.to_thread(_render, header, entries, wanted)
        return Reply(200, (("content-type", _MEDIA[wanted]), _NO_STORE), body)


def _render(
    header: ExportHeader, entries: Iterator[ExportEntry], wanted: Literal["csv", "ndjson"]
) -> bytes:
    """The file's bytes (the proofs are made as the entries are read: CPU, off the loop)."""
    sink = io.BytesIO()
    (write_csv if wanted == "csv" else write_ndjson)(header, entries, sink)
    return sink.getvalue()
