"""The token-bucket limiter, driven by an injected clock."""

from __future__ import annotations

import pytest

from middleware.ops.ratelimit import RateLimiter, address_key, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_the_next_waits_for_the_refill() -> None:
    """``burst`` requests at once pass; the next is told when a token is due (1/rate s)."""
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    clock.now += 0.25
    assert limiter.take("a") == pytest.approx(0.25)  # half a token so far: nothing spent
    clock.now += 0.25
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(0.5)


def test_keys_have_their_own_buckets() -> None:
    """One client exhausting its bucket does not slow another."""
    limiter = RateLimiter(rate=1.0, burst=1, clock=Clock())
    assert limiter.take("a") == 0.0
    assert limiter.take("a") > 0
    assert limiter.take("b") == 0.0


def test_refill_is_capped_at_the_burst() -> None:
    """An hour idle gives back ``burst`` tokens, not 3,600."""
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    limiter.take("a")
    clock.now += 3600
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_exhausted_looks_without_spending_or_remembering() -> None:
    """The check made before any token work spends nothing: a fresh key is not stored (a
    flood of new addresses cannot fill memory through it) and a full bucket stays full."""
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    assert limiter.exhausted("a") == 0.0
    assert len(limiter) == 0
    assert limiter.take("a") == 0.0
    assert limiter.exhausted("a") == pytest.approx(1.0)
    assert limiter.exhausted("a") == pytest.approx(1.0)
    clock.now += 1
    assert limiter.exhausted("a") == 0.0
    assert limiter.take("a") == 0.0


def test_keys_are_bounded_least_recently_used_forgotten_first() -> None:
    """At most ``max_keys`` buckets; the forgotten one starts full again (never a wrong 429)."""
    limiter = RateLimiter(rate=1.0, burst=1, clock=Clock(), max_keys=2)
    limiter.take("a")
    limiter.take("b")
    limiter.take("a")  # a is the most recently used
    limiter.take("c")  # forgets b
    assert len(limiter) == 2
    assert limiter.take("b") == 0.0
    assert limiter.take("c") > 0


def test_a_clock_stepping_back_adds_no_tokens() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock)
    limiter.take("a")
    clock.now -= 100
    assert limiter.take("a") == pytest.approx(1.0)


def test_rate_zero_turns_the_limiter_off() -> None:
    limiter = RateLimiter(rate=0.0, burst=1, clock=Clock())
    assert not limiter.enabled
    assert all(limiter.take("a") == 0.0 for _ in range(100))
    assert len(limiter) == 0


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(-1.0, 1.0), (float("nan"), 1.0), (float("inf"), 1.0), (1.0, 0.5), (1.0, float("nan"))],
    ids=["negative-rate", "nan-rate", "inf-rate", "burst-below-one", "nan-burst"],
)
def test_bad_parameters_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match=r"rate|burst"):
        RateLimiter(rate=rate, burst=burst)


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (59.5, "60")]
)
def test_retry_after_is_whole_seconds_rounded_up(seconds: float, header: str) -> None:
    """RFC 9110 §10.2.3 delay-seconds is a non-negative integer; rounding down would invite a
    retry that is refused again."""
    assert retry_after(seconds) == header


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:0:1::1", "2001:db8:0:1::/64"),
        ("2001:db8:0:1:ffff:ffff:ffff:ffff", "2001:db8:0:1::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("", ""),
        ("/run/consentry.sock", "/run/consentry.sock"),
    ],
)
def test_an_ipv6_address_is_keyed_by_its_64(host: str, key: str) -> None:
    """The attack: one IPv6 subscriber holds a /64 and can send every request from a fresh
    address, each with a full budget. Its addresses share one key; IPv4 (mapped or not) and
    non-IP clients are keyed as they are."""
    assert address_key(host) == key
