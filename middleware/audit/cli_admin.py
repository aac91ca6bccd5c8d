"""``consentry audit reindex`` and ``consentry audit shred``.

``reindex`` rebuilds the audit index from the ledger (the index is derived data;
:func:`middleware.audit.reindex.rebuild` does the work). It reports rows, legacy rows,
shredded rows, the entries it could not index (``unreadable``: the patient's key does not open
the evidence, or legacy evidence is no Bundle of AuditEvents; ``malformed``: the key opens it,
but to facts that are not valid or give no row) and entries per second.

``shred`` is a governed admin action over every pseudonym chain of the patient (each
pseudonym of the index rows naming them, and the pseudonym table's current one: a patient
forgotten once has several). It first appends an ``ADMIN`` entry (kind 6) on each chain whose
evidence says what was done, why and by whom (plain canonical
JSON, no PHI: the patient is named only by the leaf's pseudonym), then deletes the patient's
evidence key, records the pseudonym as shredded and shreds their index rows
(``store.shred``), removes the evidence of their entries written before sealed facts (plain
BALP Bundles, which no key deletion can make unreadable; ``store.shred_entries``), erases their
Consents, which are PHI in the clear too: the consent store's versions of the patient
(``ConsentStore.erase``), the evidence of the ``consent`` and ``consent-revoke`` entries on
their chains or named by those versions and of the consent API's attempt entries on their
chains (``store.shred_entries``), after it has forgotten the patient's pseudonym in the
consent store's pseudonym table (``forget``, on the same ``--store``: their next exchange or
consent starts a new chain, so none lands on a chain already swept). Last it appends the
marker, a ``consent-revoke`` entry on the last chain with the same evidence, which moves
the ledger's consent position so running gateways recompile the patient's policies at their
next request. The leaves, commitments and proofs still verify; the admin entry shows, on
the chain, when the shred happened, and tells a consent entry the shred emptied from a
damaged one (:mod:`middleware.consent.shredded`).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
from collections.abc import Sequence
from typing import TextIO

from middleware.audit.cli_common import Usage, all_rows, now_us, opened, print_json, read_key
from middleware.audit.evidence import EVIDENCE_PURPOSE, is_sealed
from middleware.audit.progress import Progress
from middleware.audit.reindex import CHUNK, rebuild
from middleware.audit.row import AuditQuery
from middleware.consent.shredded import SHRED_TYPE, is_shred_evidence, is_shred_marker
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryKind, decode_leaf
from middleware.ledger.signing import derive_box_key
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.consent_base import LOOKUP_PURPOSE, ConsentStore, lookup_of
from middleware.storage.consent_open import open_consent_store
from middleware.storage.ledger_base import LogStore

__all__ = ["SHRED_TYPE", "reindex", "shred"]

_AUDIT_KINDS = frozenset(
    {EntryKind.ACCESS_DECISION, EntryKind.ACCESS_OUTCOME, EntryKind.DISCLOSURE}
)
_CONSENT_KINDS = frozenset({EntryKind.CONSENT, EntryKind.CONSENT_REVOKE})
#: Leaves read at once by reindex (memory stays bounded; tests make it small).
_CHUNK = CHUNK


def reindex(args: argparse.Namespace, out: TextIO) -> int:
    if args.batch < 1:
        raise Usage("--batch must be positive")
    secret = read_key(args.key_file).data_secret
    wrap = derive_box_key(secret, EVIDENCE_PURPOSE)
    lookup = derive_box_key(secret, LOOKUP_PURPOSE)

    async def run() -> dict[str, object]:
        async with opened(args) as store:
            size = await store.size()
            with Progress("reindex", total=size, unit="entries") as progress:
                counts = await rebuild(
                    store,
                    size,
                    wrap=wrap,
                    lookup=lookup,
                    batch=args.batch,
                    progress=progress,
                    chunk=_CHUNK,
                )
                return {
                    "entries": size,
                    **counts,
                    "seconds": round(progress.seconds, 3),
                    "entries_per_second": round(progress.rate),
                }

    print_json(out, asyncio.run(run()))
    return 0


async def _pseudonyms(
    store: LogStore, consents: ConsentStore, patient: str, link: bytes
) -> list[bytes]:
    """Every pseudonym ``patient`` has had: those an earlier shred tombstoned under the
    patient's ``link`` (their legacy evidence may still be there), those of the index rows
    naming them (a patient forgotten once, or a pseudonym table rebuilt, has several chains),
    in ledger order, then the pseudonym table's current one."""
    found: dict[bytes, None] = dict.fromkeys(sorted(await store.shredded_chains(link)))
    for row in await all_rows(store, AuditQuery(patient=patient, sort="date")):
        if row.pseudonym is not None:
            found[row.pseudonym] = None
    current = await consents.pseudonym(patient)
    if current is not None:
        found[current] = None
    return list(found)


async def _legacy_entries(store: LogStore, pseudonyms: Sequence[bytes]) -> list[int]:
    """The audit entries on ``pseudonyms``' chains whose evidence is from before sealed facts
    (not sealed: a plain BALP Bundle); consents and admin entries on the chains are kept."""
    found: list[int] = []
    for pseudonym in pseudonyms:
        for index in await store.chain(pseudonym):
            stored = await store.evidence(index)
            if stored is None or is_sealed(stored.data):
                continue
            (data,) = await store.leaves(index, index + 1)
            if decode_leaf(data).kind in _AUDIT_KINDS:
                found.append(index)
    return sorted(found)


async def _plain_entries(
    store: LogStore, pseudonyms: Sequence[bytes]
) -> tuple[list[int], list[int]]:
    """The entries on ``pseudonyms``' chains whose plain evidence names the patient or their
    choices: the ``consent`` and ``consent-revoke`` entries (the Consent in the clear; not an
    earlier run's marker, which holds none), and the ``admin`` entries holding evidence other
    than a shred's (the consent API's attempts); each list ascending."""
    consents: list[int] = []
    admin: list[int] = []
    for pseudonym in pseudonyms:
        for index in await store.chain(pseudonym):
            (data,) = await store.leaves(index, index + 1)
            leaf = decode_leaf(data)
            kind = leaf.kind
            if kind in _CONSENT_KINDS:
                stored = await store.evidence(index)
                if stored is None or not is_shred_marker(leaf, stored.data):
                    consents.append(index)
            elif kind is EntryKind.ADMIN:
                stored = await store.evidence(index)
                if stored is not None and not is_shred_evidence(stored.data):
                    admin.append(index)
    return sorted(consents), sorted(admin)


def shred(args: argparse.Namespace, out: TextIO) -> int:
    ledger_key = read_key(args.key_file)
    operator = args.operator or getpass.getuser()
    if not args.reason.strip():
        raise Usage("--reason must say why")

    async def run() -> dict[str, object]:
        lookup = derive_box_key(ledger_key.data_secret, LOOKUP_PURPOSE)
        consents = await open_consent_store(args.store, lookup_key=lookup, schema=args.schema)
        try:
            async with opened(args) as store:
                link = lookup_of(lookup, args.patient)
                pseudonyms = await _pseudonyms(store, consents, args.patient, link)
                if not pseudonyms:
                    raise Usage(f"neither the audit index nor the pseudonyms know {args.patient}")
                evidence = json.dumps(
                    {"type": SHRED_TYPE, "reason": args.reason, "operator": operator},
                    sort_keys=True,
                    separators=(",", ":"),
                    ensure_ascii=False,
                ).encode("utf-8")
                # One admin entry on each of the patient's chains, in one batch: each chain
                # shows when it was shredded.
                entries = [
                    NewEntry.create(EntryKind.ADMIN, evidence, recorded_us=now_us(), pseudonym=p)
                    for p in pseudonyms
                ]
                sign = checkpoint_signer(ledger_key.key, ledger_key.origin)
                results = await store.append(entries, sign=sign)
                # The tombstone keeps the keyed digest of the patient (``link``: the accounting
                # finds the shredded period by it; middleware.audit.shredded).
                shredded = 0
                for pseudonym in pseudonyms:
                    shredded += await store.shred(pseudonym, link=link)
                # Entries from before sealed facts hold their PHI in plain text: no key to
                # delete, so their evidence goes (the leaves and proofs stay).
                legacy = await _legacy_entries(store, pseudonyms)
                removed = await store.shred_entries(legacy) if legacy else 0
                # Unlink the patient from the shredded chains before their Consents are
                # erased: a consent written from now on goes on a fresh chain, never on one
                # this run has already swept (gateways' audit pseudonym cache expires within
                # a minute; until then the store writes their rows shredded, keeps no key).
                forgotten = await consents.forget(args.patient)
                # The patient's Consents are PHI in the clear: the consent store's versions
                # (erased first, which names their ledger indexes) and the evidence of the
                # consent entries on the chains or named by those versions; so are the
                # consent API's attempts on the chains. Should the run stop in between,
                # running it again finishes (the tombstones find the chains). The admin
                # entries above stay: they tell a registry these consent entries were
                # shredded, not damaged (consent.shredded).
                erased = await consents.erase(args.patient)
                on_chains, attempts = await _plain_entries(store, pseudonyms)
                held = sorted({*on_chains, *erased})
                consent_removed = await store.shred_entries(held) if held else 0
                admin_removed = await store.shred_entries(attempts) if attempts else 0
                # Last, the marker moves the consent position every registry reads before
                # deciding: running gateways recompile the patient (erased_policy) at their
                # next request instead of enforcing the erased consents from memory.
                marker = NewEntry.create(
                    EntryKind.CONSENT_REVOKE,
                    evidence,
                    recorded_us=now_us(),
                    pseudonym=pseudonyms[-1],
                )
                (marked,) = await store.append([marker], sign=sign)
        finally:
            await consents.close()
        return {
            "patient": args.patient,
            "admin_entry": results[0].index,
            "admin_entries": [r.index for r in results],
            "chains": len(pseudonyms),
            "rows": shredded,
            "legacy_evidence_removed": removed,
            "consent_versions_erased": len(erased),
            "consent_evidence_removed": consent_removed,
            "admin_evidence_removed": admin_removed,
            "pseudonym_forgotten": forgotten,
            "consent_marker": marked.index,
        }

    print_json(out, asyncio.run(run()))
    return 0
