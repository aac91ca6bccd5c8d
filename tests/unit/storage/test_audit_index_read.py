"""The SQLite audit index's read path (``_row``, ``_strings``) against what it replaced: a
keyword-built row and ``json``'s decoding of each JSON array column."""

from __future__ import annotations

import json

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.audit.row import ROW_FIELDS, AuditRow
from middleware.storage import audit_index_sqlite as lite

_TEXT = st.text(st.characters(codec="utf-8"), max_size=8)
_ARRAY = st.lists(_TEXT, max_size=4)


def _json_strings(value: object) -> tuple[str, ...] | str:
    """The reference: ``json``'s tuple, or the name of the error it raises."""
    try:
        return tuple(json.loads(str(value)))
    except (ValueError, TypeError) as exc:
        return type(exc).__name__


def _strings(value: object) -> tuple[str, ...] | str:
    try:
        return lite._strings(value)
    except (ValueError, TypeError) as exc:
        return type(exc).__name__


@settings(max_examples=400)
@given(
    st.one_of(
        _ARRAY.map(lambda items: json.dumps(items, ensure_ascii=False, separators=(",", ":"))),
        _ARRAY.map(json.dumps),  # ASCII escapes, spaces after the commas
        st.text(st.sampled_from('[]",\\u0d8 \n\tae1.'), max_size=14),
        st.sampled_from(['["\\ud800"]', "[1e400]", "[NaN]", '["a"]x', "[01]", '{"a": 1}']),
    )
)
def test_array_columns_decode_as_json_decodes_them(text: str) -> None:
    """Same tuple, or an error where json raises one (msgspec's refusals fall back to json:
    a lone surrogate escape, a number out of range)."""
    assert _strings(text) == _json_strings(text)


def test_a_blob_in_an_array_column_is_decoded_as_its_text() -> None:
    assert _strings(b'["a"]') == _json_strings(b'["a"]') == "JSONDecodeError"


_ROWS = st.tuples(
    st.integers(0, 2**40),
    st.integers(0, 2**62),
    st.integers(1, 7),
    st.integers(0, 7),
    st.none() | _TEXT,
    st.none() | st.binary(min_size=16, max_size=16),
    st.none() | _TEXT,
    _ARRAY,
    st.none() | _TEXT,
    st.none() | _TEXT,
    _ARRAY,
    _TEXT,
    _TEXT,
    st.none() | _TEXT,
    _TEXT,
    _ARRAY,
    _ARRAY,
    st.integers(0, 1),
    _TEXT,
    st.integers(0, 1),
)


@settings(max_examples=200)
@given(_ROWS)
def test_a_stored_row_reads_as_the_keyword_built_row(v: tuple[object, ...]) -> None:
    """``_row`` builds positionally from the columns in :data:`_COLUMNS` order; the row equals
    the one built by field name from the same values (and the SELECT's columns are the
    row's fields, pseudonym included, in order)."""
    arrays = {7, 10, 15, 16}
    stored = tuple(
        json.dumps(x, ensure_ascii=False, separators=(",", ":")) if i in arrays else x
        for i, x in enumerate(v)
    )
    fields = dict(zip(ROW_FIELDS, v, strict=True))
    for name in ("roles", "purposes", "resource_types", "entities"):
        fields[name] = tuple(fields[name])  # type: ignore[arg-type]
    for name in ("break_glass", "shredded"):
        fields[name] = bool(fields[name])
    expected = AuditRow(**fields)  # type: ignore[arg-type]
    got = lite._row(stored)
    assert got == expected
    assert msgspec.structs.asdict(got) == msgspec.structs.asdict(expected)
    columns = tuple(c.strip() for c in lite._COLUMNS.split(","))
    assert columns == ("idx", *ROW_FIELDS[1:])
