"""The signed-in person of a web page: a :class:`WebSession` kept sealed in a cookie.

The gateway keeps no session table: the session (the access token from sign-in, the subject,
the CSRF token, the expiry) is sealed with XSalsa20-Poly1305 under a key derived from the
ledger's data secret (:func:`middleware.ledger.signing.derive_box_key`, purpose
``web-session``; every replica with the same key file opens it) and stored in a cookie that is
``HttpOnly`` (no script reads the token), ``SameSite=Strict`` (no other site's page sends it),
``Path=/`` and ``Secure`` when the gateway's public URL is https. A cookie that does not open,
is of the other area, or has expired is no session: the page treats its holder as signed out.

Each area has its own cookie (``consentry_portal``, ``consentry_compliance``), so a person can
be signed in to both. Over https the names carry the ``__Host-`` prefix (:func:`cookie_name`;
RFC 6265bis §4.1.3.2): the browser then keeps the cookie only if it came Secure, from this
host, for ``Path=/`` and with no ``Domain``, so a sibling subdomain cannot plant or shadow a
session. Over plain http (local use) the prefix would make the browser drop the cookie, so the
plain names stay. :func:`current` reads one; :func:`require` raises :class:`SignInRequired`,
which the web app answers with a 303 to that area's sign-in page.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Final, Literal, get_args

from starlette.requests import Request
from starlette.responses import Response

from middleware.ledger.signing import seal, unseal

__all__ = [
    "COOKIES",
    "SIGNIN_PATHS",
    "Kind",
    "SessionCodec",
    "SignInRequired",
    "WebSession",
    "cookie_name",
    "current",
    "require",
]

Kind = Literal["patient", "auditor"]

#: The cookie of each area's session.
COOKIES: Final[dict[Kind, str]] = {
    "patient": "consentry_portal",
    "auditor": "consentry_compliance",
}
#: The prefix a Secure cookie's name takes (RFC 6265bis §4.1.3.2).
HOST_PREFIX: Final = "__Host-"


def cookie_name(name: str, *, secure: bool) -> str:
    """``name`` as sent: with :data:`HOST_PREFIX` when the cookie is ``Secure`` (https),
    unchanged otherwise (a browser refuses a ``__Host-`` cookie that is not Secure)."""
    return HOST_PREFIX + name if secure else name


#: Each area's sign-in page (where :class:`SignInRequired` sends the browser).
SIGNIN_PATHS: Final[dict[Kind, str]] = {
    "patient": "/portal/signin",
    "auditor": "/compliance/signin",
}
#: A browser refuses cookies over 4096 bytes (RFC 6265 §6.1 asks for at least that); a sealed
#: session longer than this is refused at sign-in rather than silently dropped.
MAX_COOKIE: Final = 4000


@dataclass(frozen=True, slots=True)
class WebSession:
    """Who is signed in: ``kind`` (the area), ``token`` (the access token the pages call the
    APIs with), ``subject`` (``Patient/<id>`` for a patient; an auditor's ``fhirUser`` or
    ``sub``), ``csrf`` (the token every form of this session carries), ``expires`` (seconds
    since the epoch, never later than the access token's own expiry)."""

    kind: Kind
    token: str
    subject: str
    csrf: str
    expires: float


class SignInRequired(Exception):
    """The page needs a session of ``kind`` and has none (answered 303 to its sign-in)."""

    def __init__(self, kind: Kind) -> None:
        super().__init__(kind)
        self.kind = kind


class SessionCodec:
    """Seals sessions into cookie values and opens them (module docstring). ``key`` is a
    32-byte secret-box key; ``secure`` adds the ``Secure`` flag; ``clock`` is seconds since
    the epoch."""

    def __init__(self, key: bytes, *, secure: bool, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self.secure = secure
        self._clock = clock

    def encode(self, session: WebSession) -> str:
        """The cookie value of ``session``: base64url of the sealed JSON."""
        data = json.dumps(asdict(session), separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(seal(self._key, data)).decode("ascii").rstrip("=")

    def decode(self, value: str | None, kind: Kind) -> WebSession | None:
        """The session sealed in ``value`` if it opens, is of ``kind`` and has not expired;
        else None (never raises for any ``value``)."""
        if not value or len(value) > MAX_COOKIE:
            return None
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            return None
        opened = unseal(self._key, raw)
        if opened is None:
            return None
        try:
            data = json.loads(opened)
            session = WebSession(
                kind=data["kind"],
                token=str(data["token"]),
                subject=str(data["subject"]),
                csrf=str(data["csrf"]),
                expires=float(data["expires"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        if session.kind != kind or session.kind not in get_args(Kind):
            return None
        if session.expires <= self._clock():
            return None
        return session

    def set_cookie(self, response: Response, session: WebSession) -> None:
        """Put ``session`` in its area's cookie on ``response``; raises ``ValueError`` when
        the sealed session is too large for a cookie."""
        value = self.encode(session)
        if len(value) > MAX_COOKIE:
            raise ValueError("the session does not fit in a cookie")
        max_age = max(0, int(session.expires - self._clock()))
        response.set_cookie(
            self.name(session.kind),
            value,
            max_age=max_age,
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="strict",
        )

    def clear_cookie(self, response: Response, kind: Kind) -> None:
        """Remove ``kind``'s session cookie (sign-out)."""
        response.delete_cookie(
            self.name(kind), path="/", secure=self.secure, httponly=True, samesite="strict"
        )

    def name(self, kind: Kind) -> str:
        """The name of ``kind``'s session cookie (:func:`cookie_name`)."""
        return cookie_name(COOKIES[kind], secure=self.secure)


def _codec(request: Request) -> SessionCodec:
    codec = request.app.state.deps.sessions
    assert isinstance(codec, SessionCodec)
    return codec


async def current(request: Request, kind: Kind) -> WebSession | None:
    """The session of ``kind`` the request's cookie holds, or None (signed out)."""
    codec = _codec(request)
    return codec.decode(request.cookies.get(codec.name(kind)), kind)


async def require(request: Request, kind: Kind) -> WebSession:
    """:func:`current`, or :class:`SignInRequired` (a 303 to the area's sign-in page)."""
    session = await current(request, kind)
    if session is None:
        raise SignInRequired(kind)
    return session
