"""HTTP/1.1 checks both hand-over-the-wire clients apply, so that they refuse the same things.

Requests (before anything is sent, ``ValueError``: a programming error, never a client's):

- the URL is on the upstream origin; the target is visible ASCII (RFC 9112 §3.2), the method
  a token (RFC 9110 §9.1), each header name a token and each value free of control
  characters (RFC 9110 §5.1, §5.5, §5.6.2): no request smuggling through a CR LF.
- the caller's framing and connection headers (:data:`MANAGED`) are dropped: the client
  frames the request itself.

Responses (:func:`framing_problem`): framing that two parsers could read differently is
refused, never guessed at (RFC 9112 §6.1, §6.3, §11.2): a ``Transfer-Encoding`` other than one
``chunked``, one beside a ``Content-Length``, and a ``Content-Length`` that is repeated or is
not a plain decimal number. The client then answers ``UpstreamError`` (502) and closes the
connection, whatever its own parser would have made of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from middleware.proxy.upstream import UpstreamRequest

__all__ = ["MANAGED", "checked_fields", "framing_problem", "request_target"]

MANAGED = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "upgrade"}
    | {"accept-encoding", "expect", "proxy-connection"}
)
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"  # noqa: S105 - RFC 9110 §5.6.2, not a secret
_METHOD = re.compile(_TOKEN)
_TARGET = re.compile(r"/[!\x24-\x7e]*")
_FIELD_LINES = re.compile(rf"(?:{_TOKEN}: [\t\x20-\x7e\x80-\xff]*\r\n)*")


def request_target(request: UpstreamRequest, origin: str) -> str:
    """The request target (path and query as given) of ``request`` on ``origin`` (lower-case
    ``scheme://host[:port]``); ``ValueError`` for another origin or an unsafe method or
    target."""
    url, n = request.url, len(origin)
    if url[:n].lower() != origin or url[n : n + 1] not in ("", "/", "?"):
        raise ValueError(f"{url!r} is not on the upstream origin {origin}")
    target = url[n:] if url[n : n + 1] == "/" else "/" + url[n:]
    if not _TARGET.fullmatch(target) or not _METHOD.fullmatch(request.method):
        raise ValueError("request line holds characters not allowed there")
    return target


def checked_fields(headers: Iterable[tuple[str, str]]) -> tuple[list[tuple[str, str]], str]:
    """The caller's headers without :data:`MANAGED` ones, and their field lines (each ending
    in CR LF); ``ValueError`` when a name or value holds characters not allowed there."""
    kept = [(k, v) for k, v in headers if k.lower() not in MANAGED]
    fields = "".join(f"{k}: {v}\r\n" for k, v in kept)
    # One pass for all lines; the count catches a value holding CR LF and a valid line.
    if not _FIELD_LINES.fullmatch(fields) or fields.count("\n") != len(kept):
        raise ValueError("a header name or value holds characters not allowed there")
    return kept, fields


def framing_problem(headers: Iterable[tuple[str, str]]) -> str | None:
    """Why a response head with these ``headers`` (any case) is refused, or ``None``."""
    codings = [v for k, v in headers if k.lower() == "transfer-encoding"]
    lengths = [v for k, v in headers if k.lower() == "content-length"]
    if codings and (len(codings) > 1 or codings[0].strip(" \t").lower() != "chunked"):
        return "a transfer coding other than one chunked"
    if codings and lengths:
        return "both Transfer-Encoding and Content-Length"
    if len(lengths) > 1 or (lengths and not (lengths[0].isascii() and lengths[0].isdigit())):
        return "an ambiguous Content-Length"
    return None
