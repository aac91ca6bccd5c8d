"""Rebuild the consent index and pseudonym table from the ledger, the source of truth.

The consent API appends a change to the ledger first and records it in the
:class:`~middleware.storage.consent_base.ConsentStore` second. If a process dies between the
two, the index lacks an entry the ledger has. :func:`record_entry` records one such entry from
its evidence (idempotent by ledger index) and the pseudonym its leaf carries; the registry
calls it for every consent entry the store lacks before it decides
(:meth:`~middleware.consent.registry.ConsentRegistry.sync`). :func:`rebuild_from_ledger`
reads every leaf from ``start`` (default: the store's scanned size) to the ledger's size and
records each ``consent`` and ``consent-revoke`` entry: run it with ``start=0`` on an empty
store to rebuild everything.

An entry whose evidence a crypto-shred removed (``consentry audit shred``: its chain carries
the shred's admin entry after it, :mod:`middleware.consent.shredded`) is absent: nothing is
recorded, nothing fails, and the report counts it ``shredded``. Any other entry that cannot be
recorded (evidence missing with no shred on its chain, or unreadable) is skipped with a
warning and reported ``skipped``; a leaf that names a pseudonym other than the stored one for
its patient is refused (logged by ledger index, not recorded, the stored pseudonym kept): the
leaf and its evidence disagree about whose consent it is, so neither is trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

from middleware.consent.records import consent_keys
from middleware.consent.shredded import is_shred_record, shredded_entry
from middleware.fhir import jsoncodec
from middleware.fhir.limits import STORED_MAX_JSON_DEPTH
from middleware.ledger.leaf import EntryKind, decode_leaf
from middleware.logging import get_logger
from middleware.storage.consent_base import ConsentRecord, ConsentStore
from middleware.storage.ledger_base import LogStore

__all__ = ["Outcome", "RebuildReport", "rebuild_from_ledger", "record_entry"]

_CHUNK: Final = 4096
_KINDS: Final = frozenset({EntryKind.CONSENT, EntryKind.CONSENT_REVOKE})


class Outcome(Enum):
    """What :func:`record_entry` did with a consent entry."""

    RECORDED = "recorded"  # in the store now (or already)
    SHREDDED = "shredded"  # its evidence removed by a shred: absent, nothing to record
    UNRECORDABLE = "unrecordable"  # missing or unreadable evidence, or a pseudonym mismatch


@dataclass(frozen=True, slots=True)
class RebuildReport:
    """What a rebuild did: the ledger range ``[start, end)`` it scanned, the consent entries
    it found, the ones a shred erased (absent, not recorded) and the ones it could not record
    (missing or unreadable evidence, a pseudonym mismatch)."""

    start: int
    end: int
    consents: int
    skipped: tuple[int, ...] = ()
    shredded: tuple[int, ...] = ()


async def rebuild_from_ledger(
    log: LogStore, consents: ConsentStore, *, start: int | None = None, chunk: int = _CHUNK
) -> RebuildReport:
    """Record every consent entry of ``log`` in ``[start, size)`` into ``consents``, then
    raise the store's scanned size to ``size``; returns a :class:`RebuildReport`."""
    begin = await consents.scanned() if start is None else start
    end = await log.size()
    found = 0
    skipped: list[int] = []
    shredded: list[int] = []
    for first in range(begin, end, chunk):
        last = min(first + chunk, end)
        for index, raw in enumerate(await log.leaves(first, last), start=first):
            if decode_leaf(raw).kind not in _KINDS:
                continue
            found += 1
            outcome = await record_entry(log, consents, index, raw)
            if outcome is Outcome.SHREDDED:
                shredded.append(index)
            elif outcome is Outcome.UNRECORDABLE:
                skipped.append(index)
    await consents.set_scanned(end)
    return RebuildReport(begin, end, found, tuple(skipped), tuple(shredded))


async def record_entry(
    log: LogStore, consents: ConsentStore, index: int, raw: bytes | None = None
) -> Outcome:
    """Record the ``consent`` / ``consent-revoke`` entry at ``index`` (its leaf bytes ``raw``,
    read if not given) into ``consents`` from its evidence, with the pseudonym its leaf
    carries; idempotent. ``SHREDDED`` when a shred removed its evidence
    (:func:`~middleware.consent.shredded.shredded_entry`); ``UNRECORDABLE`` when it cannot be
    recorded otherwise (missing or unreadable evidence, no pseudonym, or a pseudonym other
    than the one stored for the patient its evidence names: logged by ledger index only)."""
    if raw is None:
        (raw,) = await log.leaves(index, index + 1)
    leaf = decode_leaf(raw)
    if leaf.kind not in _KINDS:
        raise ValueError(f"ledger entry {index} is not a consent entry")
    log_ = get_logger("consentry.consent")
    evidence = await log.evidence(index)
    keys = None
    if evidence is None:
        if await shredded_entry(log, index, leaf.pseudonym):
            return Outcome.SHREDDED
    else:
        try:
            stored = jsoncodec.decode(evidence.data, max_depth=STORED_MAX_JSON_DEPTH)
        except jsoncodec.DecodeError:
            stored = None
        if leaf.kind is EntryKind.CONSENT_REVOKE and is_shred_record(stored):
            return Outcome.SHREDDED  # the shred's marker: it moves the consent position only
        keys = consent_keys(stored)
    if evidence is None or keys is None or leaf.pseudonym is None:
        log_.warning("consent entry not rebuildable", ledger_index=index)
        return Outcome.UNRECORDABLE
    consent_id, status, patient = keys
    if await consents.pseudonym_for(patient, leaf.pseudonym) != leaf.pseudonym:
        # Whose consent is it? The leaf and the evidence disagree: record neither.
        log_.error("consent entry names another pseudonym; not recorded", ledger_index=index)
        return Outcome.UNRECORDABLE
    await consents.record(
        ConsentRecord(
            ledger_index=index,
            consent_id=consent_id,
            patient=patient,
            status=status,
            revoked=leaf.kind is EntryKind.CONSENT_REVOKE,
            recorded_us=leaf.recorded_us,
            data=evidence.data,
        )
    )
    return Outcome.RECORDED
