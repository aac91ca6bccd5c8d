"""The verifier's checks of leaves and what is stored beside them (pure, no crypto library).

Each function adds to a :class:`~middleware.ledger.findings.Findings` and returns a count for
the report. :func:`check_leaves` reads the fields it needs with one ``struct.iter_unpack``
pass and validates tag, version, kind and flag bytes as byte-string columns; only if a column
is wrong does it decode every leaf (``decode_leaf``) to say which and why.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Iterable, Mapping, Sequence

from middleware.ledger.entry import Evidence
from middleware.ledger.errors import MalformedError
from middleware.ledger.findings import Findings
from middleware.ledger.keyevent import parse_key_event
from middleware.ledger.leaf import LEAF_SIZE, NO_INDEX, EntryKind, commit_evidence, decode_leaf
from middleware.ledger.tree import MerkleLevels
from middleware.ledger.trust import TrustPolicy

__all__ = ["check_evidence", "check_key_events", "check_leaves", "check_storage"]

_FIELDS = struct.Struct(">16x16sQQ32x")  # pseudonym, previous, consent (layout in leaf.py)
_NO_PATIENT = bytes(16)
_KEY_EVENT = bytes([EntryKind.KEY_EVENT])


def check_storage(
    out: Findings,
    hashes: list[bytes],
    *,
    stored: Sequence[bytes] | None,
    indexes: Sequence[int] | None,
    state: tuple[int, bytes] | None,
    tree: MerkleLevels,
) -> None:
    n = len(hashes)
    if indexes is not None and list(indexes) != list(range(n)):
        at = next((i for i, got in enumerate(indexes) if got != i), len(indexes))
        out.add(
            "index-gap",
            "stored leaf indexes are not 0, 1, 2, ...",
            index=at,
            expected=at,
            computed=indexes[at],
        )
    if stored is not None and list(stored) != hashes:
        for i, (want, got) in enumerate(zip(hashes, stored, strict=False)):
            if want != got:
                out.add(
                    "leaf-hash",
                    "stored leaf hash differs from the leaf's hash",
                    index=i,
                    expected=got,
                    computed=want,
                )
    if state is not None:
        size, root = state
        if size != n or not hmac.compare_digest(root, tree.root()):
            out.add(
                "state",
                "recorded tree size and root (state row, manifest) differ from the leaves",
                size=size,
                expected=root,
                computed=tree.root(),
            )


def check_leaves(out: Findings, leaves: Sequence[bytes]) -> tuple[int, bytes]:
    """Leaf format, chains and consent references; returns (chains, kind byte per leaf)."""
    n = len(leaves)
    if set(map(len, leaves)) <= {LEAF_SIZE}:
        buf = b"".join(leaves)
        kinds = buf[5::LEAF_SIZE]
        well_formed = (
            buf[0::LEAF_SIZE] == b"C" * n
            and buf[1::LEAF_SIZE] == b"S" * n
            and buf[2::LEAF_SIZE] == b"R" * n
            and buf[3::LEAF_SIZE] == b"Y" * n
            and buf[4::LEAF_SIZE] == b"\x01" * n
            and not kinds.translate(None, bytes(EntryKind))
            and buf[6::LEAF_SIZE] == bytes(n)
            and not buf[7::LEAF_SIZE].translate(None, bytes(range(8)))
        )
        rows: Iterable[tuple[bytes, int, int]] = _FIELDS.iter_unpack(buf)
    else:
        well_formed, kinds = False, bytes(x[5] if len(x) == LEAF_SIZE else 0 for x in leaves)
        rows = [
            _FIELDS.unpack(x) if len(x) == LEAF_SIZE else (_NO_PATIENT, NO_INDEX, NO_INDEX)
            for x in leaves
        ]
    if not well_formed:  # the slow path, only for a log that has a malformed leaf
        good = bytearray(n)
        for i, leaf in enumerate(leaves):
            try:
                decode_leaf(leaf)
                good[i] = 1
            except MalformedError as exc:
                out.add("leaf-malformed", f"leaf {i}: {exc}", index=i)
        kinds = bytes(k if g else 0 for k, g in zip(kinds, good, strict=True))
    last: dict[bytes, int] = {}
    for i, (pseudonym, previous, consent) in enumerate(rows):
        if consent != NO_INDEX and consent >= i:
            out.add(
                "consent-ref",
                "a decision relies on a later consent entry",
                index=i,
                expected=f"< {i}",
                computed=consent,
            )
        if pseudonym == _NO_PATIENT:
            if previous != NO_INDEX and well_formed:  # else decode_leaf has reported it
                out.add("leaf-malformed", f"leaf {i}: a chain link without a pseudonym", index=i)
            continue
        want = last.get(pseudonym, NO_INDEX)
        if previous != want:
            out.add(
                "chain",
                "previous is not the patient's latest earlier entry",
                index=i,
                expected=_index(want),
                computed=_index(previous),
            )
        last[pseudonym] = i
    return len(last), kinds


def check_evidence(out: Findings, leaves: Sequence[bytes], evidence: Mapping[int, Evidence]) -> int:
    for i, item in sorted(evidence.items()):
        if not 0 <= i < len(leaves) or len(leaves[i]) != LEAF_SIZE:
            out.add("evidence", "evidence for a leaf the log does not have", index=i)
            continue
        commitment = leaves[i][48:]
        try:
            computed = commit_evidence(item.salt, item.data)
        except MalformedError as exc:
            out.add("evidence", f"evidence of leaf {i}: {exc}", index=i)
            continue
        if not hmac.compare_digest(commitment, computed):
            out.add(
                "evidence",
                "evidence does not match the leaf's commitment",
                index=i,
                expected=commitment,
                computed=computed,
            )
    return len(evidence)


def check_key_events(
    out: Findings, kinds: bytes, evidence: Mapping[int, Evidence], policy: TrustPolicy
) -> int:
    count, i = 0, kinds.find(_KEY_EVENT)
    while i >= 0:
        count += 1
        _check_key_event(out, i, evidence.get(i), policy)
        i = kinds.find(_KEY_EVENT, i + 1)
    return count


def _check_key_event(out: Findings, i: int, item: Evidence | None, policy: TrustPolicy) -> None:
    if item is None:
        out.add("key-event", "key-event evidence is missing (exports always carry it)", index=i)
        return
    try:
        event = parse_key_event(item.data)
    except MalformedError as exc:
        out.add("key-event", f"key-event evidence: {exc}", index=i)
        return
    if not event.placed_at(i):
        out.add(
            "key-event",
            "key event names sizes that do not fit its position",
            index=i,
            expected=i + 1,
            computed=event.retired_not_after,
        )
    if event.origin != policy.origin:
        out.add(
            "key-event",
            "key event for another log",
            index=i,
            expected=policy.origin,
            computed=event.origin,
        )
    retired, successor = policy.find(event.retired), policy.find(event.successor)
    if retired is None or retired.not_after != event.retired_not_after:
        out.add(
            "key-event",
            "trust policy does not retire the key where the log does",
            index=i,
            expected=event.retired_not_after,
            computed=None if retired is None else retired.window(),
        )
    if successor is None or successor.not_before != event.successor_not_before:
        out.add(
            "key-event",
            "trust policy does not start the successor where the log does",
            index=i,
            expected=event.successor_not_before,
            computed=None if successor is None else successor.window(),
        )


def _index(value: int) -> int | None:
    return None if value == NO_INDEX else value
