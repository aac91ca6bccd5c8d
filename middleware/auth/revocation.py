"""Token revocation: which verified tokens an administrator has withdrawn (pure: no I/O).

A signed token stays valid until its ``exp``; revocation lets an administrator stop one
before that (``consentry auth revoke``). Three kinds of :class:`Revocation`:

- ``jti``: the one token whose ``jti`` claim (RFC 7519 §4.1.7) is ``value``, from any issuer;
- ``subject``: every token whose ``sub`` is ``value`` issued before ``before`` (its ``iat``,
  RFC 7519 §4.1.6; a token without ``iat`` counts as issued before any time: the safe
  direction), from any issuer (a ``sub`` two issuers share is revoked at both);
- ``client``: every token whose ``client_id`` (else ``azp``) is ``value`` issued before
  ``before``, likewise.

A revocation stays until an administrator lifts it (``consentry auth revoke --lift``, itself
on the ledger); a token issued after a subject's or client's time is unaffected anyway. A
``jti`` revocation recorded with its token's ``exp`` may be pruned once that token cannot be
accepted anywhere (:data:`PRUNE_MARGIN`); nothing else is pruned.

Clock skew: a token's ``iat`` comes from its issuer's clock and ``before`` from the clock of the
host that ran ``consentry auth revoke``; the verifier accepts an ``iat`` up to its ``leeway``
seconds in the future, so it asks with ``iat - leeway`` (:meth:`RevocationList.revoked`):
a subject's or client's token is revoked when ``iat < before + leeway``. A token issued up to
``leeway`` seconds after ``before`` is therefore refused too (the safe direction).

A stored row is read back with :meth:`RevocationSet.of_rows`, which never raises: a row that
is not a usable revocation (written by hand, or by another version) is skipped and counted,
so that one bad row cannot turn every authenticated request into an error.

:class:`RevocationSet` is the set as one process holds it; a :class:`RevocationList` (the
store's, :mod:`middleware.storage.revocations_open`) keeps it current in every process of the
gateway and answers :meth:`RevocationList.revoked` for every request
(:class:`~middleware.auth.verify.TokenVerifier` asks after the signature check or cache
hit), raising :class:`~middleware.errors.ServiceUnavailable` when it cannot tell.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from middleware.auth.identity import Identity

__all__ = [
    "KINDS",
    "PRUNE_MARGIN",
    "Lifted",
    "Revocation",
    "RevocationKind",
    "RevocationList",
    "RevocationSet",
    "StoredRevocation",
]

RevocationKind = Literal["jti", "subject", "client"]
KINDS: Final[tuple[RevocationKind, ...]] = ("jti", "subject", "client")
#: Longest text a revocation names (a jti, subject or client id).
MAX_VALUE: Final = 512
#: Seconds past a token's ``exp`` before its ``jti`` revocation may be pruned: the largest
#: ``leeway`` a verifier may be set to (auth settings: 300 s, so no gateway still accepts the
#: token), and as much again for the clock of the host that prunes running ahead.
PRUNE_MARGIN: Final = 600.0


@dataclass(frozen=True, slots=True)
class Revocation:
    """One revocation (module docstring); ``before`` is None for a ``jti``, seconds since the
    epoch for the others."""

    kind: RevocationKind
    value: str
    before: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"a revocation's kind is one of {', '.join(KINDS)}")
        if not self.value or len(self.value) > MAX_VALUE or not self.value.isprintable():
            raise ValueError(f"a revocation names 1..{MAX_VALUE} printable characters")
        if (self.kind == "jti") != (self.before is None):
            raise ValueError("a jti revocation has no time; a subject or client one has one")


@dataclass(frozen=True, slots=True)
class StoredRevocation:
    """A row of the store's list, as an operator sees it: what, since when (``revoked_at``,
    seconds since the epoch), why, which admin ledger entry recorded it (None for a row
    written before entries were kept), and a ``jti``'s token ``exp`` when the revocation
    named it (None: unknown, never pruned)."""

    kind: str
    value: str
    before: float | None
    revoked_at: float
    reason: str
    admin_entry: int | None
    expires: float | None


@dataclass(frozen=True, slots=True)
class Lifted:
    """What lifting a revocation under admin entry ``entry`` did: ``removed`` it; found it
    ``absent`` (lifted meanwhile); or ``kept`` it, because the revocation in force was
    recorded by ``stands``, an entry appended after the lift's (the ledger's order wins)."""

    outcome: Literal["removed", "absent", "kept"]
    stands: int | None = None

    @classmethod
    def of(cls, found: StoredRevocation | None, entry: int) -> Lifted:
        """What a lift under admin entry ``entry`` does to ``found``, the row it read under
        the list's write lock (every backend's rule): none is ``absent``; one recorded by a
        later entry is ``kept``; else it is ``removed`` (the caller deletes it)."""
        if found is None:
            return cls("absent")
        if found.admin_entry is not None and found.admin_entry > entry:
            return cls("kept", found.admin_entry)
        return cls("removed")


@dataclass(frozen=True, slots=True)
class RevocationSet:
    """Every revocation in force, as lookups."""

    jtis: frozenset[str] = frozenset()
    subjects: Mapping[str, float] = field(default_factory=dict)
    clients: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, revocations: Iterable[Revocation]) -> RevocationSet:
        """The set of ``revocations`` (several of one subject or client: the latest time)."""
        jtis: set[str] = set()
        subjects: dict[str, float] = {}
        clients: dict[str, float] = {}
        for r in revocations:
            if r.kind == "jti":
                jtis.add(r.value)
                continue
            assert r.before is not None  # checked on construction
            table = subjects if r.kind == "subject" else clients
            table[r.value] = max(table.get(r.value, r.before), r.before)
        return cls(frozenset(jtis), subjects, clients)

    @classmethod
    def of_rows(cls, rows: Iterable[tuple[object, object, object]]) -> tuple[RevocationSet, int]:
        """The set of stored ``(kind, value, before)`` rows, and how many were skipped
        (module docstring). A row's value is taken as stored, however long: the table holds
        what was revoked, and enforcing it is the safe direction."""
        jtis: set[str] = set()
        subjects: dict[str, float] = {}
        clients: dict[str, float] = {}
        skipped = 0
        for kind, value, before in rows:
            if not isinstance(value, str) or not value:
                skipped += 1
            elif kind == "jti" and before is None:
                jtis.add(value)
            elif (
                kind in ("subject", "client")
                and isinstance(before, int | float)
                and not isinstance(before, bool)
                and not math.isnan(before)
            ):
                table = subjects if kind == "subject" else clients
                table[value] = max(table.get(value, float(before)), float(before))
            else:
                skipped += 1
        return cls(frozenset(jtis), subjects, clients), skipped

    def revokes(self, identity: Identity, issued_at: float | None) -> bool:
        """Whether a token of ``identity`` issued at ``issued_at`` (its ``iat``; None when it
        has none) is revoked."""
        if identity.token_id is not None and identity.token_id in self.jtis:
            return True
        issued = float("-inf") if issued_at is None else issued_at
        cutoff = self.subjects.get(identity.subject)
        if cutoff is not None and issued < cutoff:
            return True
        if identity.client_id is not None:
            cutoff = self.clients.get(identity.client_id)
            if cutoff is not None and issued < cutoff:
                return True
        return False

    def __len__(self) -> int:
        return len(self.jtis) + len(self.subjects) + len(self.clients)


class RevocationList(Protocol):
    """The revocations every process of the gateway enforces (module docstring)."""

    async def revoked(self, identity: Identity, issued_at: float | None) -> bool:
        """Whether the token is revoked. ``issued_at`` is the earliest time it may have been
        issued by this host's clock (its ``iat`` less the verifier's leeway: module
        docstring), None without ``iat``; raises
        :class:`~middleware.errors.ServiceUnavailable` when that cannot be told."""
        ...

    async def aclose(self) -> None:
        """Stop listening and close connections (idempotent)."""
        ...
