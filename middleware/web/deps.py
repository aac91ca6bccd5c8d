"""What the page modules are given: :class:`WebDeps`, built once by ``routes.build_web``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from middleware.auth.devauthorize import DevAuthorizer
from middleware.proxy.enforcement import TokenCheck
from middleware.settings import Settings
from middleware.web.api import GatewayApi
from middleware.web.session import SessionCodec

__all__ = ["WebDeps"]


@dataclass(frozen=True, slots=True)
class WebDeps:
    """``settings``; ``api`` (the gateway's own APIs, in-process); ``sessions`` (the session
    cookie codec); ``signin_key`` (seals the short-lived sign-in state cookie);
    ``verifier`` (checks the token sign-in received, as the APIs will); ``origin`` (the
    gateway's own origin, for CSRF); ``root`` (its public root URL); ``clock`` (seconds since
    the epoch); ``dev`` (the development authorization endpoint, None unless the
    development issuer is on); ``token_client`` (reads an external issuer's SMART
    configuration and posts to its token endpoint); ``discovered`` (the endpoints read from an
    issuer's SMART configuration, by issuer)."""

    settings: Settings
    api: GatewayApi
    sessions: SessionCodec
    signin_key: bytes
    verifier: TokenCheck
    origin: str
    root: str
    clock: Callable[[], float]
    dev: DevAuthorizer | None
    token_client: httpx.AsyncClient
    discovered: dict[str, tuple[str, str]] = field(default_factory=dict)
