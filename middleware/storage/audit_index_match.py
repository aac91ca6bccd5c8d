"""The audit index's rules in plain Python: which rows an append indexes, and which rows an
:class:`~middleware.audit.row.AuditQuery` selects.

The memory store answers queries with :func:`select_rows`; the SQL stores translate the same
rules into SQL (:mod:`middleware.storage.audit_index_query`), and the contract suite
(``tests/contract/test_audit_index.py``) holds all three to one table of expected answers.

The rules, as ``AuditQuery`` states them: every given criterion must hold; time bounds are
inclusive; ``entity`` matches a row whose ``entities`` contain it or whose ``patient`` is it;
``purpose`` with a ``|`` matches an element exactly, a bare code matches that code in any
system; ``pseudonym`` matches the row's leaf pseudonym; a *shredded* row is returned only when
``include_shredded`` is set and the query has no criterion but time, kinds, pseudonym and the
paging key (its other fields are empty: it cannot match one).
Rows come in ``(recorded_us, index)`` order, descending for ``-date``; ``after`` is the last key
of the previous page; at most ``limit`` rows.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from msgspec.structs import replace

from middleware.audit.row import NO_INDEX_YET, AuditQuery, AuditRow, SortKey
from middleware.audit.sort_keys import descending, sort_column, sort_value
from middleware.ledger.entry import AppendResult, NewEntry
from middleware.ledger.errors import MalformedError
from middleware.ledger.leaf import PSEUDONYM_SIZE

__all__ = [
    "agreeing",
    "check_indexes",
    "check_key",
    "check_leaves",
    "check_pseudonym",
    "check_pseudonyms",
    "check_reindex",
    "disagreeing",
    "has_phi_criteria",
    "indexed_rows",
    "matches",
    "purpose_code",
    "refuse_disagreeing",
    "select_rows",
    "tombstoned",
]


def purpose_code(purpose: str) -> str:
    """The code of a ``system|code`` purpose: what follows the first ``|`` (a system URI
    cannot hold an unencoded ``|``, RFC 3986 section 2); a bare code is its own code."""
    return purpose.partition("|")[2] if "|" in purpose else purpose


def check_pseudonym(pseudonym: bytes) -> None:
    """Refuse anything but a leaf's pseudonym (16 bytes): a key filed under a wrong-sized
    value could never be found again by the entries it protects."""
    if not isinstance(pseudonym, bytes) or len(pseudonym) != PSEUDONYM_SIZE:
        raise ValueError(f"a pseudonym is {PSEUDONYM_SIZE} bytes")


def check_pseudonyms(pseudonyms: Sequence[bytes]) -> list[bytes]:
    """``pseudonyms`` each checked by :func:`check_pseudonym`, once each, in order."""
    for pseudonym in pseudonyms:
        check_pseudonym(pseudonym)
    return list(dict.fromkeys(pseudonyms))


def check_key(pseudonym: bytes, candidate: bytes) -> None:
    """The arguments of ``audit_key``: a pseudonym and non-empty key bytes."""
    check_pseudonym(pseudonym)
    if not isinstance(candidate, bytes) or not candidate:
        raise ValueError("a wrapped key is non-empty bytes")


def check_reindex(rows: Sequence[AuditRow]) -> None:
    """Rows handed to ``reindex`` carry their ledger index (never :data:`NO_INDEX_YET`)."""
    for row in rows:
        if row.index < 0:
            raise ValueError(f"a reindexed row needs its ledger index, not {row.index}")


def check_leaves(rows: Sequence[AuditRow], leaves: Mapping[int, bytes | None]) -> None:
    """Refuse ``rows`` (``ValueError`` naming up to ten ledger indexes: no PHI) when one's leaf
    is not in ``leaves`` (ledger index -> the leaf's pseudonym, ``None`` for a leaf without
    one) or names another pseudonym than the row: what every backend's ``reindex`` checks
    (``LogStore.reindex``; SQLite's search by pseudonym finds rows through their leaves)."""
    refuse_disagreeing(disagreeing(rows, leaves))


def refuse_disagreeing(bad: Sequence[int]) -> None:
    """The ``ValueError`` of :func:`check_leaves` when ``bad`` (ledger indexes) is not empty."""
    if bad:
        raise ValueError(f"reindexed rows disagree with their leaves' pseudonyms: {list(bad[:10])}")


def disagreeing(rows: Sequence[AuditRow], leaves: Mapping[int, bytes | None]) -> list[int]:
    """The indexes of ``rows`` whose leaf is not in ``leaves`` or names another pseudonym (or
    none where the row names one), ascending (:func:`check_leaves`)."""
    return sorted({r.index for r in rows if leaves.get(r.index, _NO_LEAF) != r.pseudonym})


_NO_LEAF = object()


def agreeing(
    rows: Sequence[AuditRow], leaves: Mapping[int, bytes | None]
) -> tuple[list[AuditRow], list[int]]:
    """``rows`` with each one :func:`disagreeing` with ``leaves`` replaced by its shredded
    form stating its leaf's pseudonym (a row without a leaf: shredded as it stands), and the
    indexes so replaced, ascending. What a SQLite writer's open files for a row an earlier
    version left disagreeing (``audit_index_upgrade``, ``audit_index_staged``): found on its
    leaf's chain, no PHI a shred could miss; ``consentry audit reindex`` rebuilds it from the
    entry's evidence."""
    bad = disagreeing(rows, leaves)
    if not bad:
        return list(rows), bad
    wrong = set(bad)
    out = [
        (replace(r, pseudonym=leaves[r.index]) if r.index in leaves else r).shred()
        if r.index in wrong
        else r
        for r in rows
    ]
    return out, bad


def check_indexes(indexes: Sequence[int]) -> list[int]:
    """The distinct ledger indexes handed to ``shred_entries``, ascending (each >= 0)."""
    for index in indexes:
        if not isinstance(index, int) or index < 0:
            raise ValueError(f"a ledger index is a non-negative integer, not {index!r}")
    return sorted(set(indexes))


def tombstoned(rows: Sequence[AuditRow], shredded: Collection[bytes]) -> list[AuditRow]:
    """``rows`` as an append writes them once ``shredded`` (the pseudonyms a shred recorded)
    is known: a row of a shredded pseudonym is written as ``row.shred()``. A gateway that
    still holds a shredded patient's pseudonym or key (its caches) thus never puts that
    patient's PHI back into the index."""
    if not shredded:
        return list(rows)
    return [r.shred() if r.pseudonym in shredded and not r.shredded else r for r in rows]


def indexed_rows(batch: Sequence[NewEntry], results: Sequence[AppendResult]) -> list[AuditRow]:
    """The index rows an append writes: each new entry's ``row`` at the entry's index.

    Duplicates (idempotency hits) write none. A row must describe its own leaf (time, kind,
    flags, pseudonym); a row that does not is a programming error and fails the whole append
    (``MalformedError``) before anything is written, rather than index what the ledger does
    not say.
    """
    rows: list[AuditRow] = []
    for entry, result in zip(batch, results, strict=True):
        row = entry.row
        if row is None or result.duplicate:
            continue
        if row.index not in (NO_INDEX_YET, result.index):
            raise MalformedError("an audit row names another entry's index")
        if (row.recorded_us, row.kind, row.flags, row.pseudonym) != (
            entry.recorded_us,
            int(entry.kind),
            int(entry.flags),
            entry.pseudonym,
        ):
            raise MalformedError("an audit row disagrees with its leaf (time, kind, flags)")
        rows.append(row.at(result.index))
    return rows


def has_phi_criteria(q: AuditQuery) -> bool:
    """Whether ``q`` asks about anything beyond time, kinds, pseudonym and the paging key
    (a shredded row keeps the leaf's pseudonym: not PHI, it names no one)."""
    return any(
        value is not None
        for value in (
            q.patient,
            q.agent,
            q.entity,
            q.event_type,
            q.subtype,
            q.action,
            q.outcome,
            q.client,
            q.purpose,
            q.resource_type,
            q.break_glass,
        )
    )


def _purpose_matches(wanted: str, purposes: Iterable[str]) -> bool:
    if "|" in wanted:
        return wanted in purposes
    return any(purpose_code(p) == wanted for p in purposes)


def matches(row: AuditRow, q: AuditQuery) -> bool:
    """Whether ``row`` meets every criterion of ``q`` (paging and limit aside)."""
    if row.shredded and (not q.include_shredded or has_phi_criteria(q)):
        return False
    checks = (
        q.since_us is None or row.recorded_us >= q.since_us,
        q.until_us is None or row.recorded_us <= q.until_us,
        not q.kinds or row.kind in q.kinds,
        q.pseudonym is None or row.pseudonym == q.pseudonym,
        q.patient is None or row.patient == q.patient,
        q.agent is None or row.agent == q.agent,
        q.entity is None or q.entity in row.entities or row.patient == q.entity,
        q.event_type is None or row.event_type == q.event_type,
        q.subtype is None or row.subtype == q.subtype,
        q.action is None or row.action == q.action,
        q.outcome is None or row.outcome == q.outcome,
        q.client is None or row.client == q.client,
        q.purpose is None or _purpose_matches(q.purpose, row.purposes),
        q.resource_type is None or q.resource_type in row.resource_types,
        q.break_glass is None or row.break_glass == q.break_glass,
    )
    return all(checks)


def _key(row: AuditRow, sort: SortKey) -> tuple[int | str, int]:
    """``row``'s place in the ``sort`` order (:mod:`middleware.audit.sort_keys`)."""
    if sort_column(sort) is None:
        return row.recorded_us, row.index
    return sort_value(row, sort), row.index


def _after(row: AuditRow, q: AuditQuery) -> bool:
    if q.after is None:
        return True
    after = q.after if sort_column(q.sort) is None else (q.after_value, q.after[1])
    key = _key(row, q.sort)
    return key < after if descending(q.sort) else key > after


def select_rows(rows: Iterable[AuditRow], q: AuditQuery) -> list[AuditRow]:
    """The page of ``rows`` that ``q`` asks for, in its order."""
    found = [r for r in rows if matches(r, q) and _after(r, q)]
    found.sort(key=lambda r: _key(r, q.sort), reverse=descending(q.sort))
    return found[: q.limit]
