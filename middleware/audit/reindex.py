"""Rebuild the audit index from the ledger: the work of ``consentry audit reindex``.

The index is derived data. :func:`rebuild` reads the leaves and evidence in ranges
(``read_ranges``: memory stays bounded whatever the ledger's size, the next range is read
while this one is opened), and for every entry holding sealed audit facts opens them with the
patient's key (one unwrap per patient) and upserts ``row_of(facts)`` in batches of ``batch``
rows, one transaction each (``store.reindex``); an entry whose patient key is gone gets its
shredded row (what its leaf says). An audit entry written before sealed facts (its evidence a
plain BALP Bundle) gets the row :func:`~middleware.audit.legacy.legacy_row` reads from its
events, shredded if a shred tombstoned its chain. Other entries (consents, admin, key events)
have no index row. Entries the key does not open, or legacy evidence that is no Bundle of
AuditEvents, are counted ``unreadable``; facts the key opens that are not valid or give no row
are counted ``malformed``. Neither stops the run.

Each batch is written before the next is built. Writing batch ``n`` while batch ``n + 1`` is
built was measured and kept out: SQLite releases the GIL only inside its C calls, the write's
Python (reading rows back, comparing) and the decryption here then take turns on the GIL, and
the rebuild took 8-17% longer than one batch after the other (six alternating runs of
50,000 entries).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from middleware.audit.evidence import NO_PATIENT, EvidenceKeyError, is_sealed, unwrap_key
from middleware.audit.export import shredded_row
from middleware.audit.facts_row import open_row
from middleware.audit.legacy import legacy_row
from middleware.audit.progress import Progress
from middleware.audit.ranges import read_ranges
from middleware.audit.row import AuditRow
from middleware.ledger.entry import Evidence
from middleware.ledger.errors import MalformedError
from middleware.ledger.leaf import EntryKind, decode_leaf, leaf_fields, leaf_link
from middleware.ledger.signing import evidence_keyer
from middleware.storage.consent_base import lookup_of
from middleware.storage.ledger_base import LogStore

__all__ = ["CHUNK", "COUNTS", "rebuild"]

#: Entries read per range (leaves and evidence in one read each).
CHUNK = 4096
#: The counts :func:`rebuild` returns, each from zero.
COUNTS = ("rows", "legacy", "shredded", "unreadable", "malformed")
_AUDIT_KINDS = frozenset(
    {EntryKind.ACCESS_DECISION, EntryKind.ACCESS_OUTCOME, EntryKind.DISCLOSURE}
)

#: An entry's key from its salt (``signing.evidence_keyer`` of the patient's key); None once
#: the patient's key is gone (crypto-shredded).
EntryKeyer = Callable[[bytes], bytes] | None


class _Keys:
    """Entry keyers by pseudonym (``keyers``), found with :meth:`find`. The wrapped keys are
    read ahead: when an entry names a pseudonym not seen yet, those of the rest of its range
    are read at once (``LogStore.audit_keys_get``: one trip to the store's thread and one
    statement per 500 pseudonyms, not one per patient: a ledger of many patients meets a new
    one every few entries); each is unwrapped when an entry first needs
    it, so a key that does not unwrap stops the run where it always did."""

    def __init__(self, store: LogStore, wrap: bytes) -> None:
        self._store = store
        self._wrap = wrap
        self._wrapped: dict[bytes, bytes | None] = {}
        self.keyers: dict[bytes, EntryKeyer] = {}

    async def find(self, pseudonym: bytes, ahead: Iterator[bytes]) -> EntryKeyer:
        """The keyer of ``pseudonym``, reading the keys of it and of ``ahead`` first."""
        if pseudonym not in self._wrapped:
            fresh = [p for p in dict.fromkeys((pseudonym, *ahead)) if p not in self._wrapped]
            found = await self._store.audit_keys_get(fresh)  # a statement per 500 in SQLite
            self._wrapped.update((p, found.get(p)) for p in fresh)
        wrapped = self._wrapped[pseudonym]
        keyer = None if wrapped is None else evidence_keyer(unwrap_key(self._wrap, wrapped))
        self.keyers[pseudonym] = keyer
        return keyer


def _sealed_pseudonyms(
    leaves: Sequence[bytes], evidence: dict[int, Evidence], start: int, index: int
) -> Iterator[bytes]:
    """The pseudonyms of the entries holding sealed facts from ``index`` to the end of the
    range at ``start`` (a leaf that is not valid is passed over: the run stops at it)."""
    for at in range(index, start + len(leaves)):
        stored = evidence.get(at)
        if stored is not None and is_sealed(stored.data):
            try:
                pseudonym, _ = leaf_link(leaves[at - start])
            except MalformedError:
                continue
            yield pseudonym or NO_PATIENT


async def rebuild(
    store: LogStore,
    size: int,
    *,
    wrap: bytes,
    lookup: bytes,
    batch: int,
    progress: Progress,
    chunk: int = CHUNK,
) -> dict[str, int]:
    """Upsert the index row of every audit entry of ``store``'s first ``size`` leaves
    (module docstring), ``batch`` rows a transaction; returns :data:`COUNTS`. ``wrap``
    unwraps the patients' evidence keys, ``lookup`` is the consent store's lookup key (a
    legacy row's shred tombstone is found by its link)."""
    if batch < 1 or chunk < 1:
        raise ValueError("batch and chunk must be positive")
    counts = dict.fromkeys(COUNTS, 0)
    chains: dict[str, frozenset[bytes]] = {}
    keys = _Keys(store, wrap)
    keyers = keys.keyers

    async def shredded_already(row: AuditRow) -> AuditRow:
        """A legacy row of a chain a shred tombstoned (found by the shred's link) stays
        shredded: its plain evidence must not come back into the index."""
        if row.patient is None:
            return row
        if row.patient not in chains:
            link = lookup_of(lookup, row.patient)
            chains[row.patient] = frozenset(await store.shredded_chains(link))
        return row.shred() if row.pseudonym in chains[row.patient] else row

    rows: list[AuditRow] = []
    async for start, leaves, evidence in read_ranges(store, size, chunk):
        for index in sorted(evidence):  # the entries with evidence, in ledger order
            stored, data = evidence[index], leaves[index - start]
            if not is_sealed(stored.data):
                row = _legacy(index, data, stored, counts)
                if row is not None:
                    rows.append(await shredded_already(row))
            else:
                fields = leaf_fields(data)  # decode_leaf's checks, without the Leaf
                pseudonym = fields.pseudonym or NO_PATIENT
                if pseudonym in keyers:
                    entry_key_of = keyers[pseudonym]
                else:
                    ahead = _sealed_pseudonyms(leaves, evidence, start, index)
                    entry_key_of = await keys.find(pseudonym, ahead)
                if entry_key_of is None:  # crypto-shredded: what the leaf says
                    counts["shredded"] += 1
                    rows.append(shredded_row(index, decode_leaf(data)))
                else:
                    try:
                        # row_of(open_entry(...)) without the facts' dataclasses: the same
                        # row, the same errors (facts_row).
                        row = open_row(
                            entry_key_of(stored.salt), stored.data, kind=fields.kind,
                            flags=fields.flags, pseudonym=fields.pseudonym, index=index,
                        )  # fmt: skip
                    except EvidenceKeyError:  # not this entry's key, or a changed byte
                        counts["unreadable"] += 1
                        continue
                    except ValueError:  # sealed by the gateway's key, yet no valid row
                        counts["malformed"] += 1
                        continue
                    counts["rows"] += 1
                    rows.append(row)
            if len(rows) >= batch:
                await store.reindex(rows)
                rows = []
        progress.update(len(leaves))
    if rows:
        await store.reindex(rows)
    return counts


def _legacy(index: int, data: bytes, stored: Evidence, counts: dict[str, int]) -> AuditRow | None:
    """The row of an audit entry written before sealed facts (its evidence a plain BALP
    Bundle, :mod:`middleware.audit.legacy`); None for the other entries (consents, admin, key
    events) and for evidence that is not a Bundle of AuditEvents."""
    if not stored.data.startswith(b"{"):
        return None
    leaf = decode_leaf(data)
    if leaf.kind not in _AUDIT_KINDS:
        return None
    try:
        row = legacy_row(
            stored.data,
            recorded_us=leaf.recorded_us,
            kind=int(leaf.kind),
            flags=int(leaf.flags),
            pseudonym=leaf.pseudonym,
            index=index,
        )
    except ValueError:
        counts["unreadable"] += 1
        return None
    counts["legacy"] += 1
    return row
