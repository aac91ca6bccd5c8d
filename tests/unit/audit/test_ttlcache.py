"""TtlCache: the bounded, expiring LRU behind the recorder's pseudonyms and PatientKeys."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.audit.ttlcache import TtlCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("size", "ttl"), [(0, 1.0), (1, 0.0), (1, -1.0)], ids=["no-room", "no-ttl", "negative-ttl"]
)
def test_a_cache_needs_room_and_a_lifetime(size: int, ttl: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        TtlCache[str, int](size, ttl, Clock())


def test_a_value_expires_ttl_after_it_was_put_and_a_use_does_not_extend_it() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(10, 60.0, clock)
    cache.put("a", 1)
    clock.now = 59.999
    assert cache.get("a") == 1
    clock.now = 60.0
    assert cache.get("a") is None
    assert len(cache) == 0  # an expired value is dropped when found


def test_put_at_and_get_now_override_the_clock() -> None:
    clock = Clock()
    cache: TtlCache[str, int] = TtlCache(10, 60.0, clock)
    cache.put("a", 1, at=-1.0)
    assert cache.get("a", 58.999) == 1
    assert cache.get("a", 59.0) is None


def test_the_least_recently_used_goes_first() -> None:
    cache: TtlCache[str, int] = TtlCache(2, 60.0, Clock())
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.put("c", 3)  # evicts b
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    cache.drop("a")
    cache.drop("a")  # dropping what is not kept is no error
    assert cache.get("a") is None


class Reference:
    """The recorder's pseudonym cache before TtlCache (an OrderedDict of (value, time)),
    kept verbatim in behaviour: a stale value is a miss."""

    def __init__(self, size: int, ttl: float) -> None:
        self.size, self.ttl = size, ttl
        self.items: OrderedDict[int, tuple[int, float]] = OrderedDict()

    def get(self, key: int, now: float) -> int | None:
        hit = self.items.get(key)
        if hit is None or now - hit[1] >= self.ttl:
            return None
        self.items.move_to_end(key)
        return hit[0]

    def put(self, key: int, value: int, now: float) -> None:
        self.items[key] = (value, now)
        self.items.move_to_end(key)
        if len(self.items) > self.size:
            self.items.popitem(last=False)


operations = st.lists(
    st.tuples(st.sampled_from(["get", "put", "tick"]), st.integers(0, 5), st.integers(0, 40)),
    max_size=60,
)


@given(size=st.integers(1, 4), ops=operations)
def test_it_answers_as_the_old_cache_did_while_values_are_fresh(
    size: int, ops: list[tuple[str, int, int]]
) -> None:
    """Every get answers as the old cache's, as long as no expired value is left behind in
    the old one (it kept them, counting towards its size; TtlCache drops them when found):
    with a lifetime longer than the run, the two are the same LRU."""
    clock = Clock()
    cache: TtlCache[int, int] = TtlCache(size, 1e9, clock)
    old = Reference(size, 1e9)
    for op, key, value in ops:
        if op == "tick":
            clock.now += value
        elif op == "put":
            cache.put(key, value)
            old.put(key, value, clock.now)
        else:
            assert cache.get(key) == old.get(key, clock.now)
    assert len(cache) == len(old.items)


@given(ops=operations)
def test_a_value_is_never_given_once_ttl_has_passed(ops: list[tuple[str, int, int]]) -> None:
    clock = Clock()
    cache: TtlCache[int, int] = TtlCache(3, 30.0, clock)
    put_at: dict[int, tuple[int, float]] = {}
    for op, key, value in ops:
        if op == "tick":
            clock.now += value
        elif op == "put":
            cache.put(key, value)
            put_at[key] = (value, clock.now)
        else:
            got = cache.get(key)
            if got is not None:
                assert put_at[key] == (got, put_at[key][1])
                assert clock.now - put_at[key][1] < 30.0
