"""Who made a consent API attempt about another patient: the caller's tag, resolved.

A patient caller's attempt names none of their accounts (:func:`~middleware.consent.access.
performer`): its evidence is plain text on a chain a shred of the caller does not reach. When
patient A's token tries to read or change patient B's consents (refused), the attempt goes on
B's chain, so B's trail and the compliance officer must still learn that A tried: the
attempt's principal carries A's *tag* (``patientTag``, hex, :func:`caller_tag`), 16 bytes
derived from A's audit evidence key (the per-patient key of A's chain,
:mod:`middleware.audit.evidence`), which say nothing by themselves.

Why not A's chain pseudonym: ``consentry audit shred`` of A keeps a tombstone linking A's keyed
lookup to that pseudonym (for A's accounting), so anyone holding the ledger key could test
candidate patient ids against it and recover "A probed B" from an attempt naming it. The tag
is computed from the key the shred deletes: while A exists, :class:`CallerResolver` recomputes
a candidate's tag from their current chain's key and names them when it matches; once the key
is gone nobody can compute A's tag, and the attempt holds a value linked to no identity and to
no chain. The same caller's attempts carry the same tag, so they stay grouped ("one unknown
patient tried three times") after the shred.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Final

from middleware.consent.access import CALLER_TAG
from middleware.consent.records import ATTEMPT_TYPE, consent_keys
from middleware.fhir import jsoncodec
from middleware.fhir.limits import STORED_MAX_JSON_DEPTH
from middleware.ledger.leaf import PSEUDONYM_SIZE
from middleware.ledger.signing import evidence_key
from middleware.storage.consent_base import ConsentStore
from middleware.storage.ledger_base import LogStore

__all__ = ["TAG_LABEL", "CallerResolver", "attempt_tag", "caller_tag"]

#: What the tag is derived over under the caller's evidence key: 31 bytes, so never an entry's
#: salt (``SALT_SIZE``, 32): the tag is no entry's evidence key, and opens nothing.
TAG_LABEL: Final = b"consentry/consent/caller-tag/v1"

#: A chain's evidence key, unwrapped; None when it has none (never had, or shredded).
KeyOf = Callable[[bytes], Awaitable[bytes | None]]


def caller_tag(patient_key: bytes) -> bytes:
    """The tag an attempt names its patient caller by: the first 16 bytes of the evidence key
    of :data:`TAG_LABEL` under the caller's 32-byte audit evidence key (keyed BLAKE2b, a PRF:
    :func:`~middleware.ledger.signing.evidence_key`). Computable only with that key, which
    the caller's crypto-shred deletes. Pure."""
    return evidence_key(patient_key, TAG_LABEL)[:PSEUDONYM_SIZE]


def attempt_tag(evidence: bytes) -> bytes | None:
    """The caller's tag an attempt's evidence names (``principal.patientTag``), None when it
    is not an attempt's or names none (the caller is not a patient, or the attempt is on
    their own chain, or it was written before tags)."""
    try:
        record = jsoncodec.decode(evidence, max_depth=STORED_MAX_JSON_DEPTH)
    except jsoncodec.DecodeError:
        return None
    if not isinstance(record, dict) or record.get("type") != ATTEMPT_TYPE:
        return None
    principal = record.get("principal")
    value = principal.get(CALLER_TAG) if isinstance(principal, dict) else None
    if not isinstance(value, str) or len(value) != 2 * PSEUDONYM_SIZE:
        return None
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None


class CallerResolver:
    """Names the patient behind a tag, for the officer's tools (never a request path).

    ``key_of`` gives a chain's unwrapped evidence key. A candidate patient is tried by
    recomputing their tag from their *current* chain (the pseudonym table) and its key: a
    patient the shred forgot has no chain, and their old chain no key, so they are never
    named again. Candidates: ``candidates`` (``Patient/<id>``, the suspects the officer
    names) first, then every patient a consent entry of the ledger names, newest first, read
    lazily and remembered for the resolver's life (one listing: each patient's tag is
    computed once). A caller with no consent on the ledger is found only as a candidate."""

    def __init__(
        self,
        log: LogStore,
        consents: ConsentStore,
        key_of: KeyOf,
        candidates: Iterable[str] = (),
    ) -> None:
        self._log = log
        self._consents = consents
        self._key_of = key_of
        self._queue = list(reversed(list(candidates)))  # popped from the end: in order
        self._indexes: list[int] | None = None  # consent entries not read yet, oldest first
        self._known: dict[bytes, str] = {}
        self._tried: set[str] = set()

    async def resolve(self, tag: bytes) -> str | None:
        """``Patient/<id>`` whose tag is ``tag``; None when no candidate's is (unknown, or
        crypto-shredded)."""
        if tag in self._known:
            return self._known[tag]
        while (patient := await self._next()) is not None:
            found = await self._tag_of(patient)
            if found is not None:
                self._known.setdefault(found, patient)
                if found == tag:
                    return patient
        return None

    async def _next(self) -> str | None:
        """The next candidate not tried yet, None when there is none left."""
        while self._queue:
            patient = self._queue.pop()
            if patient not in self._tried:
                self._tried.add(patient)
                return patient
        if self._indexes is None:
            self._indexes = await self._log.consents_after(-1)
        while self._indexes:
            stored = await self._log.evidence(self._indexes.pop())  # newest first
            if stored is None:
                continue  # shredded or removed
            try:
                keys = consent_keys(jsoncodec.decode(stored.data, max_depth=STORED_MAX_JSON_DEPTH))
            except jsoncodec.DecodeError:
                continue
            if keys is not None and keys[2] not in self._tried:
                self._tried.add(keys[2])
                return keys[2]
        return None

    async def _tag_of(self, patient: str) -> bytes | None:
        chain = await self._consents.pseudonym(patient)
        key = None if chain is None else await self._key_of(chain)
        return None if key is None else caller_tag(key)
