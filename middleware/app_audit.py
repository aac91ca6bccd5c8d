"""Wiring of the gateway's own AuditEvent API (:mod:`middleware.audit.http`).

Kept beside ``app.py`` as :mod:`middleware.app_enforcement` is: the API searches the ledger
store's audit index, renders each entry's events from its sealed facts
(:class:`~middleware.audit.evidence.EvidenceReader`, under the ledger key's ``evidence`` key),
pages with cursors sealed under the ledger key's ``audit-cursor`` key (never redeemable by the
proxy, nor the proxy's here), and records every access through the proxy's audit recorder.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from middleware.audit.accounting import Suspension
from middleware.audit.accounting_http import AccountingEndpoint
from middleware.audit.bulk import ExportJobs
from middleware.audit.evidence import EVIDENCE_PURPOSE, EvidenceReader
from middleware.audit.export_http import ProvenAccounting
from middleware.audit.exports import BulkExport
from middleware.audit.http import AuditApi
from middleware.audit.httptypes import AuditIndex, Json, Recorder, TokenCheck
from middleware.audit.oversight_http import Oversight
from middleware.audit.row import AuditRow
from middleware.audit.searching import Searching
from middleware.audit.shredded import shredded_rows
from middleware.audit.suspensions import SuspensionLog
from middleware.auth.smart import gateway_root
from middleware.ledger.service import LedgerService
from middleware.ledger.signing import derive_box_key
from middleware.pipeline.cursor import CursorCodec
from middleware.settings import Settings
from middleware.storage.consent_base import LOOKUP_PURPOSE, lookup_of
from middleware.storage.exports_open import open_export_board
from middleware.storage.exports_sqlite import OWNER_PURPOSE

__all__ = ["DEFAULT_PAGE", "REPORT_NAME", "build_audit_api"]

#: The page size of a search without ``_count`` (at most ``audit_max_count``).
DEFAULT_PAGE = 50
#: How the accounting of disclosures names the gateway to the patient (as the CLI does).
REPORT_NAME = "Consentry gateway"


def build_audit_api(
    settings: Settings,
    *,
    ledger: LedgerService,
    secret: bytes,
    verifier: TokenCheck,
    recorder: Recorder,
    wall_clock: Callable[[], float],
    clock: Callable[[], float],
    witnessed: Callable[[], Awaitable[str | None]] | None = None,
    export_schema: str = "public",
) -> AuditApi:
    """The AuditEvent API of the gateway (module docstring); ``secret`` is the ledger key
    file's data secret (``LedgerKey.data_secret``), which the keys here derive from;
    ``witnessed``: the checkpoint a witness quorum cosigned, which verifiable exports are
    made against (None: no quorum, the latest checkpoint); ``export_schema``: where a
    PostgreSQL store's export jobs are (the log store's schema)."""
    master = derive_box_key(secret, EVIDENCE_PURPOSE)

    async def index() -> AuditIndex:
        return await ledger.store()

    async def events(entry: int) -> list[Json] | None:
        return await EvidenceReader(await ledger.store(), master).events(entry)

    async def events_many(entries: Sequence[int]) -> list[list[Json] | None]:
        return await EvidenceReader(await ledger.store(), master).events_many(entries)

    lookup = derive_box_key(secret, LOOKUP_PURPOSE)

    async def shredded(patient: str, since_us: int, until_us: int) -> list[AuditRow]:
        """The patient's shredded rows, by the link ``consentry audit shred`` recorded."""
        link = lookup_of(lookup, patient)
        store = await ledger.store()
        return await shredded_rows(store, link, since_us=since_us, until_us=until_us)

    suspension_log = SuspensionLog()

    async def suspensions() -> list[Suspension]:
        """The 164.528(a)(2) suspensions on the ledger (``consentry audit suspend``)."""
        return await suspension_log.current(await ledger.store())

    searching = Searching(
        index=index,
        events=events,
        cursors=CursorCodec(derive_box_key(secret, "audit-cursor"), settings.cursor_ttl_seconds),
        base_url=settings.gateway_base_url,
        gateway_root=gateway_root(settings.gateway_base_url, settings.base_path),
        default_count=min(DEFAULT_PAGE, settings.audit_max_count),
        max_count=settings.audit_max_count,
        wall_clock=wall_clock,
        events_many=events_many,
    )
    # jobs shared by the workers of a SQLite store or the replicas of a PostgreSQL one,
    # their owners as keyed digests
    board = open_export_board(
        settings.store, derive_box_key(secret, OWNER_PURPOSE), kind="audit", schema=export_schema
    )
    jobs = ExportJobs(clock=clock if board is None else wall_clock, board=board)
    exports = BulkExport(searching=searching, jobs=jobs, wall_clock=wall_clock)
    return AuditApi(
        verifier=verifier,
        recorder=recorder,
        searching=searching,
        exports=exports,
        accounting=AccountingEndpoint(
            index=index,
            role=settings.audit_role,
            rules=settings.accounting_rules,
            gateway_name=REPORT_NAME,
            wall_clock=wall_clock,
            shredded=shredded,
            suspensions=suspensions,
            directory=settings.recipient_directory(),
            proven=ProvenAccounting(
                store=ledger.store,
                wrap_key=master,
                rules=settings.accounting_rules,
                witnessed=witnessed,
            ),
        ),
        oversight=Oversight(
            store=ledger.store,
            append=ledger.append,
            role=settings.audit_role,
            after=settings.after_hours,
            after_text=f"{settings.report_after_hours} {settings.report_timezone}",
            gateway_name=REPORT_NAME,
            wall_clock=wall_clock,
        ),
        base_path=settings.base_path,
        role=settings.audit_role,
        max_request_bytes=settings.max_request_bytes,
        body_timeout=settings.body_timeout,
        access_log=settings.access_log,
    )
