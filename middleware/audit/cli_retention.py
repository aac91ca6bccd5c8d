"""``consentry audit retention [--apply]``: remove the evidence of entries past their retention.

Each audit kind keeps its evidence for the years the gateway's settings give it
(``audit_retention_years``, ``audit_retention_by_kind``; :mod:`middleware.audit.retention`,
six years by default). Without ``--apply`` the command only lists, per kind, the cut-off time
and how many entries still holding evidence are older (a dry run). With ``--apply`` it first
appends an ``ADMIN`` entry (kind 6, no pseudonym) whose plain canonical JSON evidence says
what is removed: the counts and cut-offs per kind, the operator, no PHI; then removes that
evidence (``store.shred_entries``, in chunks), which also shreds the entries' index rows.
The evidence of a suspension whose specified end is still ahead (and of its lifts) is kept
(:func:`middleware.audit.suspensions.still_needed`), and so is a shred's record, forever: it
tells the consent registry that the consent entries of its chain lost their evidence to the
shred, not to damage (:mod:`middleware.consent.shredded`). The ledger is read in ranges
(``read_ranges``): only the due indexes are kept in memory.
Leaves, commitments and checkpoints stay: ``consentry ledger verify`` still passes, and a
removed entry's ciphertext is simply absent from exports.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
from typing import Final, TextIO

from middleware.audit.cli_common import now_us, opened, print_json, read_key
from middleware.audit.ranges import read_ranges
from middleware.audit.reports import format_time
from middleware.audit.retention import RetentionRules, expired
from middleware.audit.suspensions import SuspensionLog
from middleware.consent.shredded import is_shred_evidence
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryKind, decode_leaf
from middleware.ledger.writer import checkpoint_signer
from middleware.settings import load_settings
from middleware.storage.ledger_base import LogStore

__all__ = ["RETENTION_TYPE", "retention"]

#: The ``type`` of a retention run's admin evidence.
RETENTION_TYPE: Final = "consentry/audit-retention"
_CHUNK: Final = 2048


def _rules(args: argparse.Namespace) -> RetentionRules:
    if args.config is None:
        return RetentionRules()
    return load_settings(config_file=args.config, env=os.environ).retention_rules


def retention(args: argparse.Namespace, out: TextIO) -> int:
    rules = _rules(args)
    as_of = now_us()
    operator = args.operator or getpass.getuser()
    ledger_key = read_key(args.key_file) if args.apply else None

    async def run() -> dict[str, object]:
        async with opened(args) as store:
            # Range by range: only the due indexes stay in memory, never the evidence.
            due: list[int] = []
            counts = {kind.label: 0 for kind in rules.cutoffs(as_of)}
            async for start, leaves, evidence in read_ranges(store, await store.size(), _CHUNK):
                kept: list[tuple[int, EntryKind, int]] = []
                for index in evidence:  # entries still holding evidence
                    leaf = decode_leaf(leaves[index - start])
                    if leaf.kind is EntryKind.ADMIN and is_shred_evidence(evidence[index].data):
                        continue  # a shred's record never expires: consent.shredded reads it
                    kept.append((index, leaf.kind, leaf.recorded_us))
                found = expired(kept, rules, as_of_us=as_of)
                kinds = {index: kind for index, kind, _ in kept}
                for index in found:
                    counts[kinds[index].label] += 1
                due += found
            # A suspension (164.528(a)(2)) keeps its evidence while the time the agency gave
            # has not run out, whatever the admin retention says.
            keep = await SuspensionLog(step=_CHUNK).still_needed(store, as_of_us=as_of)
            if keep & set(due):
                counts[EntryKind.ADMIN.label] -= len(keep & set(due))
                due = [index for index in due if index not in keep]
            return await _apply(store, due, counts)

    async def _apply(store: LogStore, due: list[int], counts: dict[str, int]) -> dict[str, object]:
        cutoffs = {kind.label: format_time(at) for kind, at in rules.cutoffs(as_of).items()}
        report: dict[str, object] = {
            "apply": bool(args.apply),
            "cutoffs": cutoffs,
            "entries": counts,
            "total": len(due),
        }
        if not args.apply or not due:
            return {**report, "removed": 0, "admin_entry": None}
        assert ledger_key is not None
        evidence = json.dumps(
            {"type": RETENTION_TYPE, "cutoffs": cutoffs, "entries": counts, "operator": operator},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode("utf-8")
        entry = NewEntry.create(EntryKind.ADMIN, evidence, recorded_us=now_us())
        sign = checkpoint_signer(ledger_key.key, ledger_key.origin)
        # The decision is on the ledger before any evidence goes.
        (result,) = await store.append([entry], sign=sign)
        removed = 0
        for start in range(0, len(due), _CHUNK):
            removed += await store.shred_entries(due[start : start + _CHUNK])
        return {**report, "removed": removed, "admin_entry": result.index}

    print_json(out, asyncio.run(run()))
    return 0
