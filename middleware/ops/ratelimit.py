"""Request rates: token buckets keyed by who is asking, with a bounded number of keys.

:class:`RateLimiter` gives each key (a verified principal, or a client address for requests
that have not proved who they are) a bucket of ``burst`` tokens refilled at ``rate`` tokens
per second. :meth:`RateLimiter.take` spends one token or says how many seconds until one is
due: the caller answers 429 with that ``Retry-After`` (RFC 9110 §10.2.3, RFC 6585 §4).
:meth:`RateLimiter.exhausted` only looks, spending nothing: the proxy asks it before any token
work, and spends a token only when authentication then fails. :func:`address_key` is the key of
a client address (an IPv6 address by its /64).

Pure: the clock is injected (monotonic seconds) and nothing here does I/O. Memory is bounded:
at most ``max_keys`` buckets are kept, the least recently used forgotten first (a forgotten
bucket is full again, which can only favour the client, never refuse one wrongly). A ``rate``
of 0 turns a limiter off.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_KEYS", "IPV6_PREFIX", "Bucket", "RateLimiter", "address_key", "retry_after"]

#: Buckets kept at once by default (a few hundred bytes each).
DEFAULT_MAX_KEYS = 100_000
#: IPv6 addresses share a bucket per this prefix: one subscriber is usually given a whole
#: /64 (RFC 6177), so keying by full address would hand it 2**64 fresh buckets.
IPV6_PREFIX = 64


@dataclass(slots=True)
class Bucket:
    """Tokens left and when they were last counted (monotonic seconds)."""

    tokens: float
    updated: float


class RateLimiter:
    """Token buckets of ``burst`` tokens refilled at ``rate`` per second, one per key."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if not (math.isfinite(rate) and rate >= 0):
            raise ValueError("rate must be a finite number >= 0")
        if not (math.isfinite(burst) and burst >= 1):
            raise ValueError("burst must be a finite number >= 1")
        if max_keys < 1:
            raise ValueError("max_keys must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """False when ``rate`` is 0: every request passes and nothing is remembered."""
        return self.rate > 0

    def take(self, key: str) -> float:
        """Spend one of ``key``'s tokens: 0.0 when one was there, else the seconds until one
        will be (nothing spent then)."""
        if not self.enabled:
            return 0.0
        bucket = self._refilled(key)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def exhausted(self, key: str) -> float:
        """The seconds until ``key`` has a token again; 0.0 when it has one now. Spends
        nothing and remembers no new key."""
        if not self.enabled or key not in self._buckets:
            return 0.0
        bucket = self._refilled(key)
        return 0.0 if bucket.tokens >= 1 else (1 - bucket.tokens) / self.rate

    def __len__(self) -> int:
        return len(self._buckets)

    def _refilled(self, key: str) -> Bucket:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = Bucket(self.burst, now)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
            return bucket
        self._buckets.move_to_end(key)
        # A clock that stepped back adds nothing (max), never a negative refill.
        elapsed = max(0.0, now - bucket.updated)
        bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
        bucket.updated = now
        return bucket


def retry_after(seconds: float) -> str:
    """``Retry-After`` delay-seconds (RFC 9110 §10.2.3): a whole number, rounded up, >= 1."""
    return str(max(1, math.ceil(seconds)))


def address_key(host: str) -> str:
    """The bucket key of a client address: an IPv4 address as it is, an IPv6 address by its
    /64 network (an IPv4-mapped one as its IPv4 address), anything else (a Unix socket, no
    address) verbatim."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)
