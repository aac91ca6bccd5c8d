"""Retention of audit evidence per entry kind: which entries' evidence has outlived its period.

HIPAA keeps the documentation of a covered entity's policies and actions six years from its
creation (45 CFR 164.316(b)(2)(i)); the accounting of disclosures looks back six years
(45 CFR 164.528(a)(1)). So every audit kind keeps its evidence :data:`DEFAULT_YEARS` unless
the settings say otherwise per kind (``audit_retention_years``, ``audit_retention_by_kind``).
What expires is the *evidence* (the sealed facts); the leaf, its commitment and the proofs
stay, so the ledger still verifies (``LogStore.shred_entries``).

Consent and key entries never expire here: the consent registry and the key history are
rebuilt from them (a withdrawn consent still decides what was permitted when). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from middleware.audit.accounting import years_before
from middleware.ledger.leaf import EntryKind

__all__ = [
    "DEFAULT_YEARS",
    "EXPIRING",
    "RetentionRules",
    "check_covers_accounting",
    "expired",
    "parse_retention",
]

#: Six years (45 CFR 164.316(b)(2)(i)).
DEFAULT_YEARS: Final = 6
#: The kinds whose evidence may expire (module docstring: not consents, not key events).
EXPIRING: Final = frozenset(
    {EntryKind.ACCESS_DECISION, EntryKind.ACCESS_OUTCOME, EntryKind.DISCLOSURE, EntryKind.ADMIN}
)
_BY_LABEL: Final = {kind.label: kind for kind in EXPIRING}


@dataclass(frozen=True, slots=True)
class RetentionRules:
    """``default_years`` for every expiring kind, ``by_kind`` overriding it per kind."""

    default_years: int = DEFAULT_YEARS
    by_kind: Mapping[EntryKind, int] = field(default_factory=dict)

    def years(self, kind: EntryKind) -> int | None:
        """How many years ``kind`` keeps its evidence; None: it never expires."""
        if kind not in EXPIRING:
            return None
        return self.by_kind.get(kind, self.default_years)

    def cutoffs(self, as_of_us: int) -> dict[EntryKind, int]:
        """Per expiring kind, the time before which its evidence has expired."""
        return {
            kind: years_before(as_of_us, self.by_kind.get(kind, self.default_years))
            for kind in sorted(EXPIRING)
        }


def parse_retention(text: str) -> dict[EntryKind, int]:
    """``"disclosure=7, admin=10"`` -> years per kind. Kinds are spelled as their labels
    (``access-decision``, ``access-outcome``, ``disclosure``, ``admin``); years 1..100.
    Anything else (a consent or key kind, an unknown label, a repeated kind, bad years) is a
    ``ValueError`` naming it."""
    out: dict[EntryKind, int] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        label, sep, value = (s.strip() for s in item.partition("="))
        kind = _BY_LABEL.get(label)
        if not sep or kind is None:
            known = ", ".join(sorted(_BY_LABEL))
            raise ValueError(f"{item!r}: expected KIND=YEARS with KIND one of {known}")
        if kind in out:
            raise ValueError(f"{label} is given twice")
        if not value.isdigit() or not 1 <= int(value) <= 100:
            raise ValueError(f"{item!r}: expected 1..100 years")
        out[kind] = int(value)
    return out


def check_covers_accounting(rules: RetentionRules, *, lookback_years: int) -> None:
    """Refuse (``ValueError``) rules that keep disclosures' evidence for fewer years than the
    accounting of disclosures looks back: 45 CFR 164.528(a)(1) gives the individual an
    accounting of the disclosures of the last six years (``accounting_lookback_years``), which
    cannot be produced from evidence already removed."""
    years = rules.years(EntryKind.DISCLOSURE)
    if years is not None and years < lookback_years:
        raise ValueError(
            f"disclosures would keep their evidence {years} years, fewer than the "
            f"{lookback_years} years the accounting of disclosures looks back "
            "(accounting_lookback_years; 45 CFR 164.528(a)(1))"
        )


def expired(
    entries: Iterable[tuple[int, EntryKind, int]], rules: RetentionRules, *, as_of_us: int
) -> list[int]:
    """The indexes of ``entries`` (``(index, kind, recorded_us)``, those still holding
    evidence) recorded before their kind's cutoff, ascending."""
    cutoffs = rules.cutoffs(as_of_us)
    return sorted(
        index
        for index, kind, recorded_us in entries
        if kind in cutoffs and recorded_us < cutoffs[kind]
    )
