"""The errors the ledger raises.

None of them is an HTTP error: the layer that serves the ledger (the ``/ledger`` API, the CLI,
the offline verifier) decides what each becomes. Messages never hold PHI; the ledger holds none.

    LedgerError
    ├── VerificationError   a proof, root, or signature does not verify (carries expected vs
    │                       computed); the Merkle ``verify_*`` functions raise nothing else,
    │                       note and checkpoint verification also raise MalformedError
    ├── MalformedError      bytes or text that break a format (leaf, signed note, checkpoint,
    │                       verifier key) or a value that cannot be encoded; also a ValueError
    └── OutOfRangeError     a proof was asked for an index or size the tree does not have;
                            also a ValueError
"""

from __future__ import annotations

__all__ = ["LedgerError", "MalformedError", "OutOfRangeError", "VerificationError"]

Comparable = bytes | int | str | None


class LedgerError(Exception):
    """Base class of every error the ledger raises."""


class VerificationError(LedgerError):
    """Something that had to verify did not.

    ``expected`` is the trusted value the caller supplied (a root, a tree size, a proof
    length); ``computed`` is what the proof or signature actually yields. Either is ``None``
    when the failure is not a comparison (no known key signed the note, for example).
    """

    def __init__(
        self, message: str, *, expected: Comparable = None, computed: Comparable = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.expected = expected
        self.computed = computed

    def __str__(self) -> str:
        if self.expected is None and self.computed is None:
            return self.message
        return f"{self.message}: expected {_show(self.expected)}, computed {_show(self.computed)}"


class MalformedError(LedgerError, ValueError):
    """Input does not follow the format it claims (strict parsers reject, never repair)."""


class OutOfRangeError(LedgerError, ValueError):
    """An index or tree size outside the tree was asked for (a caller's mistake)."""


def _show(value: Comparable) -> str:
    if isinstance(value, bytes):
        return value.hex()
    return repr(value)
