"""Revocation (auth.revocation, auth.verify): which tokens a revocation covers, and a verifier
that checks every token, cached or not, against the list, forgets a revoked one and fails
closed when the list cannot tell."""

from __future__ import annotations

import pytest

from middleware.auth.identity import Identity
from middleware.auth.revocation import Revocation, RevocationKind, RevocationSet
from middleware.errors import ServiceUnavailable, Unauthorized

from .test_verify import make_verifier
from .tokens import ED, NOW, mint


class FakeList:
    """A revocation list held in memory (the stores' own behaviour: tests/unit/storage)."""

    def __init__(self) -> None:
        self.set = RevocationSet()
        self.down = False
        self.asked = 0

    async def revoked(self, identity: Identity, issued_at: float | None) -> bool:
        self.asked += 1
        if self.down:
            raise ServiceUnavailable("token revocation store unavailable")
        return self.set.revokes(identity, issued_at)

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize(
    ("kind", "value", "before"),
    [("jti", "", None), ("jti", "x", 1.0), ("subject", "dr", None), ("other", "x", 1.0)],
    ids=["empty", "jti-with-time", "subject-without-time", "unknown-kind"],
)
def test_malformed_revocations_are_refused(kind: str, value: str, before: float | None) -> None:
    with pytest.raises(ValueError, match="revocation"):
        Revocation(kind, value, before)  # type: ignore[arg-type]  # checked at run time


def test_several_times_for_one_subject_keep_the_latest() -> None:
    kind: RevocationKind = "subject"
    held = RevocationSet.of([Revocation(kind, "dr", 5.0), Revocation(kind, "dr", 3.0)])
    assert held.subjects == {"dr": 5.0}
    assert len(held) == 1


async def test_a_cached_token_is_refused_once_revoked_and_forgotten() -> None:
    """Red before: a verified token was taken from the cache for up to 60 s unchecked."""
    listed = FakeList()
    verifier = make_verifier(revocations=listed)
    header = f"Bearer {mint(ED, jti='t-1')}"
    identity = await verifier.verify(header)
    assert identity.token_id == "t-1"
    assert verifier.proved(header)
    await verifier.verify(header)  # from the cache, still asked
    assert listed.asked == 2
    listed.set = RevocationSet.of([Revocation("jti", "t-1")])
    with pytest.raises(Unauthorized, match="revoked") as refused:
        await verifier.verify(header)
    assert "invalid_token" in refused.value.www_authenticate
    assert not verifier.proved(header)  # forgotten: no admission fast path either


async def test_a_subjects_tokens_issued_before_the_time_are_refused() -> None:
    """Refused while ``iat < before + leeway`` (the skew the verifier allows ``iat``)."""
    listed = FakeList()
    listed.set = RevocationSet.of([Revocation("subject", "alice", NOW - 100)])
    verifier = make_verifier(revocations=listed, leeway=30.0)
    with pytest.raises(Unauthorized, match="revoked"):
        await verifier.verify(f"Bearer {mint(ED, iat=int(NOW) - 110)}")
    with pytest.raises(Unauthorized, match="revoked"):
        await verifier.verify(f"Bearer {mint(ED, iat=int(NOW) - 71)}")
    assert await verifier.verify(f"Bearer {mint(ED, iat=int(NOW) - 70)}")


@pytest.mark.parametrize("kind", ["subject", "client"])
async def test_a_fast_issuer_clock_does_not_escape_a_revocation(kind: RevocationKind) -> None:
    """Revoked "now"; the issuer's clock runs 20 s fast, within the 30 s the verifier allows
    an ``iat`` ahead. Red before: the raw ``iat`` was compared, and the token accepted."""
    token = mint(ED, iat=int(NOW) + 20)
    listed = FakeList()
    verifier = make_verifier(revocations=listed, leeway=30.0)
    identity = await verifier.verify(f"Bearer {token}")
    value = identity.subject if kind == "subject" else identity.client_id
    assert value is not None
    listed.set = RevocationSet.of([Revocation(kind, value, NOW)])
    with pytest.raises(Unauthorized, match="revoked"):
        await verifier.verify(f"Bearer {token}")


# Stored rows: read back without raising (a bad one must not make every request a 500).


def test_stored_rows_are_read_back_and_bad_ones_skipped_and_counted() -> None:
    rows: list[tuple[object, object, object]] = [
        ("jti", "t-1", None),
        ("jti", "x" * 600, None),  # longer than a new revocation may be: still enforced
        ("subject", "dr", 5.0),
        ("subject", "dr", 7),
        ("client", "app\x00", 3.0),  # not printable: still enforced
        ("subject", "nan", float("nan")),
        ("client", "c", "soon"),
        ("jti", "t-2", 4.0),
        ("other", "x", 1.0),
        ("jti", None, None),
        ("subject", "", 1.0),
    ]
    held, skipped = RevocationSet.of_rows(rows)
    assert held.jtis == {"t-1", "x" * 600}
    assert held.subjects == {"dr": 7.0}
    assert held.clients == {"app\x00": 3.0}
    assert skipped == 6


async def test_a_list_that_cannot_tell_is_a_503_even_for_a_cached_token() -> None:
    listed = FakeList()
    verifier = make_verifier(revocations=listed)
    header = f"Bearer {mint(ED)}"
    await verifier.verify(header)
    listed.down = True
    with pytest.raises(ServiceUnavailable):
        await verifier.verify(header)
