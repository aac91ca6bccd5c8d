"""Identifier-system aliases: the upstream's system name <-> the one clients use.

An alias table is a bijection (every system appears once, on one side only), so rewriting an
answer toward the client and a write back toward the upstream are exact inverses. Only
``Identifier.system`` changes; the value and everything else stay as they are. Identifiers are
found wherever an element is called ``identifier``: resource identifiers and
``Reference.identifier`` (logical references) alike, in contained resources and Bundle
entries too.

Table file (``mappings/identifiers/*.json``)::

    {"aliases": [{"upstream": "urn:oid:1.2.3.4.5", "client": "http://hospital-a.example/mrn",
                  "description": "medical record number"}]}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from middleware.mapping.tokens import format_token, parse_token

__all__ = ["AliasTable", "Toward", "parse_aliases"]

Toward = Literal["client", "upstream"]
_KEYS = frozenset({"upstream", "client", "description"})


@dataclass(frozen=True, slots=True)
class AliasTable:
    """``to_client``: upstream system -> client system; ``to_upstream`` is its inverse."""

    to_client: Mapping[str, str] = field(default_factory=dict)
    to_upstream: Mapping[str, str] = field(default_factory=dict)

    def system(self, system: str, toward: Toward) -> str:
        """``system`` as the other side names it (itself if it has no alias)."""
        table = self.to_client if toward == "client" else self.to_upstream
        return table.get(system, system)

    def rewrite(self, resource: Any, toward: Toward) -> Any:
        """``resource`` with every aliased ``identifier.system`` renamed; copy-on-write."""
        table = self.to_client if toward == "client" else self.to_upstream
        return _walk(resource, table) if table else resource

    def rewrite_token(self, text: str, toward: Toward) -> str:
        """A ``system|value`` search value with its system renamed (escapes kept)."""
        token = parse_token(text)
        if not token.system:
            return text
        renamed = self.system(token.system, toward)
        return text if renamed == token.system else format_token(renamed, token.code)


def parse_aliases(raw: Any, problems: list[str]) -> AliasTable:
    """Build a table from its JSON; append each fault to ``problems`` (empty table then)."""
    entries = raw.get("aliases") if isinstance(raw, Mapping) else None
    if not isinstance(entries, list) or (isinstance(raw, Mapping) and set(raw) - {"aliases"}):
        problems.append("identifiers: needs exactly one key, 'aliases', holding a list")
        return AliasTable()
    before = len(problems)
    to_client: dict[str, str] = {}
    to_upstream: dict[str, str] = {}
    for i, entry in enumerate(entries):
        at = f"aliases[{i}]"
        if not isinstance(entry, Mapping) or set(entry) - _KEYS:
            problems.append(f"{at}: needs 'upstream' and 'client' (and may have 'description')")
            continue
        upstream, client = entry.get("upstream"), entry.get("client")
        if not (isinstance(upstream, str) and upstream and isinstance(client, str) and client):
            problems.append(f"{at}: 'upstream' and 'client' must be non-empty system URIs")
        elif upstream == client:
            problems.append(f"{at}: {upstream} is aliased to itself")
        elif upstream in to_client or upstream in to_upstream:
            problems.append(f"{at}: {upstream} already appears in the table")
        elif client in to_upstream or client in to_client:
            problems.append(f"{at}: {client} already appears in the table")
        else:
            to_client[upstream] = client
            to_upstream[client] = upstream
    if len(problems) > before:
        return AliasTable()
    return AliasTable(to_client, to_upstream)


def _walk(node: Any, table: Mapping[str, str]) -> Any:
    """Copy-on-write walk of every dict and list; hot path, so types are tested with ``is``."""
    kind = type(node)
    if kind is list:
        out: list[Any] | None = None
        for i, item in enumerate(node):
            new = _walk(item, table) if type(item) in _CONTAINERS else item
            if new is not item:
                out = out if out is not None else list(node)
                out[i] = new
        return node if out is None else out
    if kind is not dict:
        return node
    changed: dict[str, Any] | None = None
    for key, value in node.items():
        if type(value) not in _CONTAINERS:
            continue
        new = _walk(_identifiers(value, table) if key == "identifier" else value, table)
        if new is not value:
            changed = changed if changed is not None else {}
            changed[key] = new
    return node if changed is None else {**node, **changed}


_CONTAINERS = frozenset({dict, list})


def _identifiers(value: Any, table: Mapping[str, str]) -> Any:
    if type(value) is list:
        items = [_identifiers(item, table) for item in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    system = value.get("system") if type(value) is dict else None
    if type(system) is str and system in table:
        return {**value, "system": table[system]}
    return value
