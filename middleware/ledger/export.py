"""The offline export: a self-contained, PHI-free directory anyone can verify.

Layout (format :data:`EXPORT_FORMAT`)::

    manifest.json        format, origin, size, root (base64), latest checkpoint size, and
                         the SHA-256 and length of every other file
    leaves.bin           the stored leaves, 80 bytes each, in index order (leaf.py layout)
    checkpoints.jsonl    {"size": N, "note": "<C2SP signed checkpoint>"} per checkpoint
    latest.note          the latest checkpoint: remember it, pass it to the next verify
    proofs.jsonl         {"from": A, "to": B, "hashes": [base64, ...]}: the RFC 9162
                         consistency proof between each two consecutive checkpoints
    key-events.jsonl     {"index": I, "salt": base64, "data": base64}: evidence of the
                         key-event entries (verifier keys, no PHI), always included
    evidence.jsonl       the same for every entry, only with ``with_evidence`` (it may hold
                         PHI: AuditEvents, Consents)

Leaves carry only pseudonyms and commitments, so the default export holds no PHI. The
manifest's hashes catch a damaged copy, not an attacker (who can rewrite them): the
signatures do that. Reading an export reports what is wrong with its files as findings and
raises :class:`ExportError` only when there is nothing to verify.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from middleware.ledger.checkpoint import parse_checkpoint
from middleware.ledger.entry import Evidence
from middleware.ledger.errors import LedgerError, MalformedError
from middleware.ledger.findings import Finding
from middleware.ledger.leaf import LEAF_SIZE, EntryKind
from middleware.ledger.note import parse_note
from middleware.ledger.snapshot import LogSnapshot
from middleware.ledger.tree import MerkleLevels
from middleware.ledger.verify import ConsistencyProof
from middleware.storage.ledger_witnessed import witnessed_size

__all__ = ["EXPORT_FORMAT", "ExportError", "ExportedLog", "read_export", "write_export"]

EXPORT_FORMAT = "consentry-ledger-export/v1"
_OPTIONAL = ("proofs.jsonl", "evidence.jsonl")


class ExportError(LedgerError):
    """The directory is not an export, or cannot be written as one."""


@dataclass(frozen=True, slots=True)
class ExportedLog:
    """An export as read: the log, its proofs, and problems with its files."""

    snapshot: LogSnapshot
    proofs: tuple[ConsistencyProof, ...]
    problems: tuple[Finding, ...]
    manifest: dict[str, Any]


def write_export(
    snapshot: LogSnapshot, directory: Path, *, with_evidence: bool = False, proofs: bool = True
) -> dict[str, Any]:
    """Write ``snapshot`` to ``directory`` (new or empty) and return the manifest.

    Writes what is stored, checked or not: judging it is the verifier's job. Raises
    :class:`ExportError` for a non-empty directory or a leaf that is not 80 bytes.
    """
    if directory.exists() and any(directory.iterdir()):
        raise ExportError(f"{directory} is not empty")
    bad = next((i for i, leaf in enumerate(snapshot.leaves) if len(leaf) != LEAF_SIZE), None)
    if bad is not None:
        raise ExportError(f"leaf {bad} is not {LEAF_SIZE} bytes; verify the store directly")
    directory.mkdir(parents=True, exist_ok=True)
    tree = MerkleLevels.of_leaves(snapshot.leaves)
    sized = [(_claimed_size(note), note) for note in snapshot.checkpoints]
    files = {
        "leaves.bin": b"".join(snapshot.leaves),
        "checkpoints.jsonl": _jsonl({"size": s, "note": n} for s, n in sized),
        "key-events.jsonl": _evidence_lines(snapshot, key_events_only=True),
    }
    signed = sorted({s for s, _ in sized if s is not None and s <= tree.size})
    if proofs:
        files["proofs.jsonl"] = _jsonl(
            {"from": a, "to": b, "hashes": [_b64(h) for h in tree.consistency_proof(a, b)]}
            for a, b in itertools.pairwise(signed)
        )
    if with_evidence:
        files["evidence.jsonl"] = _evidence_lines(snapshot, key_events_only=False)
    latest = max(((s, n) for s, n in sized if s is not None), default=None)
    if latest is not None:
        files["latest.note"] = latest[1].encode("utf-8")
    for name, data in files.items():
        (directory / name).write_bytes(data)
    manifest = {
        "format": EXPORT_FORMAT,
        "origin": _origin(latest[1]) if latest else None,
        "size": tree.size,
        "root": _b64(tree.root()),
        "latest_checkpoint": latest[0] if latest else None,
        "checkpoints": len(sized),
        "with_evidence": with_evidence,
        "files": {
            name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            for name, data in sorted(files.items())
        },
    }
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    (directory / "manifest.json").write_text(text, encoding="utf-8")
    return manifest


def read_export(directory: Path) -> ExportedLog:
    """Read an export; damaged or missing files become findings (code ``export``)."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        raw = (directory / "leaves.bin").read_bytes()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{directory} is not a readable export: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{directory}/manifest.json is not a {EXPORT_FORMAT} manifest")
    problems: list[Finding] = []
    listed = manifest.get("files")
    listed = listed if isinstance(listed, dict) else {}
    for name, meta in sorted(listed.items()):
        path = directory / name
        if not path.is_file() or not isinstance(meta, dict):
            problems.append(Finding("export", f"{name} is listed but missing"))
        elif hashlib.sha256(path.read_bytes()).hexdigest() != meta.get("sha256"):
            problems.append(Finding("export", f"{name} differs from the manifest's hash"))
    if len(raw) % LEAF_SIZE:
        problems.append(Finding("export", f"leaves.bin is not a whole number of {LEAF_SIZE}"))
    leaves = [raw[i : i + LEAF_SIZE] for i in range(0, len(raw), LEAF_SIZE)]
    rows = [r.get("note") for r in _read_jsonl(directory / "checkpoints.jsonl", problems)]
    notes = [note for note in rows if isinstance(note, str)]
    if len(notes) != len(rows):
        problems.append(Finding("export", "checkpoints.jsonl has a line without a note"))
    evidence = _read_evidence(directory / "key-events.jsonl", problems)
    evidence.update(_read_evidence(directory / "evidence.jsonl", problems))
    proofs = [_proof(r) for r in _read_jsonl(directory / "proofs.jsonl", problems)]
    problems += [Finding("export", "a proofs.jsonl line is malformed") for p in proofs if not p]
    size, root = manifest.get("size"), manifest.get("root")
    state = (size, _unb64(root)) if isinstance(size, int) and isinstance(root, str) else None
    if state is None:
        problems.append(Finding("export", "manifest.json has no size and root"))
    snapshot = LogSnapshot(leaves, notes, evidence, state=state)
    return ExportedLog(snapshot, tuple(p for p in proofs if p), tuple(problems), manifest)


def _read_jsonl(path: Path, problems: list[Finding]) -> Iterator[dict[str, Any]]:
    if not path.is_file():
        if path.name not in _OPTIONAL:
            problems.append(Finding("export", f"{path.name} is missing"))
        return
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            yield row
        else:
            problems.append(Finding("export", f"{path.name} line {number} is not a JSON object"))


def _read_evidence(path: Path, problems: list[Finding]) -> dict[int, Evidence]:
    out: dict[int, Evidence] = {}
    for row in _read_jsonl(path, problems):
        index, salt, data = row.get("index"), row.get("salt"), row.get("data")
        if isinstance(index, int) and isinstance(salt, str) and isinstance(data, str):
            out[index] = Evidence(_unb64(salt), _unb64(data))
        else:
            problems.append(Finding("export", f"{path.name}: malformed evidence row"))
    return out


def _proof(row: dict[str, Any]) -> ConsistencyProof | None:
    old, new, hashes = row.get("from"), row.get("to"), row.get("hashes")
    if not (isinstance(old, int) and isinstance(new, int) and isinstance(hashes, list)):
        return None
    return ConsistencyProof(old, new, tuple(_unb64(h) for h in hashes if isinstance(h, str)))


def _evidence_lines(snapshot: LogSnapshot, *, key_events_only: bool) -> bytes:
    leaves = snapshot.leaves
    return _jsonl(
        {"index": i, "salt": _b64(e.salt), "data": _b64(e.data)}
        for i, e in sorted(snapshot.evidence.items())
        if not key_events_only or (i < len(leaves) and leaves[i][5] == EntryKind.KEY_EVENT)
    )


def _claimed_size(note: str) -> int | None:
    try:
        return witnessed_size(note)  # one parser of a note's size (the stores' too)
    except MalformedError:
        return None


def _origin(note: str) -> str:
    return parse_checkpoint(parse_note(note).text).origin


def _jsonl(rows: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""  # a wrong-length value, which the verifier reports where it is used
