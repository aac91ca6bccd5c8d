"""The client's address behind trusted reverse proxies (``forwarded_allow_ips``).

:class:`ForwardedFor` is the outermost ASGI layer of a served gateway with trusted proxies.
When the TCP peer is one of them, the client address (the ASGI ``client``, which rate limits
and the ledger's records use) becomes the rightmost ``X-Forwarded-For`` entry that is not
itself a trusted proxy (every header line, in order, joined: an appending proxy such as
HAProxy's ``option forwardfor`` adds a line). When every entry is a trusted proxy, the leftmost
is taken. The header is the peer's word, and a client behind it can write its own entries to
the left, so only a value that parses as an IP address is accepted (:mod:`ipaddress`): junk,
a host name or a 6,000-character string leaves the peer's address as the client's, never in a
rate-limit key or an audit record. From any other peer the header is ignored.

The TCP peer itself is kept in the scope under :data:`PEER`, and the rules that are about
*where the connection comes from* read it with :func:`peer_host`, never the forwarded
address: the ``/metrics`` address rule (``metrics_clients``) and the development sign-in's
loopback rule. Through a trusted proxy on the same host, a client naming ``127.0.0.1`` is
still a remote client to them. ``X-Forwarded-Proto`` and ``X-Forwarded-Host`` are not read:
the gateway's own URLs, cookies and upstream headers come from its settings.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

from middleware.types import ASGIApp, Receive, Scope, Send

__all__ = ["PEER", "ForwardedFor", "client_address", "peer_host"]

#: The scope key holding the TCP peer (``(host, port)`` or None) once :class:`ForwardedFor`
#: may have replaced ``client``.
PEER: Final = "consentry.peer"

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_HEADER: Final = b"x-forwarded-for"


def _address(text: str) -> _Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _within(address: _Address, networks: Iterable[_Network]) -> bool:
    return any(address in network for network in networks)


def client_address(forwarded_for: str, trusted: tuple[_Network, ...]) -> str | None:
    """The client an ``X-Forwarded-For`` value names, read right to left past the trusted
    proxies (module docstring); None when it names none or an entry read is not an IP
    address (the peer then stays the client)."""
    found = None
    for entry in reversed(forwarded_for.split(",")):
        found = _address(entry)
        if found is None:  # also an empty value or entry
            return None
        if not _within(found, trusted):
            return str(found)
    return str(found)  # every entry a trusted proxy: the leftmost


def peer_host(scope: Scope) -> str | None:
    """The TCP peer's address: the one :class:`ForwardedFor` kept, else the ASGI ``client``
    (no trusted proxies: nothing replaced it)."""
    peer = scope[PEER] if PEER in scope else scope.get("client")
    return None if not peer else str(peer[0])


class ForwardedFor:
    """The ASGI layer of the module docstring around ``app``, trusting ``trusted``."""

    def __init__(self, app: ASGIApp, trusted: Iterable[_Network]) -> None:
        self.app = app
        self._trusted = tuple(trusted)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            peer = scope.get("client")
            scope[PEER] = peer
            address = _address(peer[0]) if peer else None
            if address is not None and _within(address, self._trusted):
                lines = [value for name, value in scope["headers"] if name == _HEADER]
                if lines:
                    host = client_address(b", ".join(lines).decode("latin-1"), self._trusted)
                    if host is not None:
                        scope["client"] = (host, 0)
        await self.app(scope, receive, send)
