"""merkle.py's innermost helpers by example: a hash of the wrong length is refused by every
entry point that takes leaf hashes, and the refusal says which length it got (RFC 9162 trees
here use SHA-256 only, 32 bytes). Fast on purpose: mutation testing runs these first."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from middleware.ledger.errors import MalformedError
from middleware.ledger.merkle import CompactRange, consistency_proof, inclusion_proof, root

GOOD = hashlib.sha256(b"leaf").digest()
SHORT = GOOD[:31]


@pytest.mark.parametrize(
    "call",
    [
        lambda: root([GOOD, SHORT]),
        lambda: inclusion_proof([GOOD, SHORT], 0, 2),
        lambda: consistency_proof([GOOD, GOOD, SHORT], 1, 3),
        lambda: CompactRange().append(SHORT),
        lambda: CompactRange(1, [SHORT]),
    ],
    ids=["root", "inclusion-proof", "consistency-proof", "append", "restore"],
)
def test_a_short_hash_is_refused_with_its_length(call: Callable[[], object]) -> None:
    with pytest.raises(MalformedError) as caught:
        call()
    assert str(caught.value) == "a hash must be 32 bytes, not 31"
