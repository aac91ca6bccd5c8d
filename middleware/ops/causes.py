"""What an operator needs to know about a failure, in words that hold no PHI.

A :class:`~middleware.errors.GatewayError` says what failed in words fit for a client ("ledger
store unavailable", "upstream server unreachable"); the library exception it was raised
``from`` says why ("unable to open database file", ``[Errno 111] Connection refused``). The
operator needs both; a client gets neither cause. :func:`describe` walks the ``__cause__``
chain to the first exception that is not ours and renders it with its class name. Error texts
of HTTP and database libraries can quote a URL, and a URL's path or query can name a patient,
so every URL and query string in them is cut out (:func:`scrub`). :func:`store_label` names a
``store`` setting without the password a PostgreSQL DSN may carry.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from middleware.errors import GatewayError

__all__ = ["Cause", "describe", "scrub", "store_label"]

_URL: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]*")
_QUERY: Final = re.compile(r"\?[^\s'\"<>]*")
_MAX_CHAIN: Final = 8  # causes are short chains; the bound only guards a cycle


class Cause:
    """A failure rendered for the log: ``error_type`` (class name of the root cause) and
    ``error`` (ours first, then the root cause's text, URLs and queries cut out)."""

    __slots__ = ("error", "error_type")

    def __init__(self, error_type: str, error: str) -> None:
        self.error_type = error_type
        self.error = error

    def fields(self) -> dict[str, str]:
        """Keyword arguments for a log call."""
        return {"error_type": self.error_type, "error": self.error}


def describe(exc: BaseException) -> Cause:
    """The root cause of ``exc`` (its ``__cause__``/``__context__`` chain, ours skipped) with
    the outermost message of ours in front of it: ``"ledger store unavailable: unable to open
    database file"``, error type ``OperationalError``."""
    ours: str | None = None
    current: BaseException | None = exc
    root: BaseException = exc
    for _ in range(_MAX_CHAIN):
        if current is None:
            break
        root = current
        if not isinstance(current, GatewayError):
            break
        if ours is None:
            ours = current.diagnostics
        current = current.__cause__ or current.__context__
    text = "" if isinstance(root, GatewayError) else _text(root)
    if ours and text:
        return Cause(type(root).__name__, f"{ours}: {text}")
    return Cause(type(root).__name__, ours or text or type(root).__name__)


def _text(exc: BaseException) -> str:
    """An OSError by its errno text (``[Errno 111] Connection refused``, which the message of
    asyncio's connect adds addresses to), anything else by its message."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return scrub(f"[Errno {exc.errno}] {exc.strerror}")
    return scrub(str(exc))


def scrub(text: str) -> str:
    """``text`` with every URL and query string replaced by ``<url>`` / ``?<query>``."""
    return _QUERY.sub("?<query>", _URL.sub("<url>", text))


def store_label(url: str) -> str:
    """The ``store`` setting as the log and start-up errors show it: a PostgreSQL DSN without
    its password or query (``postgresql://app@db:5432/consentry``); ``sqlite:PATH`` and
    ``memory:`` as they are."""
    if not url.startswith(("postgresql://", "postgres://")):
        return url
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return urlunsplit((parts.scheme, f"{user}{host}{port}", parts.path, "", ""))
