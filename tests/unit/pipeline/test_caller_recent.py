"""caller_of remembers the Caller of each recent identity object: the same object gives the
same Caller, equal to the one made afresh, for every kind of identity; an equal but distinct
identity gets a Caller of its own; an entry keeps its identity alive; ``none`` is refused
every time; the memory is bounded."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.auth.identity import Identity
from middleware.auth.scopes import parse_scopes
from middleware.errors import Forbidden
from middleware.pipeline import caller as module
from middleware.pipeline.caller import caller_of

SCOPES = ["patient/*.rs", "user/*.rs", "system/*.cruds", "user/Observation.rs", "openid"]
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActReason"

identities = st.builds(
    Identity,
    subject=st.sampled_from(["a", "b"]),
    issuer=st.sampled_from(["https://i1", "https://i2"]),
    expires_at=st.just(4e9),
    scopes=st.lists(st.sampled_from(SCOPES), max_size=3).map(
        lambda names: parse_scopes(" ".join(names)).scopes
    ),
    client_id=st.none() | st.just("app"),
    fhir_user=st.none() | st.just("Practitioner/p1"),
    patient=st.none() | st.just("p1"),
    purpose_of_use=st.lists(st.sampled_from([(ACT, "TREAT"), (ACT, "ETREAT")]), max_size=2).map(
        tuple
    ),
    roles=st.frozensets(st.sampled_from(["doctor", "nurse"])),
)


@given(identities)
def test_the_remembered_caller_is_the_one_made_afresh(identity: Identity) -> None:
    if identity.kind == "none":
        for _ in range(2):  # refused every time, never remembered
            with pytest.raises(Forbidden):
                caller_of(identity)
        return
    first = caller_of(identity)
    assert caller_of(identity) is first
    assert first == module._make_caller(identity)
    twin = Identity(**{name: getattr(identity, name) for name in identity.__slots__})
    assert twin == identity
    assert twin is not identity
    made_for_twin = caller_of(twin)
    assert made_for_twin == first  # an equal identity object: an equal Caller,
    assert made_for_twin is not first  # made afresh (told apart by `is`, not equality)
    assert made_for_twin.identity is twin
    assert caller_of(twin) is made_for_twin


def test_an_entry_keeps_its_identity_alive() -> None:
    """Once the Caller it was given is dropped, the memo still holds the identity (so its
    ``id`` cannot be reused while the entry stands)."""
    identity = Identity("alive", "https://i", 4e9, parse_scopes("user/*.rs").scopes)
    before = sys.getrefcount(identity)
    caller = caller_of(identity)
    assert module._RECENT.holds(identity)
    del caller
    # The entry holds the identity, and so does its Caller (Caller.identity).
    assert sys.getrefcount(identity) == before + 2


def test_the_memory_is_bounded() -> None:
    scopes = parse_scopes("user/*.rs").scopes
    kept = [Identity(f"s{n}", "https://i", 4e9, scopes) for n in range(module._RECENT_SIZE + 5)]
    for identity in kept:
        caller_of(identity)
    assert len(module._RECENT) == module._RECENT_SIZE
    assert not module._RECENT.holds(kept[4])
    assert module._RECENT.holds(kept[5])
    assert caller_of(kept[-1]).principal.identifiers == frozenset(
        {("https://i", f"s{module._RECENT_SIZE + 4}")}
    )
