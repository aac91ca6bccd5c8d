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
value of an unexpected type, a blob where text belongs) is only "not known unchanged": the
caller reads those rows in full and compares them as before.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

import msgspec

from middleware.audit.row import AuditRow
from middleware.storage.audit_index_query import json_array, json_array_cached

__all__ = ["rendered", "unchanged"]

#: The columns in ``write_rows``' order (``audit_index_sqlite._COLUMNS``), the pseudonym
#: (sixth) as null: it is compared apart.
_RENDERED = (
    "SELECT idx, pseudonym, CAST(json_array(idx, recorded_us, kind, flags, patient, NULL, "
    "agent, roles, organization, client, purposes, action, event_type, subtype, outcome, "
    "resource_types, entities, break_glass, request_id, shredded) AS BLOB) "
    "FROM consentry_audit_index WHERE idx IN (SELECT value FROM json_each(?))"
)
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
    c: sqlite3.Connection, given: Mapping[int, AuditRow], indexes: str
) -> tuple[set[int], set[int]]:
    """``(same, stored)`` of ``given`` (rows by index; ``indexes``: its keys as a JSON
    array): ``stored`` the indexes that have a stored row, ``same`` those whose stored row is
    exactly the given one (module docstring). A stored index not in ``same`` may still hold
    an equal row: the caller reads it to decide. When SQLite cannot render a stored row
    (a blob in a text column), every stored index is reported, none as the same."""
    try:
        found = c.execute(_RENDERED, (indexes,)).fetchall()
    except sqlite3.OperationalError:  # JSON cannot hold a blob: the caller compares in full
        return set(), set(given)
    same = {
        i for i, pseudonym, text in found
        if (row := given[i]).pseudonym == pseudonym and text == rendered(row)
    }  # fmt: skip
    return same, {v[0] for v in found}
