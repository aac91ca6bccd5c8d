"""The JSON of the ledger's admin evidence (reviews, suspensions and their lifts): written
canonically (sorted keys, no spaces, UTF-8) so the same record always commits to the same
bytes, and read back as a JSON object or nothing.

Standard library :mod:`json` only."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["canonical", "parse_object"]


def canonical(body: dict[str, Any]) -> bytes:
    """``body`` as canonical JSON bytes (the evidence the ledger commits to)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_object(data: bytes) -> dict[str, Any] | None:
    """The JSON object in ``data``, or None when it is not UTF-8 JSON or not an object (a
    malformed admin entry, which the readers skip)."""
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        return None
    return body if isinstance(body, dict) else None
