"""RecentByIdentity (middleware/recent.py): one ``make`` per key object, told apart by ``is``
and never by equality; each entry keeps its key object alive, so a new object can never be
handed the value of one that died at the same address; bounded, oldest first out; a ``make``
that raises remembers nothing."""

from __future__ import annotations

import gc
import weakref

import pytest

from middleware.recent import RecentByIdentity


class Key:
    """A weakref-able stand-in for a frozen key; equal to every other Key (so only `is` can
    tell two apart)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key)

    def __hash__(self) -> int:
        return 0


class Counting:
    """A ``make`` that counts its calls and makes a new object each time."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, key: Key) -> object:
        self.calls += 1
        return object()


def test_the_same_object_is_made_once() -> None:
    make = Counting()
    recent = RecentByIdentity[Key, object](make, 4)
    key = Key()
    first = recent.made(key)
    assert recent.made(key) is first
    assert make.calls == 1
    assert recent.holds(key)


def test_an_equal_but_distinct_object_gets_its_own_make() -> None:
    make = Counting()
    recent = RecentByIdentity[Key, object](make, 4)
    a, b = Key(), Key()
    assert a == b
    assert hash(a) == hash(b)
    assert recent.made(a) is not recent.made(b)
    assert make.calls == 2
    assert recent.holds(a)
    assert recent.holds(b)


def test_an_entry_keeps_its_key_alive() -> None:
    """Fails if an entry stops holding its key: the caller's last reference goes, yet the key
    lives on until its entry is evicted."""
    recent = RecentByIdentity[Key, object](Counting(), 2)
    key = Key()
    alive = weakref.ref(key)
    recent.made(key)
    del key
    gc.collect()
    assert alive() is not None
    recent.made(Key())
    recent.made(Key())  # the first entry leaves (size 2)
    gc.collect()
    assert alive() is None


def test_a_new_object_at_a_dead_objects_address_gets_its_own_value() -> None:
    """The caller drops its key while its entry stands: the next object cannot take that
    address (the entry holds the key) and is made afresh. Fails if entries stopped holding
    their keys: CPython puts the next object of a size where the last one died."""
    values = iter(range(10**6))
    recent = RecentByIdentity[Key, int](lambda _key: next(values), 1)
    reused = 0
    for _ in range(200):
        key = Key()
        address = id(key)
        value = recent.made(key)
        del key
        newcomer = Key()
        reused += id(newcomer) == address
        assert recent.made(newcomer) != value
    # While the entry held the key, its address could not be reused.
    assert reused == 0


def test_the_memory_keeps_the_last_size_objects_oldest_first_out() -> None:
    make = Counting()
    recent = RecentByIdentity[Key, object](make, 3)
    keys = [Key() for _ in range(4)]
    for key in keys:
        recent.made(key)
    assert len(recent) == 3
    assert not recent.holds(keys[0])
    assert all(recent.holds(key) for key in keys[1:])
    recent.made(keys[1])  # a hit moves nothing (FIFO): keys[1] is still the oldest
    recent.made(keys[0])
    assert not recent.holds(keys[1])
    assert make.calls == 5


def test_a_make_that_raises_remembers_nothing() -> None:
    calls = []

    def refuse(key: Key) -> object:
        calls.append(key)
        raise ValueError("no")

    recent = RecentByIdentity[Key, object](refuse, 2)
    key = Key()
    for _ in range(2):
        with pytest.raises(ValueError):
            recent.made(key)
    assert len(calls) == 2
    assert len(recent) == 0


def test_a_memo_remembers_at_least_one_object() -> None:
    with pytest.raises(ValueError):
        RecentByIdentity[Key, object](Counting(), 0)
