"""The web pages' foundation through the gateway: sign-in (SMART standalone launch with PKCE
against the development authorization endpoint), the session cookie, CSRF, and the security
headers on every web answer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from middleware.app import Gateway
from middleware.web.render import CSP
from middleware.web.session import COOKIES
from middleware.web.signin import STATE_COOKIE
from tests.app.consenting import auth_settings
from tests.app.web_signin import ORIGIN, SAME_ORIGIN, csrf_of, sign_in


@pytest.fixture
def make_web(
    make_app: Callable[..., Gateway], dev_key_file: Path
) -> Callable[..., httpx.AsyncClient]:
    def make(**overrides: Any) -> httpx.AsyncClient:
        overrides.setdefault("auth", auth_settings(dev_key_file, dev_signin_remote=True))
        app = make_app(**overrides)
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        base = str(overrides.get("public_url", ORIGIN)).removesuffix("/fhir")
        return httpx.AsyncClient(transport=transport, base_url=base)

    return make


@pytest.fixture
async def web(make_web: Callable[..., httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    async with make_web() as c:
        yield c


def _assert_secured(response: httpx.Response) -> None:
    assert response.headers["content-security-policy"] == CSP
    assert "unsafe-inline" not in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "same-origin"
    assert response.headers.get_list("content-security-policy") == [CSP]


# --- sign-in and the session cookie ---


async def test_patient_signs_in_and_sees_who_is_signed_in(web: httpx.AsyncClient) -> None:
    await sign_in(web, "patient", "p1")
    home = await web.get("/portal/")
    assert home.status_code == 200
    assert "Signed in as Patient/p1" in home.text


async def test_auditor_signs_in_to_the_dashboard(web: httpx.AsyncClient) -> None:
    await sign_in(web, "auditor")
    home = await web.get("/compliance/")
    assert home.status_code == 200
    assert "Signed in as Practitioner/auditor" in home.text
    # one area's session is not the other's
    assert (await web.get("/portal/")).status_code == 303


async def test_session_cookie_flags(make_web: Callable[..., httpx.AsyncClient]) -> None:
    """HttpOnly, SameSite=Strict, Path=/; Secure and the ``__Host-`` name prefix when the
    public URL is https (so a sibling subdomain cannot plant or shadow the cookie: a browser
    keeps a ``__Host-`` cookie only Secure, host-only, Path=/), plain names over http."""
    for public, secure in (
        ("http://gateway.test/fhir", False),
        ("https://gateway.test/fhir", True),
    ):
        async with make_web(public_url=public) as web:
            prefix = "__Host-" if secure else ""
            start = await web.get("/portal/signin/start")
            (state,) = start.headers.get_list("set-cookie")
            assert state.startswith(f"{prefix}{STATE_COOKIE}=")
            query = {
                k: v[0] for k, v in parse_qs(urlsplit(start.headers["location"]).query).items()
            }
            origin = public.removesuffix("/fhir")
            granted = await web.post(
                "/auth/authorize",
                data={**query, "who": "patient", "patient": "p1"},
                headers={"origin": origin},
            )
            back = urlsplit(granted.headers["location"])
            done = await web.get(f"{back.path}?{back.query}")
            name = f"{prefix}{COOKIES['patient']}="
            cookies = [c for c in done.headers.get_list("set-cookie") if c.startswith(name)]
            assert len(cookies) == 1
            flags = [f.strip().lower() for f in cookies[0].split(";")]
            assert "httponly" in flags
            assert "samesite=strict" in flags
            assert "path=/" in flags
            assert not [f for f in flags if f.startswith("domain")]
            assert ("secure" in flags) is secure
            home = await web.get("/portal/")
            assert home.status_code == 200
            assert "Signed in as Patient/p1" in home.text


async def test_unsigned_visitor_is_sent_to_sign_in(web: httpx.AsyncClient) -> None:
    for path, signin in (("/portal/", "/portal/signin"), ("/compliance/", "/compliance/signin")):
        answer = await web.get(path)
        assert answer.status_code == 303
        assert answer.headers["location"] == signin
        assert (await web.get(signin)).status_code == 200


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda v: v[:-2] + ("AA" if v[-2:] != "AA" else "BB"), id="flipped-tail"),
        pytest.param(lambda v: v[:20], id="truncated"),
        pytest.param(lambda v: "not-base64!!", id="garbage"),
        pytest.param(lambda v: "", id="empty"),
    ],
)
async def test_tampered_session_cookie_is_signed_out(
    web: httpx.AsyncClient, tamper: Callable[[str], str]
) -> None:
    await sign_in(web, "patient", "p1")
    name = COOKIES["patient"]
    value = web.cookies[name]
    web.cookies.delete(name)
    web.cookies.set(name, tamper(value), domain="gateway.test", path="/")
    answer = await web.get("/portal/")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/portal/signin"


async def test_patient_cookie_in_the_auditor_slot_is_signed_out(web: httpx.AsyncClient) -> None:
    """A sealed patient session copied into the dashboard's cookie opens as no session."""
    await sign_in(web, "patient", "p1")
    web.cookies.set(
        COOKIES["auditor"], web.cookies[COOKIES["patient"]], domain="gateway.test", path="/"
    )
    assert (await web.get("/compliance/")).status_code == 303


async def test_sign_out_clears_the_cookie(web: httpx.AsyncClient) -> None:
    csrf = await sign_in(web, "patient", "p1")
    out = await web.post("/portal/signout", data={"csrf": csrf}, headers=SAME_ORIGIN)
    assert out.status_code == 303
    assert out.headers["location"] == "/portal/signin"
    assert COOKIES["patient"] not in web.cookies
    assert (await web.get("/portal/")).status_code == 303


# --- sign-in refusals: state, PKCE ---


async def _authorized(web: httpx.AsyncClient) -> tuple[dict[str, str], str, str]:
    start = await web.get("/portal/signin/start")
    query = {k: v[0] for k, v in parse_qs(urlsplit(start.headers["location"]).query).items()}
    granted = await web.post(
        "/auth/authorize", data={**query, "who": "patient", "patient": "p1"}, headers=SAME_ORIGIN
    )
    back = parse_qs(urlsplit(granted.headers["location"]).query)
    return query, back["code"][0], back["state"][0]


async def test_callback_with_another_state_is_refused(web: httpx.AsyncClient) -> None:
    """Login CSRF (RFC 6749 §10.12): a code delivered with a state this browser did not start
    signs nobody in."""
    _, code, _state = await _authorized(web)
    answer = await web.get("/portal/callback", params={"code": code, "state": "attacker-state"})
    assert answer.status_code == 303
    assert "problem=failed" in answer.headers["location"]
    assert COOKIES["patient"] not in web.cookies
    assert (await web.get("/portal/")).status_code == 303


async def test_callback_without_the_state_cookie_is_refused(
    make_web: Callable[..., httpx.AsyncClient],
) -> None:
    """An attacker's own code and state, sent to a victim's browser (no sign-in started
    there), sign the victim in as nobody."""
    async with make_web() as attacker:
        _, code, state = await _authorized(attacker)
        async with make_web() as victim:
            answer = await victim.get("/portal/callback", params={"code": code, "state": state})
            assert answer.status_code == 303
            assert "problem=expired" in answer.headers["location"]
            assert COOKIES["patient"] not in victim.cookies


async def test_token_endpoint_refuses_a_wrong_code_verifier(web: httpx.AsyncClient) -> None:
    """PKCE (RFC 7636 §4.6): a stolen code without the browser's verifier gets no token, and
    the code is spent."""
    query, code, _ = await _authorized(web)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": query["redirect_uri"],
        "client_id": query["client_id"],
        "code_verifier": "x" * 64,
    }
    refused = await web.post("/auth/token", data=form)
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"
    again = await web.post("/auth/token", data=form)
    assert again.json()["error"] == "invalid_grant"


async def test_authorize_refuses_a_foreign_redirect_and_plain_pkce(web: httpx.AsyncClient) -> None:
    start = await web.get("/portal/signin/start")
    query = {k: v[0] for k, v in parse_qs(urlsplit(start.headers["location"]).query).items()}
    foreign = {**query, "redirect_uri": "https://evil.example/callback"}
    plain = {**query, "code_challenge_method": "plain"}
    for params in (foreign, plain):
        page = await web.get("/auth/authorize", params=params)
        assert page.status_code == 400
        posted = await web.post(
            "/auth/authorize", data={**params, "who": "auditor"}, headers=SAME_ORIGIN
        )
        assert posted.status_code == 400
        assert "location" not in posted.headers


async def test_dev_authorize_post_from_another_origin_is_refused(web: httpx.AsyncClient) -> None:
    start = await web.get("/portal/signin/start")
    query = {k: v[0] for k, v in parse_qs(urlsplit(start.headers["location"]).query).items()}
    answer = await web.post(
        "/auth/authorize",
        data={**query, "who": "auditor"},
        headers={"origin": "https://evil.example"},
    )
    assert answer.status_code == 403


async def test_dev_endpoints_absent_when_the_dev_issuer_is_off(
    make_web: Callable[..., httpx.AsyncClient],
) -> None:
    async with make_web(auth={}) as web:
        assert (
            await web.get("/auth/authorize", params={"response_type": "code"})
        ).status_code == 404
        assert (
            await web.post("/auth/token", data={"grant_type": "authorization_code"})
        ).status_code == 404
        start = await web.get("/portal/signin/start")
        assert start.status_code == 303
        assert start.headers["location"] == "/portal/signin?problem=no-server"


# --- CSRF ---


@pytest.mark.parametrize(
    ("form", "headers"),
    [
        pytest.param({}, SAME_ORIGIN, id="no-token"),
        pytest.param({"csrf": "wrong"}, SAME_ORIGIN, id="wrong-token"),
        pytest.param(None, {"origin": "https://evil.example"}, id="foreign-origin"),
        pytest.param(None, {"referer": "https://evil.example/page"}, id="foreign-referer"),
        pytest.param(None, {}, id="no-origin-or-referer"),
    ],
)
async def test_csrf_refused(
    web: httpx.AsyncClient, form: dict[str, str] | None, headers: dict[str, str]
) -> None:
    """A forged sign-out (the simplest state-changing form) is refused with the 403 page and
    the session stays."""
    csrf = await sign_in(web, "patient", "p1")
    data = {"csrf": csrf} if form is None else form
    answer = await web.post("/portal/signout", data=data, headers=headers)
    assert answer.status_code == 403
    assert "Action stopped" in answer.text
    _assert_secured(answer)
    assert (await web.get("/portal/")).status_code == 200


async def test_same_origin_referer_is_accepted(web: httpx.AsyncClient) -> None:
    csrf = await sign_in(web, "patient", "p1")
    answer = await web.post(
        "/portal/signout", data={"csrf": csrf}, headers={"referer": f"{ORIGIN}/portal/"}
    )
    assert answer.status_code == 303


# --- headers on every web answer ---


async def test_security_headers_on_every_web_answer(web: httpx.AsyncClient) -> None:
    csrf = await sign_in(web, "patient", "p1")
    answers = [
        await web.get("/portal/"),
        await web.get("/portal/signin"),
        await web.get("/portal/nowhere"),
        await web.get("/compliance/signin"),
        await web.get("/static/web/site.css"),
        await web.get("/static/web/missing.css"),
        await web.get("/portal/signin/start"),
        await web.get("/auth/authorize"),
        await web.post("/portal/signout", data={"csrf": "bad"}, headers=SAME_ORIGIN),
        await web.post("/portal/signout", data={"csrf": csrf}, headers=SAME_ORIGIN),
        await web.get("/compliance/"),
    ]
    for answer in answers:
        _assert_secured(answer)
    assert answers[0].headers["cache-control"] == "no-store"
    assert answers[4].status_code == 200
    assert answers[4].headers["content-type"].startswith("text/css")
    assert answers[2].status_code == 404
    assert "Page not found" in answers[2].text


async def test_pages_use_only_the_gateway_stylesheet(web: httpx.AsyncClient) -> None:
    await sign_in(web, "patient", "p1")
    html = (await web.get("/portal/")).text
    assert '<html lang="en">' in html
    assert '<main id="main"' in html
    assert 'href="/static/web/site.css"' in html
    assert "<script>" not in html
    assert "style=" not in html
    assert csrf_of(html)


async def test_callback_is_spent_once_used(web: httpx.AsyncClient) -> None:
    """The sign-in state cookie is deleted by the callback: replaying the callback URL (from
    the history, a log, a shoulder) signs nobody in again."""
    start = await web.get("/portal/signin/start")
    query = {k: v[0] for k, v in parse_qs(urlsplit(start.headers["location"]).query).items()}
    granted = await web.post(
        "/auth/authorize", data={**query, "who": "patient", "patient": "p1"}, headers=SAME_ORIGIN
    )
    back = urlsplit(granted.headers["location"])
    done = await web.get(f"{back.path}?{back.query}")
    assert done.status_code == 200
    cleared = [c for c in done.headers.get_list("set-cookie") if c.startswith(STATE_COOKIE)]
    assert cleared
    assert "max-age=0" in cleared[0].lower()
    web.cookies.delete(COOKIES["patient"])
    again = await web.get(f"{back.path}?{back.query}")
    assert again.status_code == 303
    assert "problem=expired" in again.headers["location"]
    assert (await web.get("/portal/")).status_code == 303


async def test_dev_authorize_is_no_token_faucet(web: httpx.AsyncClient) -> None:
    """Attack: anyone reaching the development endpoint asked for ``system/*.cruds`` (or any
    scope) for any client and callback, and got a token carrying it; now only the pages' own
    client, callbacks and scope sets are served, and an auditor only through the dashboard's
    callback."""
    start = await web.get("/portal/signin/start")
    query = {k: v[0] for k, v in parse_qs(urlsplit(start.headers["location"]).query).items()}
    attempts = [
        {**query, "scope": "system/*.cruds user/*.cruds"},
        {**query, "scope": query["scope"] + " user/AuditEvent.rs"},
        {**query, "client_id": "anything"},
        {**query, "redirect_uri": f"{ORIGIN}/x"},
        {**query, "redirect_uri": f"{ORIGIN}/compliance/callback"},  # the patient scopes
    ]
    for params in attempts:
        assert (await web.get("/auth/authorize", params=params)).status_code == 400
        posted = await web.post(
            "/auth/authorize", data={**params, "who": "auditor"}, headers=SAME_ORIGIN
        )
        assert posted.status_code == 400, params
        assert "location" not in posted.headers
    as_auditor = await web.post(
        "/auth/authorize", data={**query, "who": "auditor"}, headers=SAME_ORIGIN
    )
    assert as_auditor.status_code == 400
    assert "location" not in as_auditor.headers


async def test_dev_endpoints_answer_only_loopback_clients(
    make_app: Callable[..., Gateway], dev_key_file: Path
) -> None:
    """Attack: a development gateway listening on a network minted sign-in tokens for anyone
    on it. Without ``dev_signin_remote`` only a loopback client is served."""
    app = make_app(auth=auth_settings(dev_key_file))
    remote = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=remote, base_url=ORIGIN) as web:
        start = await web.get("/portal/signin/start")
        query = {k: v[0] for k, v in parse_qs(urlsplit(start.headers["location"]).query).items()}
        assert (await web.get("/auth/authorize", params=query)).status_code == 403
        posted = await web.post(
            "/auth/authorize",
            data={**query, "who": "patient", "patient": "p1"},
            headers=SAME_ORIGIN,
        )
        assert posted.status_code == 403
        assert "location" not in posted.headers
        token = await web.post("/auth/token", data={"grant_type": "authorization_code"})
        assert token.status_code == 403
    for host in ("127.0.0.1", "::1"):
        local = httpx.ASGITransport(app=app, client=(host, 50000))
        async with httpx.AsyncClient(transport=local, base_url=ORIGIN) as web:
            await sign_in(web, "patient", "p1")
            assert "Signed in as Patient/p1" in (await web.get("/portal/")).text


@pytest.mark.parametrize("area", ["portal", "compliance"])
async def test_sign_in_is_a_link_not_a_form(web: httpx.AsyncClient, area: str) -> None:
    """Attack on availability: the sign-in button was a GET form to ``signin/start``, which
    303s to the authorization server; with ``form-action 'self'`` Chromium blocks a form whose
    redirect leaves the site, so no one could sign in with an external server. A link (styled
    as a button, reached with Tab and followed with Enter) is not governed by form-action."""
    page = await web.get(f"/{area}/signin")
    assert page.status_code == 200
    assert "form-action 'self'" in page.headers["content-security-policy"]
    assert "<form" not in page.text
    assert f'<a class="button" href="/{area}/signin/start">Sign in</a>' in page.text
