"""Which headers cross the gateway, in each direction.

Both directions use allow-lists (fail closed): a header not named here does not cross. That
drops hop-by-hop headers (RFC 9110 §7.6.1: Connection, Keep-Alive, TE, Trailer,
Transfer-Encoding, Upgrade, Proxy-*), the client's credentials (the gateway authenticates the
client; the upstream sees only the gateway's own ``upstream_headers``), cookies, and upstream
internals such as ``Server`` or ``X-Powered-By``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

__all__ = [
    "REQUEST_HEADERS_PASSED",
    "RESPONSE_HEADERS_PASSED",
    "header_problems",
    "request_id",
    "upstream_request_headers",
]

#: Client request headers the upstream receives (FHIR R4 http.html §3.1.0.1.x: conditional
#: reads and writes, Prefer, content negotiation).
REQUEST_HEADERS_PASSED = frozenset(
    {
        "accept",
        "accept-language",
        "content-type",
        "if-match",
        "if-none-match",
        "if-none-exist",
        "if-modified-since",
        "prefer",
    }
)

#: Upstream response headers the client receives; ``location`` and ``content-location`` are
#: rebased first.
RESPONSE_HEADERS_PASSED = frozenset(
    {
        "content-type",
        "content-disposition",
        "etag",
        "last-modified",
        "location",
        "content-location",
        "cache-control",
        "expires",
        "retry-after",
        "preference-applied",
        "x-progress",
    }
)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# RFC 9110 §5.1 field-name = token (§5.6.2 tchar); §5.5 field-value, visible ASCII only (obs-text
# is obsolete), single spaces or tabs inside, none at either end.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"(?:[\x21-\x7e](?:[\x20\x09\x21-\x7e]*[\x21-\x7e])?)?")
#: Headers the gateway's own ``upstream_headers`` may not set: hop-by-hop ones (RFC 9110
#: §7.6.1), and those that frame or route the message, which the HTTP client owns.
RESERVED_UPSTREAM_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
    }
)


def header_problems(headers: Mapping[str, str]) -> list[str]:
    """What is wrong with configured extra headers, one line each (never the value, which may
    be a credential); empty when every name is an RFC 9110 token outside
    :data:`RESERVED_UPSTREAM_HEADERS` and every value a field-value of visible ASCII."""
    problems: list[str] = []
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            problems.append(f"{name!r} is not an HTTP field name (RFC 9110 token)")
        elif name.lower() in RESERVED_UPSTREAM_HEADERS:
            problems.append(f"{name!r} is hop-by-hop or owned by the HTTP client")
        elif not _FIELD_VALUE.fullmatch(value):
            problems.append(
                f"the value of {name!r} is not an HTTP field value (visible ASCII, inner"
                " spaces or tabs; no line breaks, control characters or outer whitespace)"
            )
    return problems


def request_id(headers: Mapping[str, str]) -> str:
    """The client's ``X-Request-Id`` when it is a safe token, else a new random one.

    A request id lands in logs and audit records, so anything that is not a short token is
    replaced rather than echoed.
    """
    given = headers.get("x-request-id")
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return os.urandom(16).hex()


def upstream_request_headers(
    headers: Mapping[str, str],
    *,
    rid: str,
    client_host: str | None,
    scheme: str,
    host: str | None,
    prefix: str,
    extra: Mapping[str, str],
    trust_forwarded: bool,
) -> list[tuple[str, str]]:
    """The header list sent upstream: allowed client headers, ``X-Request-Id``, the
    ``X-Forwarded-*`` family (RFC 7239 predecessors, as de-facto proxies set them), then the
    configured ``extra`` headers, which win over anything from the client.

    ``scheme`` and ``host`` are the gateway's public ones (from settings), not the client's
    ``Host`` header, so an upstream that builds URLs from them cannot be steered by a client.
    """
    out = [(name, value) for name, value in headers.items() if name in REQUEST_HEADERS_PASSED]
    out.append(("x-request-id", rid))
    forwarded_for = client_host or "unknown"
    if trust_forwarded and "x-forwarded-for" in headers:
        forwarded_for = f"{headers['x-forwarded-for']}, {forwarded_for}"
    out.append(("x-forwarded-for", forwarded_for))
    out.append(("x-forwarded-proto", scheme))
    if host:
        out.append(("x-forwarded-host", host))
    if prefix:
        out.append(("x-forwarded-prefix", prefix))
    if extra:
        lowered = {k.lower() for k in extra}
        out = [(k, v) for k, v in out if k not in lowered]
        out.extend((k.lower(), v) for k, v in extra.items())
    return out
