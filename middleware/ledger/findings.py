"""Findings: what the offline verifier reports, one per thing that does not verify.

A :class:`Finding` has a stable ``code`` (docs/ledger.md lists them), a message, the leaf index or
tree size it concerns, and ``expected`` vs ``computed`` values (bytes shown as base64, as in
signed notes), like :class:`~middleware.ledger.errors.VerificationError`. :class:`Findings`
collects them, keeping at most :data:`MAX_FINDINGS`.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["MAX_FINDINGS", "Finding", "Findings", "Shown", "as_dict", "show"]

#: Findings kept in a report; more are counted in ``omitted`` (one bad edit can break every
#: later chain link, and a report of a million lines helps nobody).
MAX_FINDINGS = 1000

Shown = str | int | None


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing that does not verify. ``code`` is stable (docs/ledger.md lists them)."""

    code: str
    message: str
    index: int | None = None
    size: int | None = None
    expected: Shown = None
    computed: Shown = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in as_dict(self).items() if v is not None}


@dataclass
class Findings:
    """Collects findings; :meth:`add` shows ``expected``/``computed`` for the report."""

    kept: list[Finding] = field(default_factory=list)
    omitted: int = 0

    def add(
        self,
        code: str,
        message: str,
        *,
        index: int | None = None,
        size: int | None = None,
        expected: object = None,
        computed: object = None,
    ) -> None:
        if len(self.kept) >= MAX_FINDINGS:
            self.omitted += 1
            return
        self.kept.append(Finding(code, message, index, size, show(expected), show(computed)))


def show(value: object) -> Shown:
    """A value as a report shows it: bytes as base64, ints and text as they are."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if value is None or isinstance(value, int | str):
        return value
    return str(value)


def as_dict(obj: Any) -> dict[str, Any]:
    """A dataclass's fields, shallow."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}
