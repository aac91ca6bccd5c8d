"""``GET {base}/Patient/<id>/$accounting``: the HIPAA accounting of disclosures over HTTP.

The accounting of one patient (45 CFR 164.528; the rules are :mod:`middleware.audit.accounting`'s,
configured by the ``accounting_*`` settings) as of now, over the default look-back period
(six years), for the auditor or the patient itself (a patient-context token whose launch
patient is ``<id>``; anybody else 403, as :mod:`middleware.audit.access` decides). The format
is chosen by ``_format`` or, without it, by ``Accept``:

=============================================  =============================================
``_format`` / ``Accept``                       answer
=============================================  =============================================
``json``, ``application/fhir+json``, none      the FHIR ``document`` Bundle (``report_bundle``)
``csv``, ``text/csv``                          CSV (``report_csv``)
``pdf``, ``application/pdf``                   a PDF a patient can read (``report_pdf``)
``ndjson``, ``application/fhir+ndjson``,       NDJSON, one disclosure per line with the fields
``application/x-ndjson``                       of the per-disclosure CSV (``accounting_ndjson``)
=============================================  =============================================

With ``_proofs=true`` (auditor only; anybody else 403) and ``_format`` ``csv`` or ``ndjson``,
the answer is instead the verifiable export ``consentry audit export --report accounting``
writes (:mod:`middleware.audit.export_http`; another format is 406).

Anything else is 406; any parameter other than ``_format`` and ``_proofs`` is 400. The
request is recorded like every access of the audit trail (:mod:`middleware.audit.http`),
naming the patient.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Final, Literal

from middleware.audit.access import audit_reader
from middleware.audit.accounting import (
    AccountingRules,
    RecipientInfo,
    Suspension,
    account,
    years_before,
)
from middleware.audit.accounting_ndjson import accounting_ndjson
from middleware.audit.export_http import ProvenAccounting
from middleware.audit.httptypes import AuditIndex, Reply, Seen, json_reply
from middleware.audit.paging import all_rows
from middleware.audit.parts import FHIR_ID
from middleware.audit.report_bundle import accounting_bundle
from middleware.audit.report_csv import accounting_csv
from middleware.audit.report_pdf import accounting_pdf
from middleware.audit.row import AuditQuery, AuditRow
from middleware.auth.identity import Identity
from middleware.errors import BadRequest, Forbidden, NotAcceptable, NotFound
from middleware.fhir.negotiate import media_type
from middleware.ledger.leaf import micros_at

__all__ = ["AccountingEndpoint", "ShreddedOf", "SuspensionsOf"]

Format = Literal["bundle", "csv", "pdf", "ndjson"]
_FORMATS: Final[Mapping[str, Format]] = {
    "json": "bundle",
    "application/fhir+json": "bundle",
    "application/json": "bundle",
    "csv": "csv",
    "text/csv": "csv",
    "pdf": "pdf",
    "application/pdf": "pdf",
    "ndjson": "ndjson",
    "application/fhir+ndjson": "ndjson",
    "application/x-ndjson": "ndjson",
    "application/ndjson": "ndjson",
}
_ANY: Final = frozenset({"*/*", "application/*"})
_PAGE: Final = 1000


#: The crypto-shredded rows of a patient recorded within inclusive bounds (the gateway's is
#: :func:`middleware.audit.shredded.shredded_rows` under the shred's link).
ShreddedOf = Callable[[str, int, int], Awaitable[list[AuditRow]]]
#: Every suspension recorded (in force or not; the accounting decides at its time).
SuspensionsOf = Callable[[], Awaitable[list[Suspension]]]


class AccountingEndpoint:
    """The ``$accounting`` handler (module docstring) over the audit ``index``."""

    def __init__(
        self,
        *,
        index: Callable[[], Awaitable[AuditIndex]],
        role: str,
        rules: AccountingRules,
        gateway_name: str,
        wall_clock: Callable[[], float] = time.time,
        shredded: ShreddedOf | None = None,
        suspensions: SuspensionsOf | None = None,
        directory: Mapping[str, RecipientInfo] | None = None,
        proven: ProvenAccounting | None = None,
    ) -> None:
        """``suspensions``: the 164.528(a)(2) suspensions recorded so far (the gateway's reads
        them from the ledger, :class:`~middleware.audit.suspensions.SuspensionLog`);
        ``directory``: the recipients' names and addresses (164.528(b)(2)(ii),
        :mod:`middleware.audit.recipients`), loaded once at start; ``proven``: the
        ``_proofs=true`` export (None: 400)."""
        self._proven = proven
        self._suspensions = suspensions
        self._directory = directory
        self._index = index
        self._shredded = shredded
        self._role = role
        self._rules = rules
        self._name = gateway_name
        self._wall = wall_clock

    async def __call__(
        self,
        identity: Identity,
        seen: Seen,
        patient_id: str,
        params: list[tuple[str, str]],
        headers: Mapping[str, str],
    ) -> Reply:
        """The accounting of ``Patient/<patient_id>`` in the negotiated format."""
        if not FHIR_ID.fullmatch(patient_id) or not patient_id.strip("."):
            raise NotFound("not a valid Patient id")
        patient = f"Patient/{patient_id}"
        reader = audit_reader(identity, role=self._role, permission="r")
        if reader.patient not in (None, patient):
            raise Forbidden("a patient may read only its own accounting of disclosures")
        if any(name not in ("_format", "_proofs") for name, _ in params):
            raise BadRequest("$accounting takes only _format and _proofs", code="not-supported")
        wanted = _negotiate(params, headers)
        proofs = self._proofs(params, reader.as_ == "auditor", wanted)
        seen.patient = patient
        as_of = micros_at(self._wall())
        # Only the period the accounting covers is read (six years back by default).
        since = years_before(as_of, self._rules.lookback_years)
        own = await self._rows(AuditQuery(patient=patient, since_us=since, until_us=as_of))
        rows = list(own)
        if self._shredded is not None:  # so the accounting names the shredded periods
            rows += await self._shredded(patient, since, as_of)
        suspended = [] if self._suspensions is None else await self._suspensions()
        made = account(
            rows,
            patient=patient,
            as_of_us=as_of,
            rules=self._rules,
            suspensions=suspended,
            directory=self._directory,
        )
        if proofs is not None:  # the patient's own rows, as the CLI's export proves them
            return await proofs(made, own, "csv" if wanted == "csv" else "ndjson")
        if wanted == "csv":
            body = accounting_csv(made).encode("utf-8")
            return Reply(200, (("content-type", "text/csv; charset=utf-8"), _NO_STORE), body)
        if wanted == "ndjson":
            body = accounting_ndjson(made).encode("utf-8")
            return Reply(200, (("content-type", "application/fhir+ndjson"), _NO_STORE), body)
        if wanted == "pdf":
            # reportlab is CPU-bound: off the event loop
            pdf = await asyncio.to_thread(accounting_pdf, made, gateway_name=self._name)
            return Reply(200, (("content-type", "application/pdf"), _NO_STORE), pdf)
        return json_reply(accounting_bundle(made, gateway_name=self._name))

    def _proofs(
        self, params: list[tuple[str, str]], auditor: bool, wanted: Format
    ) -> ProvenAccounting | None:
        """The export maker when ``_proofs=true`` asks for one (checked before any read)."""
        values = [value for name, value in params if name == "_proofs"]
        if len(values) > 1 or values[0:1] not in ([], ["true"], ["false"]):
            raise BadRequest("_proofs is true or false, given once")
        if values != ["true"]:
            return None
        if not auditor:  # the openings hand out entry keys
            raise Forbidden("the accounting with proofs is for auditors only")
        if self._proven is None:
            raise BadRequest(
                "this gateway does not serve exports with proofs", code="not-supported"
            )
        if wanted not in ("csv", "ndjson"):
            raise NotAcceptable("the accounting with proofs is served as CSV or NDJSON")
        return self._proven

    async def _rows(self, query: AuditQuery) -> list[AuditRow]:
        return await all_rows(await self._index(), replace(query, limit=_PAGE))


_NO_STORE: Final = ("cache-control", "no-store")


def _negotiate(params: list[tuple[str, str]], headers: Mapping[str, str]) -> Format:
    formats = [value for name, value in params if name == "_format"]
    if len(formats) > 1:
        raise BadRequest("_format may be given once")
    if formats:
        found = _FORMATS.get(media_type(formats[0]))
        if found is None:
            raise NotAcceptable("$accounting is served as FHIR JSON, CSV, PDF or NDJSON")
        return found
    accept = headers.get("accept", "")
    if not accept.strip():
        return "bundle"
    for part in accept.split(","):
        kind = media_type(part)
        if kind in _FORMATS:
            return _FORMATS[kind]
        if kind in _ANY:
            return "bundle"
    raise NotAcceptable("$accounting is served as FHIR JSON, CSV, PDF or NDJSON")
