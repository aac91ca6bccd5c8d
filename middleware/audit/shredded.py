"""A patient's crypto-shredded index rows, for the accounting of disclosures.

After ``consentry audit shred`` the patient's rows keep only what their leaves say (time, kind,
flags, pseudonym) and the pseudonym table has forgotten the patient, so no search by
``Patient/<id>`` finds them. The shred records, with the chain's tombstone, a *link*: the
keyed digest of the patient reference under the pseudonym table's lookup key
(``lookup_of(derive_box_key(ledger key, LOOKUP_PURPOSE), patient)``). Whoever holds the ledger
key (the gateway, the CLI) finds the shredded chains by it and reads their rows, so the
accounting can name the periods whose disclosures can no longer be listed
(:attr:`~middleware.audit.accounting.Accounting.shredded_periods`, 45 CFR 164.528(b)).
"""

from __future__ import annotations

from typing import Final, Protocol

from middleware.audit.paging import pages
from middleware.audit.row import AuditQuery, AuditRow

__all__ = ["ShreddedIndex", "shredded_rows"]

_PAGE: Final = 1000


class ShreddedIndex(Protocol):
    """What this needs of a ledger store (:class:`~middleware.storage.ledger_base.LogStore`)."""

    async def shredded_chains(self, link: bytes) -> list[bytes]: ...

    async def audit_rows(self, query: AuditQuery) -> list[AuditRow]: ...


async def shredded_rows(
    index: ShreddedIndex,
    link: bytes,
    *,
    since_us: int | None = None,
    until_us: int | None = None,
) -> list[AuditRow]:
    """The shredded rows of every chain shredded with ``link``, recorded within the inclusive
    bounds, in ``(recorded_us, index)`` order."""
    out: list[AuditRow] = []
    for pseudonym in await index.shredded_chains(link):
        query = AuditQuery(
            pseudonym=pseudonym,
            include_shredded=True,
            since_us=since_us,
            until_us=until_us,
            limit=_PAGE,
        )
        async for page in pages(index, query):
            out += [row for row in page if row.shredded]
    return sorted(out, key=lambda r: (r.recorded_us, r.index))
