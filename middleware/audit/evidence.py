"""Audit evidence: facts sealed under a per-patient key, and reading them back.

The evidence of an audit entry (the bytes the leaf's commitment covers, kept beside the ledger)
is, from format version 1 on::

    b"CSE" 0x01  ||  Poly1305 MAC (16 bytes)  ||  XSalsa20 ciphertext

the facts (:func:`~middleware.audit.facts.encode_facts`) sealed with libsodium's secret box
(:func:`~middleware.ledger.signing.seal_once`: zero nonce, as the key seals one message only)
under the entry's own key ``evidence_key(patient key, salt)`` (keyed BLAKE2b of the leaf's
random salt, :func:`~middleware.ledger.signing.evidence_key`). The
patient key is 32 random bytes drawn on the pseudonym's first audit entry and stored, wrapped
(sealed under ``derive_box_key(ledger key, "evidence")``), in the store's key table beside the
ledger (``audit_key``); entries without a patient use the key of the all-zero pseudonym.
Deleting a patient's key crypto-shreds their evidence; the leaves and commitments still verify
(``consentry ledger verify`` hashes the stored bytes, it never opens them).

An export hands a verifier an :class:`Opening` per row (salt, evidence bytes, the entry key):
:func:`open_entry` checks and opens it offline, without the patient key.

Entries written before this format hold a plain canonical JSON Bundle of AuditEvents: the
reader does not treat them as facts (:meth:`EvidenceReader.facts` returns None) and hands their
events back as stored (:meth:`EvidenceReader.events`, :meth:`EvidenceReader.legacy_bundle`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

from middleware.audit.facts import AuditFacts, decode_facts, encode_facts, row_of
from middleware.audit.parts import Json
from middleware.audit.render import render_events
from middleware.audit.ttlcache import TtlCache
from middleware.fhir import jsoncodec
from middleware.fhir.limits import STORED_MAX_JSON_DEPTH
from middleware.ledger.entry import Evidence, NewEntry
from middleware.ledger.leaf import (
    PSEUDONYM_SIZE,
    EntryFlag,
    EntryKind,
    commit_evidence,
    decode_leaf,
    new_salt,
)
from middleware.ledger.signing import (
    evidence_key,
    new_box_key,
    seal,
    seal_once,
    unseal,
    unseal_once,
)

__all__ = [
    "EVIDENCE_HEADER",
    "EVIDENCE_PURPOSE",
    "NO_PATIENT",
    "EvidenceKeyError",
    "EvidenceRanges",
    "EvidenceReader",
    "EvidenceStore",
    "Opening",
    "PatientKeys",
    "is_sealed",
    "open_entry",
    "seal_facts",
    "sealed_entry",
]

#: The first bytes of sealed evidence: ``CSE`` and the format version.
EVIDENCE_HEADER: Final = b"CSE\x01"
#: What the key wrapping patients' evidence keys is derived for: ``derive_box_key(data secret,
#: EVIDENCE_PURPOSE)``. Named once: a caller deriving it under another name would seal or look
#: for keys no other part of the gateway can unwrap.
EVIDENCE_PURPOSE: Final = "evidence"
#: The pseudonym whose key seals the evidence of entries that name no patient.
NO_PATIENT: Final = bytes(PSEUDONYM_SIZE)
#: EvidenceReader.openings: evidence reads handed to the store at once (a PostgreSQL pool
#: lends at most this many connections to one page) and leaves read together when this close.
_READS_AT_ONCE: Final = 64
_GAP: Final = 512
_KEY_SIZE: Final = 32


class EvidenceKeyError(ValueError):
    """The key given does not open the evidence (another entry's key, a changed byte), or a
    stored patient key does not unwrap under the ledger key."""


@dataclass(frozen=True, slots=True)
class Opening:
    """What a verifier needs to open one entry offline: the leaf's ``salt``, the stored
    ``evidence`` bytes (``commit_evidence(salt, evidence)`` is the leaf's commitment) and the
    entry's own ``key`` (never the patient's)."""

    salt: bytes
    evidence: bytes
    key: bytes = field(repr=False)

    @property
    def commitment(self) -> bytes:
        return commit_evidence(self.salt, self.evidence)


def is_sealed(evidence: bytes) -> bool:
    """Whether ``evidence`` is sealed facts (this module's format), not a legacy Bundle."""
    return evidence.startswith(EVIDENCE_HEADER)


def seal_facts(patient_key: bytes, salt: bytes, facts: bytes) -> bytes:
    """The evidence bytes of encoded ``facts`` for the entry of ``salt`` (module docstring)."""
    return EVIDENCE_HEADER + seal_once(evidence_key(patient_key, salt), facts)


def sealed_entry(
    patient_key: bytes,
    facts: AuditFacts,
    *,
    kind: EntryKind,
    flags: EntryFlag,
    pseudonym: bytes | None,
    consent: int | None = None,
) -> NewEntry:
    """The ledger entry of ``facts``: a fresh salt, the facts sealed under ``patient_key`` for
    it, and the entry's audit-index row (``row_of``). The one way an audit entry is made from
    facts (the recorder's, and the test fill's, so both write the same rows by construction)."""
    salt = new_salt()
    return NewEntry(
        kind=kind,
        recorded_us=facts.recorded_us,
        salt=salt,
        evidence=seal_facts(patient_key, salt, encode_facts(facts)),
        pseudonym=pseudonym,
        consent=consent,
        flags=flags,
        row=row_of(facts, kind=kind, flags=flags, pseudonym=pseudonym),
    )


def open_entry(opening: Opening) -> AuditFacts:
    """The facts sealed in ``opening.evidence`` under ``opening.key``. Raises
    :class:`EvidenceKeyError` when the evidence is not sealed facts or the key does not open
    it, :class:`ValueError` when what it opens to is not valid facts. Pure."""
    if not is_sealed(opening.evidence) or len(opening.key) != _KEY_SIZE:
        raise EvidenceKeyError("not sealed audit evidence, or not an entry key")
    plain = unseal_once(opening.key, opening.evidence[len(EVIDENCE_HEADER) :])
    if plain is None:
        raise EvidenceKeyError("the entry key does not open this evidence")
    return decode_facts(plain)


class PatientKeys:
    """The per-patient evidence keys, unwrapped, by pseudonym (an LRU of ``max_cached``).

    ``audit_key(pseudonym, candidate)`` is the store's: it returns the wrapped key stored for
    ``pseudonym``, storing ``candidate`` when there is none (atomic, so concurrent first
    entries agree). ``wrap_key`` is ``derive_box_key(ledger key, "evidence")``. Keys never
    change while they exist, so a cached one is used without a store round trip for at most
    ``max_age`` seconds of ``clock`` (monotonic): a key crypto-shredded by another process
    stops sealing this process's new entries within that time (entries it seals meanwhile
    cannot be opened once the key is gone). ``audit_key_get(pseudonym)`` (the store's, a
    read), when given, is asked first, so a refresh takes no write transaction."""

    def __init__(
        self,
        audit_key: Callable[[bytes, bytes], Awaitable[bytes]],
        wrap_key: bytes,
        *,
        max_cached: int = 100_000,
        max_age: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        audit_key_get: Callable[[bytes], Awaitable[bytes | None]] | None = None,
    ) -> None:
        if max_cached < 1 or max_age <= 0:
            raise ValueError("max_cached and max_age must be positive")
        self._audit_key = audit_key
        self._wrap_key = wrap_key
        self._get = audit_key_get
        self._cache: TtlCache[bytes, bytes] = TtlCache(max_cached, max_age, clock)

    def cached(self, pseudonym: bytes) -> bytes | None:
        """The key of ``pseudonym`` if cached and fresh (no I/O)."""
        return self._cache.get(pseudonym)

    async def key(self, pseudonym: bytes) -> bytes:
        """The patient key of ``pseudonym``, created on first use. Raises whatever the store
        raises, and :class:`EvidenceKeyError` when the stored key does not unwrap."""
        key = self.cached(pseudonym)
        if key is not None:
            return key
        wrapped = None if self._get is None else await self._get(pseudonym)
        if wrapped is None:
            wrapped = await self._audit_key(pseudonym, seal(self._wrap_key, new_box_key()))
        key = unwrap_key(self._wrap_key, wrapped)
        self._cache.put(pseudonym, key)
        return key

    def forget(self, pseudonym: bytes) -> None:
        """Drop a cached key (after a crypto-shred)."""
        self._cache.drop(pseudonym)


def unwrap_key(wrap_key: bytes, wrapped: bytes) -> bytes:
    """A stored patient key, unwrapped; :class:`EvidenceKeyError` when it does not open."""
    key = unseal(wrap_key, wrapped)
    if key is None or len(key) != _KEY_SIZE:
        raise EvidenceKeyError("a stored audit key does not unwrap under the ledger key")
    return key


class EvidenceStore(Protocol):
    """What :class:`EvidenceReader` reads of a ledger store."""

    async def leaves(self, start: int, end: int) -> list[bytes]: ...

    async def evidence(self, index: int) -> Evidence | None: ...

    async def audit_key_get(self, pseudonym: bytes) -> bytes | None: ...


@runtime_checkable
class EvidenceRanges(Protocol):
    """A store that reads the evidence of a range of leaves at once (the ledger stores:
    ``evidence_range`` of ``storage.ledger_base.LogStore``)."""

    async def evidence_range(self, start: int, end: int) -> dict[int, Evidence]: ...


def _runs(indexes: Sequence[int]) -> list[tuple[int, int]]:
    """``[low, high)`` ranges covering ``indexes``, one per run at most :data:`_GAP` apart."""
    wanted = sorted(set(indexes))
    runs: list[tuple[int, int]] = []
    for index in wanted:
        if runs and index - runs[-1][1] < _GAP:
            runs[-1] = (runs[-1][0], index + 1)
        else:
            runs.append((index, index + 1))
    return runs


class EvidenceReader:
    """Reads audit entries' facts back from ``store`` with the wrap key ``master_key``
    (``derive_box_key(ledger key, "evidence")``).

    :meth:`facts` is None for an entry that holds no sealed facts (a consent, an admin entry
    of another format, an audit entry written before this format: see :meth:`legacy_bundle`)
    and for a crypto-shredded one (its patient key is gone). It raises
    :class:`EvidenceKeyError` when a key exists but does not open the evidence (tampering, or
    a wrong ledger key) and :class:`ValueError` when what it opens is not valid facts."""

    def __init__(self, store: EvidenceStore, master_key: bytes) -> None:
        self._store = store
        self._master = master_key

    async def opening(self, index: int) -> Opening | None:
        """The :class:`Opening` of entry ``index``; None when it holds no sealed facts or its
        patient key was shredded."""
        stored = await self._store.evidence(index)
        if stored is None or not is_sealed(stored.data):
            return None
        leaves = await self._store.leaves(index, index + 1)
        if not leaves:
            return None
        pseudonym = decode_leaf(leaves[0]).pseudonym or NO_PATIENT
        wrapped = await self._store.audit_key_get(pseudonym)
        if wrapped is None:
            return None
        key = evidence_key(unwrap_key(self._master, wrapped), stored.salt)
        return Opening(stored.salt, stored.data, key)

    async def openings(self, indexes: Sequence[int]) -> list[Opening | None]:
        """:meth:`opening` of each of ``indexes``, in order, read together: one ``leaves``
        read per run of nearby indexes, the evidence likewise from a store that reads it in
        ranges (:class:`EvidenceRanges`: the ledger stores), else its reads handed to the
        store at once (at most :data:`_READS_AT_ONCE`), and each patient's key read and
        unwrapped once per call. Three reads an entry cost a bulk export about 480 us an entry
        on SQLite; a call is one snapshot of the keys, so a shred that lands during it shows
        from the next call on."""
        if not indexes:
            return []
        stored = await self._evidence(indexes)
        sealed = [i for i, e in zip(indexes, stored, strict=True) if e and is_sealed(e.data)]
        leaves = await self._leaves(sealed)
        keys: dict[bytes, bytes | None] = {}
        out: list[Opening | None] = []
        for index, evidence in zip(indexes, stored, strict=True):
            leaf = leaves.get(index)
            if evidence is None or leaf is None:
                out.append(None)
                continue
            pseudonym = decode_leaf(leaf).pseudonym or NO_PATIENT
            if pseudonym not in keys:
                wrapped = await self._store.audit_key_get(pseudonym)
                keys[pseudonym] = None if wrapped is None else unwrap_key(self._master, wrapped)
            patient_key = keys[pseudonym]
            out.append(
                None
                if patient_key is None
                else Opening(evidence.salt, evidence.data, evidence_key(patient_key, evidence.salt))
            )
        return out

    async def _evidence(self, indexes: Sequence[int]) -> list[Evidence | None]:
        store = self._store
        if isinstance(store, EvidenceRanges):
            found: dict[int, Evidence] = {}
            for low, high in _runs(indexes):
                found.update(await store.evidence_range(low, high))
            return [found.get(i) for i in indexes]
        stored: list[Evidence | None] = []
        for at in range(0, len(indexes), _READS_AT_ONCE):
            part = indexes[at : at + _READS_AT_ONCE]
            stored += await asyncio.gather(*(store.evidence(i) for i in part))
        return stored

    async def _leaves(self, indexes: Sequence[int]) -> dict[int, bytes]:
        out: dict[int, bytes] = {}
        for low, high in _runs(indexes):
            read = await self._store.leaves(low, high)
            out.update(zip(range(low, low + len(read)), read, strict=True))
        return out

    async def events_many(self, indexes: Sequence[int]) -> list[list[Json] | None]:
        """:meth:`events` of each of ``indexes``, in order, their sealed entries read as
        :meth:`openings` reads them (a bulk export's page)."""
        openings = await self.openings(indexes)
        out: list[list[Json] | None] = []
        for index, opening in zip(indexes, openings, strict=True):
            if opening is not None:
                out.append(render_events(open_entry(opening)))
            else:
                out.append(await self.events(index))  # shredded, legacy or not an audit entry
        return out

    async def facts(self, index: int) -> AuditFacts | None:
        """The facts of entry ``index`` (class docstring)."""
        opening = await self.opening(index)
        return None if opening is None else open_entry(opening)

    async def legacy_bundle(self, index: int) -> Json | None:
        """The canonical JSON Bundle of AuditEvents an entry written before sealed facts
        holds; None for any other entry (and for evidence that is not a JSON object)."""
        stored = await self._store.evidence(index)
        if stored is None or not stored.data.startswith(b"{"):
            return None
        try:
            bundle: Any = jsoncodec.decode(stored.data, max_depth=STORED_MAX_JSON_DEPTH)
        except jsoncodec.DecodeError:
            return None
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            return None
        return bundle

    async def events(self, index: int) -> list[Json] | None:
        """The AuditEvents of entry ``index``: rendered from its facts, or, for an entry
        written before sealed facts, as its Bundle stored them; None when there are none."""
        facts = await self.facts(index)
        if facts is not None:
            return render_events(facts)
        bundle = await self.legacy_bundle(index)
        if bundle is None:
            return None
        entries = bundle.get("entry")
        if not isinstance(entries, list):
            return None
        return [e["resource"] for e in entries if isinstance(e, dict) and "resource" in e]
