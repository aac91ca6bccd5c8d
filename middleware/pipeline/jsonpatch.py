"""Apply a JSON Patch (RFC 6902) to decoded JSON, to learn a resource's state after a PATCH.

FHIR R4 http.html#patch lets a client change a resource with a JSON Patch. Before the gateway
forwards one it must know the resource's patient compartment *after* the change, so it applies
the patch itself with :func:`apply_patch` and checks the result.

Contract:

- the input is never changed: the patch is applied to a deep copy of ``document`` and the
  copy is returned; ``value`` members are copied in, so the result shares no list or dict with
  the patch either;
- values are plain decoded JSON (dict, list, str, int, bool, None) and the
  :class:`msgspec.Raw` decimals of :mod:`middleware.fhir.jsoncodec`; anything that is not a
  dict or a list is an opaque leaf. ``test`` compares leaves with ``==`` (two ``Raw`` are equal
  when their bytes are, so ``5.40`` is not ``5.4``: FHIR decimals carry their precision), except
  that a boolean only equals a boolean (JSON ``true`` is not the number ``1``, RFC 6902 §4.6);
- the patch is atomic (RFC 6902 §5): the first problem raises
  :class:`~middleware.errors.UnprocessableEntity` and nothing is returned. Problems are a
  patch that is not a list of objects, an unknown ``op``, a missing or malformed ``path``,
  ``from`` or ``value``, a pointer to a missing member, an array index out of range or with
  leading zeros, moving a location into its own child, and a failed ``test``;
- limits: at most :data:`MAX_OPERATIONS` operations and :data:`MAX_POINTER_DEPTH` reference
  tokens per pointer; beyond them the same error;
- error messages name the operation's index and the problem, never a value or a pointer from
  the patch or the document (they may hold PHI).
"""

from __future__ import annotations

import re
from typing import Any, Final

from middleware.errors import UnprocessableEntity

__all__ = ["MAX_OPERATIONS", "MAX_POINTER_DEPTH", "apply_patch"]

#: The most operations one patch may hold.
MAX_OPERATIONS: Final = 1000
#: The most reference tokens one JSON Pointer may hold.
MAX_POINTER_DEPTH: Final = 64

_OPS: Final = frozenset({"add", "remove", "replace", "move", "copy", "test"})
# RFC 6901 §4: an array index is "0" or digits without a leading zero.
_INDEX: Final = re.compile(r"0|[1-9][0-9]*")
# RFC 6901 §3: "~" appears only as the escapes "~0" and "~1".
_TOKEN: Final = re.compile(r"(?:[^~]|~[01])*")
# Longer index tokens cannot address a real array and would overflow int() limits.
_MAX_INDEX_DIGITS: Final = 18


class _Problem(Exception):
    """A fault in one operation; :func:`apply_patch` adds the operation's index."""


def apply_patch(document: Any, patch: Any) -> Any:
    """The result of applying the RFC 6902 ``patch`` to a deep copy of ``document``.

    Raises :class:`~middleware.errors.UnprocessableEntity` for any problem (module docstring).
    """
    if not isinstance(patch, list):
        raise UnprocessableEntity("JSON Patch: the patch is not an array of operations")
    if len(patch) > MAX_OPERATIONS:
        raise UnprocessableEntity(f"JSON Patch: more than {MAX_OPERATIONS} operations in one patch")
    result = _copy(document)
    for index, operation in enumerate(patch):
        try:
            result = _apply_one(result, operation)
        except _Problem as exc:
            raise UnprocessableEntity(f"JSON Patch operation {index}: {exc}") from None
    return result


def _apply_one(document: Any, operation: Any) -> Any:
    if not isinstance(operation, dict):
        raise _Problem("not an object")
    op = operation.get("op")
    if not isinstance(op, str) or op not in _OPS:
        raise _Problem("'op' is missing or not one of add, remove, replace, move, copy, test")
    # RFC 6902 §4: members an operation does not define are ignored.
    path = _parse(operation.get("path"), "path")
    if op in ("add", "replace", "test") and "value" not in operation:
        raise _Problem(f"{op}: 'value' is missing")
    if op == "add":
        return _add(document, path, _copy(operation["value"]))
    if op == "remove":
        if not path:
            raise _Problem("remove: cannot remove the whole document")
        document, _ = _remove(document, path)
        return document
    if op == "replace":
        _get(document, path)  # RFC 6902 §4.3: the target location MUST exist
        if not path:
            return _copy(operation["value"])
        return _add(document, path, _copy(operation["value"]), replace=True)
    if op == "test":
        if not _equal(_get(document, path), operation["value"]):
            raise _Problem("test: the value at 'path' is not the expected value")
        return document
    source = _parse(operation.get("from"), "from")
    if op == "copy":
        return _add(document, path, _copy(_get(document, source)))
    # move. RFC 6902 §4.4: "from" MUST NOT be a proper prefix of "path".
    if len(source) < len(path) and path[: len(source)] == source:
        raise _Problem("move: cannot move a location into one of its children")
    if source == path:
        _get(document, source)  # the "from" location MUST exist, even for a no-op
        return document
    document, value = _remove(document, source)
    return _add(document, path, value)


def _parse(pointer: Any, member: str) -> list[str]:
    """The reference tokens of an RFC 6901 pointer, unescaped; ``[]`` is the whole document."""
    if not isinstance(pointer, str):
        raise _Problem(f"'{member}' is missing or not a string")
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise _Problem(f"'{member}' is not a JSON Pointer")
    if pointer.count("/") > MAX_POINTER_DEPTH:
        raise _Problem(f"'{member}' is deeper than {MAX_POINTER_DEPTH} tokens")
    tokens = pointer[1:].split("/")
    for token in tokens:
        if not _TOKEN.fullmatch(token):
            raise _Problem(f"'{member}' has a '~' that is not '~0' or '~1'")
    # RFC 6901 §4: first "~1" to "/", then "~0" to "~", so "~01" becomes "~1", not "/".
    return [token.replace("~1", "/").replace("~0", "~") for token in tokens]


def _index(ref: str, size: int, *, end_ok: bool) -> int:
    """The array index ``ref`` names; ``size`` itself is allowed only when ``end_ok``."""
    if ref == "-":
        if end_ok:
            return size
        raise _Problem("'-' names no existing array element")
    if len(ref) > _MAX_INDEX_DIGITS or not _INDEX.fullmatch(ref):
        raise _Problem("an array index is not a number without leading zeros")
    index = int(ref)
    if index > size or (index == size and not end_ok):
        raise _Problem("an array index is out of range")
    return index


def _get(document: Any, tokens: list[str]) -> Any:
    node = document
    for token in tokens:
        if isinstance(node, dict):
            if token not in node:
                raise _Problem("a pointer names a member that does not exist")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(token, len(node), end_ok=False)]
        else:
            raise _Problem("a pointer goes through a value that is not an object or array")
    return node


def _container(document: Any, tokens: list[str]) -> dict[str, Any] | list[Any]:
    parent = _get(document, tokens[:-1])
    if not isinstance(parent, dict | list):
        raise _Problem("a pointer's parent is not an object or array")
    return parent


def _add(document: Any, tokens: list[str], value: Any, *, replace: bool = False) -> Any:
    """RFC 6902 §4.1 add (or, with ``replace``, §4.3 on a location known to exist)."""
    if not tokens:
        return value
    parent = _container(document, tokens)
    token = tokens[-1]
    if isinstance(parent, dict):
        parent[token] = value
    elif replace:
        parent[_index(token, len(parent), end_ok=False)] = value
    else:
        # RFC 6902 §4.1: insert before the index; "-" (== len) appends.
        parent.insert(_index(token, len(parent), end_ok=True), value)
    return document


def _remove(document: Any, tokens: list[str]) -> tuple[Any, Any]:
    """RFC 6902 §4.2 remove: the document and the removed value; the target must exist."""
    parent = _container(document, tokens)
    token = tokens[-1]
    if isinstance(parent, dict):
        if token not in parent:
            raise _Problem("a pointer names a member that does not exist")
        return document, parent.pop(token)
    return document, parent.pop(_index(token, len(parent), end_ok=False))


def _copy(value: Any) -> Any:
    """A deep copy of the dicts and lists in ``value`` (leaves shared: they are immutable).

    Iterative, so a document as deep as the decoder allows cannot exhaust the stack.
    """
    if not isinstance(value, dict | list):
        return value
    root: dict[str, Any] | list[Any] = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any]] = [(value, root)]
    while stack:
        source, target = stack.pop()
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, child in items:
            copied = child
            if isinstance(child, dict | list):
                copied = {} if isinstance(child, dict) else []
                stack.append((child, copied))
            if isinstance(target, dict):
                target[key] = copied
            else:
                target.append(copied)
    return root


def _equal(left: Any, right: Any) -> bool:
    """RFC 6902 §4.6 equality: same type; objects by members (order ignored); arrays by
    position; leaves by ``==``, a boolean only equal to a boolean. Iterative, like
    :func:`_copy`."""
    stack: list[tuple[Any, Any]] = [(left, right)]
    while stack:
        a, b = stack.pop()
        if isinstance(a, dict):
            if not isinstance(b, dict) or a.keys() != b.keys():
                return False
            stack.extend((a[key], b[key]) for key in a)
        elif isinstance(a, list):
            if not isinstance(b, list) or len(a) != len(b):
                return False
            stack.extend(zip(a, b, strict=True))
        elif isinstance(b, dict | list):
            return False
        elif isinstance(a, bool) or isinstance(b, bool):
            if type(a) is not type(b) or a != b:
                return False
        elif a != b:
            return False
    return True
