"""Sign-in against an external authorization server: the endpoints come from the settings or
the issuer's ``.well-known/smart-configuration``; the code goes to its token endpoint with the
PKCE verifier. The web app is built alone over a stand-in gateway, the network replaced by an
``httpx.MockTransport``, the token checked by a stand-in verifier."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from middleware.auth.devauthorize import pkce_challenge
from middleware.auth.identity import Identity
from middleware.errors import Unauthorized
from middleware.ledger.signing import new_box_key
from middleware.settings import load_settings
from middleware.types import Receive, Scope, Send
from middleware.web.routes import build_web
from middleware.web.session import COOKIES

IDP = "https://idp.example"
ROOT = "https://gateway.example"
#: The portal's session cookie over https: __Host- prefixed.
SESSION = "__Host-" + COOKIES["patient"]


class Verifier:
    """Accepts the one token the stand-in server issues."""

    async def verify(self, authorization: str | None) -> Identity:
        if authorization != "Bearer good-token":
            raise Unauthorized("bad token")
        return Identity(subject="u1", issuer=IDP, expires_at=time.time() + 600, patient="p7")

    def proved(self, authorization: str | None) -> bool:
        return authorization == "Bearer good-token"


async def gateway(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers every in-process API call with an empty searchset."""
    body = json.dumps({"resourceType": "Bundle", "type": "searchset"}).encode()
    headers = [(b"content-type", b"application/fhir+json")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Idp:
    """The stand-in authorization server's well-known document and token endpoint."""

    def __init__(self, document: dict[str, Any] | None) -> None:
        self.document = document
        self.token_forms: list[dict[str, str]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/smart-configuration" and self.document:
            return httpx.Response(200, json=self.document)
        if request.url.path == "/token" and request.method == "POST":
            form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
            self.token_forms.append(form)
            return httpx.Response(200, json={"access_token": "good-token", "token_type": "Bearer"})
        return httpx.Response(404)


def _client(idp: Idp, **issuer: Any) -> httpx.AsyncClient:
    settings = load_settings(
        overrides={
            "upstream": "http://upstream.test/fhir",
            "public_url": f"{ROOT}/fhir",
            "store": "memory:",
            "auth": {
                "audiences": [f"{ROOT}/fhir"],
                "issuers": [{"issuer": IDP, "jwks_url": f"{IDP}/jwks", **issuer}],
            },
        }
    )
    web = build_web(
        gateway,
        settings,
        secret=new_box_key(),
        verifier=Verifier(),
        dev_issuer=None,
        token_transport=httpx.MockTransport(idp.handler),
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url=ROOT)


DISCOVERED = {
    "authorization_endpoint": f"{IDP}/authorize",
    "token_endpoint": f"{IDP}/token",
    "code_challenge_methods_supported": ["S256"],
}


@pytest.mark.parametrize(
    ("document", "issuer"),
    [
        pytest.param(DISCOVERED, {}, id="discovered"),
        pytest.param(
            None,
            {"authorization_endpoint": f"{IDP}/authorize", "token_endpoint": f"{IDP}/token"},
            id="configured",
        ),
    ],
)
async def test_standalone_launch_with_pkce(
    document: dict[str, Any] | None, issuer: dict[str, str]
) -> None:
    idp = Idp(document)
    async with _client(idp, **issuer) as web:
        start = await web.get("/portal/signin/start")
        assert start.status_code == 303
        target = urlsplit(start.headers["location"])
        assert f"{target.scheme}://{target.netloc}{target.path}" == f"{IDP}/authorize"
        query = {k: v[0] for k, v in parse_qs(target.query).items()}
        assert query["code_challenge_method"] == "S256"
        assert query["aud"] == f"{ROOT}/fhir"
        assert query["redirect_uri"] == f"{ROOT}/portal/callback"
        assert "patient/Consent.cruds" in query["scope"]
        done = await web.get(
            "/portal/callback", params={"code": "the-code", "state": query["state"]}
        )
        assert done.status_code == 200, done.text
        (form,) = idp.token_forms
        assert form["code"] == "the-code"
        assert form["grant_type"] == "authorization_code"
        # the verifier sent is the one whose challenge went to the authorization endpoint
        assert pkce_challenge(form["code_verifier"]) == query["code_challenge"]
        home = await web.get("/portal/")
        assert home.status_code == 200
        assert "Signed in as Patient/p7" in home.text
        assert "good-token" not in home.text
        assert "good-token" not in web.cookies[SESSION]


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(None, id="none"),
        pytest.param({**DISCOVERED, "code_challenge_methods_supported": ["plain"]}, id="no-S256"),
        pytest.param({**DISCOVERED, "token_endpoint": "http://idp.example/token"}, id="downgrade"),
        pytest.param({"authorization_endpoint": 1}, id="malformed"),
    ],
)
async def test_unusable_discovery_signs_nobody_in(document: dict[str, Any] | None) -> None:
    async with _client(Idp(document)) as web:
        start = await web.get("/portal/signin/start")
        assert start.status_code == 303
        assert start.headers["location"] == "/portal/signin?problem=no-server"


async def test_a_token_the_gateway_refuses_signs_nobody_in() -> None:
    class Refusing(Idp):
        def handler(self, request: httpx.Request) -> httpx.Response:
            if request.url.path == "/token":
                return httpx.Response(200, json={"access_token": "forged"})
            return super().handler(request)

    async with _client(Refusing(DISCOVERED)) as web:
        start = await web.get("/portal/signin/start")
        state = parse_qs(urlsplit(start.headers["location"]).query)["state"][0]
        done = await web.get("/portal/callback", params={"code": "c", "state": state})
        assert done.status_code == 303
        assert "problem=failed" in done.headers["location"]
        assert SESSION not in web.cookies
