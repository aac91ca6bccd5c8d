"""Read a whole log as stored, without replaying or trusting it: the offline verifier's input.

:func:`dump_log` reads every row of a log store's tables (``ledger_base`` describes them) in
one read-only snapshot and returns a :class:`~middleware.ledger.snapshot.LogSnapshot`. Unlike
opening a store (which replays and refuses a forged log), it never refuses and never writes:
a tampered database must still be read, so that the verifier can say what is wrong with it.

SQLite is opened read-only (``mode=ro`` URI), in one read transaction; PostgreSQL in one
``REPEATABLE READ READ ONLY`` transaction (:mod:`~middleware.storage.ledger_dump_read`,
which ``read_bulk`` shares). Database errors become
:class:`~middleware.errors.ServiceUnavailable`.
"""

from __future__ import annotations

from typing import Any

from middleware.ledger.entry import Evidence
from middleware.ledger.snapshot import LogSnapshot
from middleware.storage.ledger_dump_read import Read, blob, blobs, note_text, read_snapshot

__all__ = ["dump_log"]

_READS = (
    Read("SELECT idx, leaf, leaf_hash FROM consentry_ledger_leaves ORDER BY idx"),
    Read("SELECT note FROM consentry_ledger_checkpoints ORDER BY size"),
    Read(
        "SELECT idx, salt, data FROM consentry_ledger_evidence "
        "WHERE salt IS NOT NULL AND data IS NOT NULL ORDER BY idx"
    ),
    Read("SELECT size, root FROM consentry_ledger_state WHERE id = 1", one=True),
)


async def dump_log(url: str, *, schema: str = "public") -> LogSnapshot:
    """Every row of the log at ``url`` (``sqlite:PATH`` or a PostgreSQL DSN, tables in
    ``schema``). A missing SQLite file is an error, not an empty log."""
    leaves, notes, evidence, state = await read_snapshot(url, _READS, schema=schema)
    return _snapshot(leaves, notes, evidence, state)


def _snapshot(leaves: Any, notes: Any, evidence: Any, state: Any) -> LogSnapshot:
    salts, data = blobs([r[1] for r in evidence]), blobs([r[2] for r in evidence])
    return LogSnapshot(
        leaves=blobs([r[1] for r in leaves]),
        checkpoints=[note_text(r[0]) for r in notes],
        evidence={
            int(r[0]): Evidence(salt, item)
            for r, salt, item in zip(evidence, salts, data, strict=True)
        },
        indexes=[int(r[0]) for r in leaves],
        leaf_hashes=blobs([r[2] for r in leaves]),
        state=None if state is None else (int(state[0]), blob(state[1])),
    )
