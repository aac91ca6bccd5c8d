"""Which of a batch's audit rows SQLite already stores exactly so: the cheap half of an upsert.

A rebuild of an index that is right (``consentry audit reindex`` after a restore, a check)
writes nothing, but it must read every stored row to know that. Reading one into an
:class:`~middleware.audit.row.AuditRow` costs about 3 µs with the GIL held (twenty column
values made into Python objects, three JSON arrays decoded). :func:`unchanged` has SQLite
render each stored row as one JSON array of its column values (``json_array``, in C, with the
GIL released) and compares those bytes with the same rendering of the given row, built here
from the values ``write_rows`` would store (:func:`rendered`): about 1 µs of Python a row.

Exact: the bytes are equal only if every stored column value equals, in type and value, the
one the given row would be stored as (JSON tells integers, text and null apart; the pseudonym,
a blob JSON cannot hold, is compared on its own), and reading those values gives the given row
back (a test checks the round trip). Anything else (another JSON escape of the same text, a
value of an unexpected type, a blob where text belongs, which SQLite before 3.45 refuses to
render and which from 3.45 is excluded by its ``typeof``) is only "not known unchanged":
the caller reads those rows in full and compares them as before.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

import msgspec

from middleware.audit.row import AuditRow
from middleware.storage.audit_index_query import json_array, json_array_cached

__all__ = ["BLOBS_RENDERED", "rendered", "unchanged"]

#: The columns in ``write_rows``' order (``audit_index_sqlite._COLUMNS``), the pseudonym
#: (sixth) as null: it is compared apart.
_COLUMNS = (
    "idx, recorded_us, kind, flags, patient, NULL, agent, roles, organization, client, "
    "purposes, action, event_type, subtype, outcome, resource_types, entities, break_glass, "
    "request_id, shredded"
)
_FROM = "FROM consentry_audit_index WHERE idx IN (SELECT value FROM json_each(?))"
_TYPES = ", ".join(f"typeof({c})" for c in _COLUMNS.split(", ") if c != "NULL")
#: Each row's rendering. Before 3.45 SQLite's ``json_array`` refuses a blob (the caller then
#: compares the batch in full); from 3.45 it renders one that reads as JSONB as that JSON
#: (``b"\x97Patient/1"`` as ``"Patient/1"``), equal to the text it is not, so there a row
#: with a blob in any rendered column renders as null (never "the same"; ``CASE`` evaluates
#: ``json_array`` for the other rows only). The check costs about 0.7 us a row of SQL,
#: paid only where it is needed.
_RENDERED_PLAIN = f"SELECT idx, pseudonym, CAST(json_array({_COLUMNS}) AS BLOB) {_FROM}"
_RENDERED_TYPED = (
    f"SELECT idx, pseudonym, CASE WHEN 'blob' IN ({_TYPES}) THEN NULL "
    f"ELSE CAST(json_array({_COLUMNS}) AS BLOB) END {_FROM}"
)
#: Does this SQLite render a blob in ``json_array`` (3.45 and later)?
BLOBS_RENDERED = sqlite3.sqlite_version_info >= (3, 45, 0)
_encode = msgspec.json.Encoder().encode


def rendered(row: AuditRow) -> bytes:
    """:data:`_RENDERED`'s JSON of ``row`` as ``write_rows`` stores it: the column values
    (``audit_index_sqlite._values``, spelled out here: a list built at once costs a third
    less; a test compares them) with the pseudonym null."""
    return _encode(
        [
            row.index,
            row.recorded_us,
            row.kind,
            row.flags,
            row.patient,
            None,
            row.agent,
            json_array_cached(row.roles),
            row.organization,
            row.client,
            json_array_cached(row.purposes),
            row.action,
            row.event_type,
            row.subtype,
            row.outcome,
            json_array_cached(row.resource_types),
            json_array(row.entities),
            int(row.break_glass),
            row.request_id,
            int(row.shredded),
        ]
    )


def unchanged(
    c: sqlite3.Connection,
    given: Mapping[int, AuditRow],
    indexes: str,
    *,
    typed: bool = BLOBS_RENDERED,
) -> tuple[set[int], set[int]]:
    """``(same, stored)`` of ``given`` (rows by index; ``indexes``: its keys as a JSON
    array): ``stored`` the indexes that have a stored row, ``same`` those whose stored row is
    exactly the given one (module docstring). A stored index not in ``same`` may still hold
    an equal row: the caller reads it to decide. A stored row with a blob where the index
    stores no blob is never the same: ``typed`` (the default on SQLite 3.45 and later,
    :data:`BLOBS_RENDERED`) excludes it by its ``typeof``; else SQLite fails to render it and
    every given index is reported, none as the same."""
    sql = _RENDERED_TYPED if typed else _RENDERED_PLAIN
    try:
        found = c.execute(sql, (indexes,)).fetchall()
    except sqlite3.OperationalError:  # JSON cannot hold it: the caller compares in full
        return set(), set(given)
    same = {
        i for i, pseudonym, text in found
        if (row := given[i]).pseudonym == pseudonym and text == rendered(row)
    }  # fmt: skip
    return same, {v[0] for v in found}
