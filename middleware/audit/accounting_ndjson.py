"""The accounting of disclosures as NDJSON (``$accounting?_format=ndjson``). Pure.

One JSON object per line (NDJSON, as FHIR Bulk Data writes it), one line per disclosure, with
the fields of the per-disclosure CSV (``report_csv.accounting_csv(detail=True)``, the columns
:data:`~middleware.audit.report_csv.ACCOUNTING_DETAIL_COLUMNS`, in that order) and the same
values: ``ledger_index`` (the ledger entry the disclosure is, to be checked against a
``consentry audit export --report accounting``, which carries its proof) and ``entry`` (the
164.528(b)(3) entry it belongs to, from 1) as numbers, ``date`` RFC 3339 UTC, ``purpose_codes``
a JSON array of ``system|code``, an absent recipient detail ``null``. Values are as they are
(no CSV formula escape: a JSON reader takes nothing for a formula). The suspended are never
listed (the accounting itself leaves them out).
"""

from __future__ import annotations

import json

from middleware.audit.accounting import Accounting
from middleware.audit.report_csv import ACCOUNTING_DETAIL_COLUMNS, rfc3339

__all__ = ["accounting_ndjson"]


def accounting_ndjson(accounting: Accounting) -> str:
    """``accounting`` as NDJSON, one disclosure per line (module docstring); "" without any."""
    lines = []
    for n, entry in enumerate(accounting.entries, 1):
        for d in entry.members:
            values = (
                d.index,
                rfc3339(d.recorded_us),
                n,
                d.recipient.name,
                d.recipient.address,
                d.recipient.agent,
                d.recipient.organization,
                d.recipient.client,
                " ".join(d.resource_types),
                d.purpose_text,
                list(d.purposes),
            )
            line = dict(zip(ACCOUNTING_DETAIL_COLUMNS, values, strict=True))
            lines.append(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")
    return "".join(lines)
