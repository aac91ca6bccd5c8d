"""Who may read ``/metrics``: client addresses, a bearer token, or both.

Metrics hold no PHI, but they tell anyone who reads them how the gateway is used (request
rates by interaction, refusals by reason, open break-the-glass sessions). The default is
therefore loopback only (``metrics_clients = "127.0.0.1/8,::1"``), safe when the gateway
listens on every interface, as in the container image. A scraper elsewhere is let in by its
address (``metrics_clients``, a comma list of addresses or networks) or by the bearer token
``metrics_token`` (RFC 6750 §2.1 ``Authorization: Bearer``), compared in constant time.

The address is the TCP peer's (:func:`middleware.forwarded.peer_host`), never a forwarded
one, even from a trusted proxy: a reverse proxy on the same host makes every client look
local, so do not route ``/metrics`` through one (or set ``metrics_clients = ""`` and a token).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from typing import Final

from middleware.errors import Forbidden, Unauthorized

__all__ = ["DEFAULT_METRICS_CLIENTS", "MIN_TOKEN_LENGTH", "ScrapeAccess", "parse_networks"]

DEFAULT_METRICS_CLIENTS: Final = "127.0.0.1/8,::1"
#: Shortest ``metrics_token`` accepted (a guessable token is no access control).
MIN_TOKEN_LENGTH: Final = 16

_CHALLENGE: Final = 'Bearer realm="metrics"'
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[_Network, ...]:
    """The networks of a comma list (``"10.0.0.0/8, ::1"``); raises ValueError naming the bad
    entry."""
    networks: list[_Network] = []
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError as exc:
            raise ValueError(f"{entry!r} is not an IP address or network") from exc
    return tuple(networks)


class ScrapeAccess:
    """The scrape rule: :meth:`check` passes or raises the refusal to answer."""

    def __init__(self, networks: Iterable[_Network], token: str = "") -> None:
        self._networks = tuple(networks)
        self._token = token.encode()

    @classmethod
    def from_settings(cls, clients: str, token: str) -> ScrapeAccess:
        """From the ``metrics_clients`` and ``metrics_token`` settings (validated already)."""
        return cls(parse_networks(clients), token)

    def check(self, client_host: str | None, authorization: str | None) -> None:
        """Pass when the peer's address is allowed or the right bearer token is presented;
        raise :class:`Unauthorized` (a token is configured: the client may present it) or
        :class:`Forbidden` (no token configured: nothing the client can do)."""
        if self._token and authorization is not None:
            scheme, _, presented = authorization.partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                presented.strip().encode(), self._token
            ):
                return
            raise Unauthorized(
                "the metrics token is not valid",
                www_authenticate=f'{_CHALLENGE}, error="invalid_token"',
            )
        if self._address_allowed(client_host):
            return
        if self._token:
            raise Unauthorized("metrics need a bearer token", www_authenticate=_CHALLENGE)
        raise Forbidden("metrics are not served to this address")

    def _address_allowed(self, client_host: str | None) -> bool:
        if client_host is None or not self._networks:
            return False
        try:
            address = ipaddress.ip_address(client_host.split("%", 1)[0])
        except ValueError:  # a Unix socket path, a test client's name
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)
