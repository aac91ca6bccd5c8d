"""Who may spend the gateway's work: the caller's token within its address's and principal's
rates, at the ASGI edge, before the request's body is read.

A caller that has not proved who it is costs nothing durable: its refusals are counted in
``/metrics`` and logged in aggregate (:meth:`Admission.tally_anonymous`, one line per
:data:`UNAUTHENTICATED_LOG_SECONDS`), never recorded on the ledger one by one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Final

from middleware.auth.identity import Identity
from middleware.errors import GatewayError, TooManyRequests
from middleware.logging import get_logger
from middleware.ops.ratelimit import RateLimiter, address_key
from middleware.ops.tally import IntervalTally
from middleware.proxy.enforcement import Enforcement
from middleware.proxy.exchange_log import ExchangeLog
from middleware.settings import Settings
from middleware.types import Scope

__all__ = ["UNAUTHENTICATED_LOG_SECONDS", "Admission"]

#: Seconds between the aggregate log lines of refused unauthenticated requests.
UNAUTHENTICATED_LOG_SECONDS: Final = 60.0

#: :func:`address_key` once per client address, not per request (it parses the address with
#: ipaddress, ~20 us); bounded, so a flood of addresses only evicts.
_address_key: Final = functools.lru_cache(maxsize=4096)(address_key)


class Admission:
    """The edge's token check and rate limits over ``enforcement``'s verifier; ``clock``
    returns seconds (the limiters' and the tally's)."""

    def __init__(
        self, settings: Settings, enforcement: Enforcement, *, clock: Callable[[], float]
    ) -> None:
        self._enforcement = enforcement
        self._principals = RateLimiter(
            settings.rate_limit_per_principal, settings.rate_limit_per_principal_burst, clock=clock
        )
        self._anonymous = RateLimiter(
            settings.rate_limit_unauthenticated,
            settings.rate_limit_unauthenticated_burst,
            clock=clock,
        )
        self._refused_anonymous = IntervalTally(UNAUTHENTICATED_LOG_SECONDS, clock=clock)
        self._log = get_logger("consentry.proxy")

    async def identify(self, scope: Scope, headers: dict[str, str], ex: ExchangeLog) -> Identity:
        """The verified caller, or 401 / 429 (neither recorded on the ledger).

        A token that verified before and has not expired is verified whatever its address's
        budget: that budget guards verification work against callers without a valid token,
        so one caller's bad tokens never refuse another's good one behind the same address.
        Any other token is verified only while its client address (an IPv6 address by its
        /64) has budget left, else 429. A request that fails authentication spends one of its
        address's tokens. A verified caller then spends one of its principal's tokens."""
        enforcement = self._enforcement
        ex.authenticated = False
        address = _address_key(str((scope.get("client") or ("",))[0]))
        if not enforcement.proved(headers):
            wait = self._anonymous.exhausted(address)
            if wait:
                raise _too_many(wait, "too many unauthenticated requests from this address")
        try:
            identity = await enforcement.identify(headers)
        except GatewayError:
            self._anonymous.take(address)
            raise
        ex.authenticated = True
        wait = self._principals.take(f"{identity.issuer}\x00{identity.subject}")
        if wait:
            raise _too_many(wait, "too many requests for this caller")
        return identity

    def tally_anonymous(self, reason: str) -> None:
        """Count a refusal of a caller that did not prove who it is; one warning line per
        interval carries the counts by reason (never a path, a query or a body)."""
        report = self._refused_anonymous.add(reason)
        if report is not None:
            counts, seconds = report
            self._log.warning(
                "unauthenticated requests refused",
                seconds=round(seconds, 1),
                count=sum(counts.values()),
                reason=",".join(f"{code}:{n}" for code, n in sorted(counts.items())),
            )


def _too_many(wait: float, diagnostics: str) -> TooManyRequests:
    return TooManyRequests(diagnostics, retry_after=max(1, math.ceil(wait)))
