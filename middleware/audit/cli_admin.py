"""``consentry audit reindex`` and ``consentry audit shred``.

``reindex`` rebuilds the audit index from the ledger (the index is derived data): it reads the
leaves and evidence in ranges (``read_ranges``: memory stays bounded whatever the ledger's
size, the next range is read while this one is opened), and for every entry holding
sealed audit facts opens them with the patient's key (one unwrap per patient) and upserts
``row_of(facts)`` in batches (``store.reindex``); an entry whose patient key is
gone gets its shredded row (what its leaf says). An audit entry written before sealed facts
(its evidence a plain BALP Bundle) gets the row :func:`~middleware.audit.legacy.legacy_row`
reads from its events. Other entries (consents, admin, key events) have no index row. It
reports rows, legacy rows, shredded rows, the entries it could not index (``unreadable``: the
patient's key does not open the evidence, or legacy evidence is no Bundle of AuditEvents;
``malformed``: the key opens it, but to facts that are not valid or give no row) and entries
per second.

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
chains (they name the caller: ``store.shred_entries``), and last forgets the
patient's pseudonym in the consent store's pseudonym table (``forget``, on the same
``--store``), so their next exchange starts a new chain. The leaves, commitments and proofs
still verify; the entry shows, on the chain, when the shred happened, and tells a consent
entry the shred emptied from a damaged one (:mod:`middleware.consent.shredded`).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
from collections.abc import Callable, Sequence
from typing import TextIO

from middleware.audit.cli_common import Usage, all_rows, now_us, opened, print_json, read_key
from middleware.audit.evidence import (
    EVIDENCE_PURPOSE,
    NO_PATIENT,
    EvidenceKeyError,
    is_sealed,
    unwrap_key,
)
from middleware.audit.export import shredded_row
from middleware.audit.facts_row import open_row
from middleware.audit.legacy import legacy_row
from middleware.audit.progress import Progress
from middleware.audit.ranges import read_ranges
from middleware.audit.row import AuditQuery, AuditRow
from middleware.consent.shredded import SHRED_TYPE, is_shred_evidence
from middleware.ledger.entry import Evidence, NewEntry
from middleware.ledger.leaf import EntryKind, LeafFields, decode_leaf, leaf_fields
from middleware.ledger.signing import derive_box_key, evidence_keyer
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.consent_base import LOOKUP_PURPOSE, ConsentStore, lookup_of
from middleware.storage.consent_open import open_consent_store
from middleware.storage.ledger_base import LogStore

__all__ = ["SHRED_TYPE", "reindex", "shred"]

_CHUNK = 4096
_AUDIT_KINDS = frozenset(
    {EntryKind.ACCESS_DECISION, EntryKind.ACCESS_OUTCOME, EntryKind.DISCLOSURE}
)
_CONSENT_KINDS = frozenset({EntryKind.CONSENT, EntryKind.CONSENT_REVOKE})


def reindex(args: argparse.Namespace, out: TextIO) -> int:
    if args.batch < 1:
        raise Usage("--batch must be positive")
    secret = read_key(args.key_file).data_secret
    wrap = derive_box_key(secret, EVIDENCE_PURPOSE)
    lookup = derive_box_key(secret, LOOKUP_PURPOSE)

    async def run() -> dict[str, object]:
        async with opened(args) as store:
            chains: dict[str, frozenset[bytes]] = {}

            async def shredded_already(row: AuditRow) -> AuditRow:
                """A legacy row of a chain a shred tombstoned (found by the shred's link)
                stays shredded: its plain evidence must not come back into the index."""
                if row.patient is None:
                    return row
                if row.patient not in chains:
                    link = lookup_of(lookup, row.patient)
                    chains[row.patient] = frozenset(await store.shredded_chains(link))
                return row.shred() if row.pseudonym in chains[row.patient] else row

            size = await store.size()
            keys: dict[bytes, Callable[[bytes], bytes] | None] = {}  # entry keys by salt
            rows: list[AuditRow] = []
            counts = {"rows": 0, "legacy": 0, "shredded": 0, "unreadable": 0, "malformed": 0}
            with Progress("reindex", total=size, unit="entries") as progress:
                async for start, leaves, evidence in read_ranges(store, size, _CHUNK):
                    for offset, data in enumerate(leaves):
                        index = start + offset
                        stored = evidence.get(index)
                        if stored is None:
                            continue
                        if not is_sealed(stored.data):
                            row = _legacy(index, data, stored, counts)
                            if row is not None:
                                rows.append(await shredded_already(row))
                            continue
                        leaf = leaf_fields(data)  # decode_leaf's checks, without the Leaf
                        pseudonym = leaf.pseudonym or NO_PATIENT
                        if pseudonym not in keys:
                            wrapped = await store.audit_key_get(pseudonym)
                            keys[pseudonym] = (
                                None
                                if wrapped is None
                                else evidence_keyer(unwrap_key(wrap, wrapped))
                            )
                        row = _row(index, data, leaf, stored, keys[pseudonym], counts=counts)
                        if row is not None:
                            rows.append(row)
                        if len(rows) >= args.batch:
                            await store.reindex(rows)
                            rows = []
                    progress.update(len(leaves))
                if rows:
                    await store.reindex(rows)
                return {
                    "entries": size,
                    **counts,
                    "seconds": round(progress.seconds, 3),
                    "entries_per_second": round(progress.rate),
                }

    print_json(out, asyncio.run(run()))
    return 0


def _legacy(index: int, data: bytes, stored: Evidence, counts: dict[str, int]) -> AuditRow | None:
    """The row of an audit entry written before sealed facts (its evidence a plain BALP
    Bundle, :mod:`middleware.audit.legacy`); None for the other entries (consents, admin, key
    events) and for evidence that is not a Bundle of AuditEvents."""
    if not stored.data.startswith(b"{"):
        return None
    leaf = decode_leaf(data)
    if leaf.kind not in _AUDIT_KINDS:
        return None
    try:
        row = legacy_row(
            stored.data,
            recorded_us=leaf.recorded_us,
            kind=int(leaf.kind),
            flags=int(leaf.flags),
            pseudonym=leaf.pseudonym,
            index=index,
        )
    except ValueError:
        counts["unreadable"] += 1
        return None
    counts["legacy"] += 1
    return row


def _row(
    index: int,
    data: bytes,
    leaf: LeafFields,
    stored: Evidence,
    entry_key_of: Callable[[bytes], bytes] | None,
    *,
    counts: dict[str, int],
) -> AuditRow | None:
    """The index row of entry ``index`` (its leaf ``data`` and fields, sealed facts in
    ``stored``, opened by the key ``entry_key_of(salt)``: ``signing.evidence_keyer`` of the
    patient's key), or None (counted ``unreadable``) when the key does not open it, or
    (counted ``malformed``) when it opens to facts that are not valid or give no row; the
    shredded row when the patient key is gone (``entry_key_of`` None)."""
    if entry_key_of is None:  # crypto-shredded: what the leaf says
        counts["shredded"] += 1
        return shredded_row(index, decode_leaf(data))
    try:
        entry_key = entry_key_of(stored.salt)
        # row_of(open_entry(...)) without the facts' dataclasses: the same row, the same
        # errors (facts_row).
        row = open_row(
            entry_key, stored.data, kind=leaf.kind, flags=leaf.flags, pseudonym=leaf.pseudonym,
            index=index,
        )  # fmt: skip
    except EvidenceKeyError:  # not this entry's key, or a changed byte
        counts["unreadable"] += 1
        return None
    except ValueError:  # sealed by the gateway's key, yet no valid facts or no row of them
        counts["malformed"] += 1
        return None
    counts["rows"] += 1
    return row


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
    choices: the ``consent`` and ``consent-revoke`` entries (the Consent in the clear), and
    the ``admin`` entries holding evidence other than a shred's (the consent API's attempts,
    which name the caller: for a patient, the patient's own account); each list ascending."""
    consents: list[int] = []
    admin: list[int] = []
    for pseudonym in pseudonyms:
        for index in await store.chain(pseudonym):
            (data,) = await store.leaves(index, index + 1)
            kind = decode_leaf(data).kind
            if kind in _CONSENT_KINDS:
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
                # The patient's Consents are PHI in the clear: the consent store's versions
                # (erased first, which names their ledger indexes) and the evidence of the
                # consent entries on the chains or named by those versions; so are the
                # consent API's attempts on the chains (they name the caller). Should the run
                # stop in between, running it again finishes (the tombstones find the
                # chains). The admin entries above stay: they tell a registry these consent
                # entries were shredded, not damaged (consent.shredded).
                erased = await consents.erase(args.patient)
                on_chains, attempts = await _plain_entries(store, pseudonyms)
                held = sorted({*on_chains, *erased})
                consent_removed = await store.shred_entries(held) if held else 0
                admin_removed = await store.shred_entries(attempts) if attempts else 0
            # Unlink the patient from the shredded chains: their next exchange gets a fresh
            # pseudonym (gateways pick it up once their pseudonym cache expires; until then
            # the store writes their rows shredded and keeps no key for them).
            forgotten = await consents.forget(args.patient)
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
        }

    print_json(out, asyncio.run(run()))
    return 0
