"""The C2SP tlog-witness ``add-checkpoint`` rules (https://c2sp.org/tlog-witness), sans I/O.

A request body is ``old <size>\\n``, zero to 63 base64 consistency-proof lines, an empty line,
then a signed checkpoint note. :func:`parse_submission` reads it; :func:`check_submission`
decides it against the witness's configuration of that log and the state it remembers, and
either returns the checkpoint to cosign or raises :class:`WitnessRefusal`, which carries the
HTTP status the spec prescribes:

====  =====================================================================================
400   malformed body; old size above the checkpoint's size
403   no signature by one of the log's keys verifies (or a known key's signature is bad)
404   the checkpoint's origin is not a log this witness is configured for
409   old size is not the size the witness last cosigned (body: that size, ``text/x.tlog.size``);
      or same size, different root hash (a fork: ``evidence`` is set, the caller keeps it)
422   the consistency proof does not verify
====  =====================================================================================

Only the same-size fork is evidence: two roots for one size, each signed by the log, prove
the log misbehaved whoever sends them. A 422 proves nothing about the log: the proof comes
from the client, so anyone holding a public checkpoint larger than the cosigned one can send
a garbage proof with it; the witness cannot tell a fork from a bad proof there, and keeps
nothing. The evidence is the checkpoint text with only the signatures that verified under
the log's keys (lines by other keys are the sender's, not the log's, and are dropped).

A checkpoint smaller than the remembered one is refused either way (409 when the client
says the old size is the new one's, 400 when it gives the remembered size): a witness never
rolls a log back. Checking and recording must be one atomic step (tlog-witness: the
rollback race); that is :mod:`middleware.witness.state`'s compare-and-swap.
"""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

from middleware.ledger.checkpoint import Checkpoint, parse_checkpoint
from middleware.ledger.errors import MalformedError, VerificationError
from middleware.ledger.merkle import EMPTY_ROOT, HASH_SIZE, verify_consistency
from middleware.ledger.note import NoteVerifier, SignedNote, b64decode_strict, parse_note
from middleware.ledger.note import verify_signatures as verify_note_signatures

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_PROOF_LINES",
    "SIZE_CONTENT_TYPE",
    "LogConfig",
    "LogState",
    "Submission",
    "WitnessRefusal",
    "check_submission",
    "format_submission",
    "parse_submission",
]

#: "The client MUST NOT send more than 63 consistency proof lines" (tlog-witness).
MAX_PROOF_LINES = 63
#: A checkpoint with its signatures is well under 16 KiB; 63 proof lines are under 3 KiB.
MAX_BODY_BYTES = 64 * 1024
#: The content type of a 409's body, the witness's latest cosigned size (tlog-witness).
SIZE_CONTENT_TYPE = "text/x.tlog.size"
_OLD = re.compile(r"old (0|[1-9][0-9]{0,19})")


class WitnessRefusal(Exception):
    """An ``add-checkpoint`` the witness will not cosign, with the HTTP ``status`` to answer.

    ``size`` is set on a size mismatch (409): the size the witness last cosigned, the whole
    response body. ``evidence`` is set on a fork (same size, another root, signed by the
    log): the checkpoint with only the log's verified signatures, worth keeping.
    """

    def __init__(
        self,
        status: int,
        reason: str,
        *,
        size: int | None = None,
        evidence: SignedNote | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.size = size
        self.evidence = evidence


@dataclass(frozen=True, slots=True)
class LogConfig:
    """A log this witness follows: its origin and the keys that sign its checkpoints."""

    origin: str
    verifiers: tuple[NoteVerifier, ...]


@dataclass(frozen=True, slots=True)
class LogState:
    """What the witness remembers of a log: the latest checkpoint it cosigned (size, root,
    the signed note). A log never cosigned is :meth:`empty` (size 0, the empty tree's root)."""

    origin: str
    size: int
    root_hash: bytes
    note: str

    @classmethod
    def empty(cls, origin: str) -> LogState:
        return cls(origin, 0, EMPTY_ROOT, "")


@dataclass(frozen=True, slots=True)
class Submission:
    """A parsed ``add-checkpoint`` body; ``note`` is not yet trusted."""

    old_size: int
    proof: tuple[bytes, ...]
    note: SignedNote

    @property
    def origin(self) -> str:
        """The origin line as sent (only to find the log's keys; trusted after verifying)."""
        return self.note.text.split("\n", 1)[0]


def parse_submission(body: bytes) -> Submission:
    """Parse a request body strictly; anything off is a 400 :class:`WitnessRefusal`."""
    if len(body) > MAX_BODY_BYTES:
        raise WitnessRefusal(413, "request body too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WitnessRefusal(400, "the body is not UTF-8") from None
    head, blank, rest = text.partition("\n\n")
    if not blank:
        raise WitnessRefusal(400, "no empty line before the checkpoint")
    lines = head.split("\n")
    match = _OLD.fullmatch(lines[0])
    if match is None:
        raise WitnessRefusal(400, "the first line is 'old <size>'")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise WitnessRefusal(400, f"more than {MAX_PROOF_LINES} consistency proof lines")
    try:
        proof = tuple(b64decode_strict(line) for line in lines[1:])
        note = parse_note(rest)
    except MalformedError as exc:
        raise WitnessRefusal(400, str(exc)) from None
    if any(len(node) != HASH_SIZE for node in proof):
        raise WitnessRefusal(400, f"a consistency proof line is a {HASH_SIZE}-byte hash")
    old_size = int(match.group(1))
    if old_size >= 2**64:
        raise WitnessRefusal(400, "the old size is a uint64")
    return Submission(old_size, proof, note)


def check_submission(submission: Submission, log: LogConfig | None, state: LogState) -> Checkpoint:
    """Apply tlog-witness's checks in its order; return the verified checkpoint to cosign.

    ``log`` is the configuration for ``submission.origin`` (``None``: unknown log, 404) and
    ``state`` what the witness last cosigned for it. The caller must record the checkpoint
    with a compare-and-swap against ``state`` before it answers.
    """
    if log is None:
        raise WitnessRefusal(404, "unknown log")
    checkpoint, signed_by_log = _verified(submission.note, log)
    if submission.old_size > checkpoint.size:
        raise WitnessRefusal(400, "the old size is above the checkpoint's size")
    if submission.old_size != state.size:
        raise WitnessRefusal(409, "the old size is not the last cosigned size", size=state.size)
    if submission.proof and state.size in (0, checkpoint.size):
        # RFC 9162 has no proof from the empty tree or to the same size: a client's mistake,
        # not the log's, so nothing to keep.
        raise WitnessRefusal(422, "the consistency proof must be empty")
    if checkpoint.size == state.size:
        if not hmac.compare_digest(checkpoint.root_hash, state.root_hash):
            # Two checkpoints of one size with different roots, both signed by the log: a
            # split view. 409 as tlog-witness says; the caller keeps the log-signed note.
            raise WitnessRefusal(409, "same size, different root hash", evidence=signed_by_log)
        return checkpoint
    try:
        verify_consistency(
            state.size, checkpoint.size, state.root_hash, checkpoint.root_hash, submission.proof
        )
    except VerificationError:
        # Not evidence: the proof is the client's (see the module docstring).
        raise WitnessRefusal(422, "the consistency proof does not verify") from None
    return checkpoint


def _verified(note: SignedNote, log: LogConfig) -> tuple[Checkpoint, SignedNote]:
    """The checkpoint, and the note with only the signatures by the log's keys."""
    try:
        verified = verify_note_signatures(note, log.verifiers)
    except VerificationError:
        raise WitnessRefusal(403, "no valid signature by the log's key") from None
    try:
        checkpoint = parse_checkpoint(note.text)
    except MalformedError as exc:
        raise WitnessRefusal(400, str(exc)) from None
    if checkpoint.origin != log.origin:  # the note was looked up by its first line
        raise WitnessRefusal(404, "unknown log")
    return checkpoint, SignedNote(note.text, verified)


def format_submission(old_size: int, proof: Sequence[bytes], note: str) -> bytes:
    """A request body (for clients and tests): ``old <size>``, the proof lines, an empty line,
    the signed note."""
    lines = "".join(base64.b64encode(node).decode("ascii") + "\n" for node in proof)
    return f"old {old_size}\n{lines}\n{note}".encode()
