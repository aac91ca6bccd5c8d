"""A development-only OAuth 2.0 authorization endpoint over the development issuer.

With the development issuer on, the web pages' SMART standalone launch needs somewhere to
send the browser. :class:`DevAuthorizer` is that place's logic (the page is
``middleware.web.devsignin``): :meth:`request` checks an authorization request (RFC 6749
§4.1.1 with PKCE, RFC 7636: ``code_challenge_method=S256`` only; ``redirect_uri`` on the
gateway's own origin, so it is no open redirector), :meth:`grant` issues a one-use code for
the person typed on the page, and :meth:`exchange` turns the code into an access token minted
by :class:`~middleware.auth.devissuer.UnsafeDevelopmentIssuer` (RFC 6749 §4.1.3, the code
verifier checked). Anyone can be anyone here: it exists only when the development issuer is
on, and it says so on its page and in the log.

It is no token faucet: it knows one client (the web pages' ``client_id``) and, per
``redirect_uri`` (each area's callback), the one scope set that area asks for and whether the
person is a patient or the auditor. Any other client, redirect URI, scope or person is refused
(400), so it only mints what the development sign-in of the pages needs (RFC 6749 §3.1.2.2,
§3.3: the server may fully or partially ignore the scope; here it refuses instead).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.logging import get_logger

__all__ = [
    "AuthorizeRequest",
    "DevAuthorizer",
    "DevClient",
    "OAuthError",
    "pkce_challenge",
]

#: RFC 7636 §4.1: 43 to 128 characters of this set.
_VERIFIER: Final = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_CHALLENGE: Final = re.compile(r"[A-Za-z0-9\-_]{43}")
#: A FHIR id (R4 §2.24.0.1), and not only dots (a path segment of them is a dot segment).
_FHIR_ID: Final = re.compile(r"(?!\.+$)[A-Za-z0-9\-.]{1,64}")
CODE_TTL: Final = 60.0
TOKEN_TTL: Final = 3600
MAX_CODES: Final = 1000


class OAuthError(Exception):
    """An OAuth error response (RFC 6749 §5.2): ``error`` code, HTTP 400."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of ``verifier``: BASE64URL(SHA256(ASCII(verifier))), no
    padding (RFC 7636 §4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True, slots=True)
class AuthorizeRequest:
    """A checked authorization request; ``auditor``: its callback signs in the auditor (else
    a patient)."""

    client_id: str
    redirect_uri: str
    scope: str
    state: str
    code_challenge: str
    auditor: bool


@dataclass(frozen=True, slots=True)
class DevClient:
    """What the one known client may ask for at one ``redirect_uri``: exactly ``scope`` (a
    space-separated set), for an auditor (``auditor``) or a patient."""

    scope: str
    auditor: bool


@dataclass(frozen=True, slots=True)
class _Grant:
    request: AuthorizeRequest
    patient: str | None
    auditor: bool
    expires: float


class DevAuthorizer:
    """Codes and tokens for the development sign-in (module docstring). ``origin`` is the
    gateway's own origin (every ``redirect_uri`` must be on it); ``client_id`` the only
    client; ``redirects`` what that client may ask for at each ``redirect_uri``; ``audience``
    the token's ``aud``; ``auditor_role`` the role an auditor's token carries."""

    def __init__(
        self,
        issuer: UnsafeDevelopmentIssuer,
        *,
        origin: str,
        client_id: str,
        redirects: Mapping[str, DevClient],
        audience: str,
        auditor_role: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._issuer = issuer
        self._origin = origin.lower()
        self._client_id = client_id
        self._redirects = dict(redirects)
        self._audience = audience
        self._auditor_role = auditor_role
        self._clock = clock
        self._codes: OrderedDict[str, _Grant] = OrderedDict()
        get_logger("consentry.auth").warning(
            "development sign-in endpoint enabled",
            reason=(
                "/auth/authorize signs anyone in as any patient or as the auditor, with the "
                "portal's and the dashboard's scopes only; never use it in production"
            ),
        )

    def request(self, params: Mapping[str, str]) -> AuthorizeRequest:
        """The authorization request in ``params``, checked; raises :class:`OAuthError`."""
        if params.get("response_type") != "code":
            raise OAuthError("unsupported_response_type", "response_type must be code")
        client_id = params.get("client_id", "")
        redirect_uri = params.get("redirect_uri", "")
        state = params.get("state", "")
        challenge = params.get("code_challenge", "")
        if client_id != self._client_id:
            raise OAuthError("unauthorized_client", "only the gateway's own pages sign in here")
        parts = urlsplit(redirect_uri)
        if f"{parts.scheme}://{parts.netloc}".lower() != self._origin or parts.fragment:
            raise OAuthError("invalid_request", "redirect_uri must be on this gateway")
        allowed = self._redirects.get(redirect_uri)
        if allowed is None:
            raise OAuthError("invalid_request", "redirect_uri is not a sign-in callback")
        if not state or len(state) > 200:
            raise OAuthError("invalid_request", "state is required")
        if params.get("code_challenge_method") != "S256" or not _CHALLENGE.fullmatch(challenge):
            raise OAuthError("invalid_request", "PKCE with S256 is required")
        scope = params.get("scope", "")
        # The exact set the area asks for, in any order (RFC 6749 §3.3): nothing more, so the
        # endpoint cannot mint, say, system/*.cruds for whoever reaches it.
        if sorted(scope.split()) != sorted(allowed.scope.split()):
            raise OAuthError("invalid_scope", "only the sign-in scopes of this page are issued")
        scope = allowed.scope
        return AuthorizeRequest(client_id, redirect_uri, scope, state, challenge, allowed.auditor)

    def grant(self, request: AuthorizeRequest, *, patient: str | None, auditor: bool) -> str:
        """A one-use code for ``patient`` (a Patient id) or an auditor; raises
        :class:`OAuthError` for a malformed patient id."""
        if auditor != request.auditor:
            raise OAuthError("access_denied", "this page signs in a different kind of user")
        if not auditor and (patient is None or not _FHIR_ID.fullmatch(patient)):
            raise OAuthError("invalid_request", "a patient id is letters, digits, - and .")
        now = self._clock()
        while self._codes and (
            len(self._codes) >= MAX_CODES or next(iter(self._codes.values())).expires <= now
        ):
            self._codes.popitem(last=False)
        code = secrets.token_urlsafe(32)
        self._codes[code] = _Grant(request, None if auditor else patient, auditor, now + CODE_TTL)
        return code

    def exchange(self, form: Mapping[str, str]) -> dict[str, Any]:
        """The token response (RFC 6749 §5.1) for an authorization-code grant in ``form``;
        the code is spent whether or not the rest checks out. Raises :class:`OAuthError`."""
        if form.get("grant_type") != "authorization_code":
            raise OAuthError("unsupported_grant_type", "grant_type must be authorization_code")
        grant = self._codes.pop(form.get("code", ""), None)
        if grant is None or grant.expires <= self._clock():
            raise OAuthError("invalid_grant", "unknown or expired code")
        request = grant.request
        verifier = form.get("code_verifier", "")
        if (
            form.get("redirect_uri") != request.redirect_uri
            or form.get("client_id") != request.client_id
            or not _VERIFIER.fullmatch(verifier)
            or not hmac.compare_digest(pkce_challenge(verifier), request.code_challenge)
        ):
            raise OAuthError("invalid_grant", "the code does not match this request")
        scopes = request.scope
        if grant.auditor:
            token = self._issuer.issue(
                "auditor",
                scopes=scopes,
                audience=self._audience,
                fhir_user="Practitioner/auditor",
                roles=[self._auditor_role],
                ttl=TOKEN_TTL,
                client_id=request.client_id,
            )
        else:
            token = self._issuer.issue(
                f"patient-{grant.patient}",
                scopes=scopes,
                audience=self._audience,
                patient=grant.patient,
                fhir_user=f"Patient/{grant.patient}",
                ttl=TOKEN_TTL,
                client_id=request.client_id,
            )
        get_logger("consentry.auth").warning(
            "development sign-in", reason="the development issuer minted a sign-in token"
        )
        answer: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": TOKEN_TTL,
            "scope": scopes,
        }
        if grant.patient is not None:
            answer["patient"] = grant.patient
        return answer
