"""The patient portal through the gateway: every page renders, create / change / revoke land
on the ledger before the page confirms, receipts download and check, "who looked at my
record" lists reads (break-the-glass explained), and another patient's data is the generic
not-found page."""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import AsyncIterator, Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from middleware.app import Gateway
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.ledger.leaf import EntryKind
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.consenting import AUDIENCE, DEV_ISSUER, auth_settings, ledger_entries
from tests.app.web_signin import ORIGIN, SAME_ORIGIN, sign_in


@pytest.fixture
def make_web(
    make_app: Callable[..., Gateway], dev_key_file: Path
) -> Callable[..., httpx.AsyncClient]:
    def make(**overrides: Any) -> httpx.AsyncClient:
        overrides.setdefault("auth", auth_settings(dev_key_file, dev_signin_remote=True))
        overrides.setdefault("consent_jurisdiction", "opt-out")
        app = make_app(**overrides)
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        return httpx.AsyncClient(transport=transport, base_url=ORIGIN)

    return make


@pytest.fixture
async def web(make_web: Callable[..., httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    async with make_web() as c:
        yield c


@pytest.fixture
def issuer(dev_key_file: Path) -> UnsafeDevelopmentIssuer:
    return UnsafeDevelopmentIssuer.from_key_file(dev_key_file, DEV_ISSUER, enabled=True)


DENY_DR = {
    "decision": "deny",
    "who": "practitioner",
    "who_id": "dr-smith",
    "what": "all",
    "purpose": "",
    "until": "",
}


async def _create(web: httpx.AsyncClient, csrf: str, choices: dict[str, Any]) -> httpx.Response:
    review = await web.post(
        "/portal/consents/new/review", data={**choices, "csrf": csrf}, headers=SAME_ORIGIN
    )
    assert review.status_code == 200, review.text
    return await web.post(
        "/portal/consents/new/save", data={**choices, "csrf": csrf}, headers=SAME_ORIGIN
    )


def _index(html: str) -> int:
    found = re.search(r"entry number (\d+)", html)
    assert found, html
    return int(found.group(1))


def _consent_id(html: str) -> str:
    found = re.search(r'href="/portal/consents/([A-Za-z0-9\-.]+)">Details', html)
    assert found, html
    return found.group(1)


# --- pages render ---


async def test_every_portal_page_renders(web: httpx.AsyncClient) -> None:
    await sign_in(web, "patient", "p1")
    for path in ("/portal/", "/portal/consents/new", "/portal/access", "/portal/receipts/check"):
        answer = await web.get(path)
        assert answer.status_code == 200, (path, answer.text)
        assert "<h1>" in answer.text
    assert "You have not made any choices yet" in (await web.get("/portal/")).text


# --- create, change, revoke: on the ledger before the page confirms ---


async def test_create_lands_on_the_ledger(web: httpx.AsyncClient, store: MemoryLogStore) -> None:
    csrf = await sign_in(web, "patient", "p1")
    review = await web.post(
        "/portal/consents/new/review", data={**DENY_DR, "csrf": csrf}, headers=SAME_ORIGIN
    )
    assert "Practitioner dr-smith may not see all your records." in review.text
    before = await store.size()
    saved = await web.post(
        "/portal/consents/new/save", data={**DENY_DR, "csrf": csrf}, headers=SAME_ORIGIN
    )
    assert saved.status_code == 200, saved.text
    index = _index(saved.text)
    entries = await ledger_entries(store)
    assert entries[index].kind == EntryKind.CONSENT
    assert index >= before
    assert b"Practitioner/dr-smith" in entries[index].evidence
    home = await web.get("/portal/")
    assert "Practitioner dr-smith may not see all your records." in home.text
    assert f"/portal/receipts/{index}" in home.text


async def test_review_saves_nothing(web: httpx.AsyncClient, store: MemoryLogStore) -> None:
    csrf = await sign_in(web, "patient", "p1")
    await web.post(
        "/portal/consents/new/review", data={**DENY_DR, "csrf": csrf}, headers=SAME_ORIGIN
    )
    kinds = [e.kind for e in await ledger_entries(store)]
    assert EntryKind.CONSENT not in kinds


async def test_change_then_revoke(web: httpx.AsyncClient, store: MemoryLogStore) -> None:
    csrf = await sign_in(web, "patient", "p1")
    consent_id = _consent_id((await _create(web, csrf, DENY_DR)).text)
    form = await web.get(f"/portal/consents/{consent_id}/change")
    assert 'value="dr-smith"' in form.text  # pre-filled from the consent itself
    changed = {
        **DENY_DR,
        "decision": "permit",
        "what": "some",
        "kind": "Observation",
        "label": "PSY",
        "until": "2099-06-30",
    }
    review = await web.post(
        f"/portal/consents/{consent_id}/review", data={**changed, "csrf": csrf}, headers=SAME_ORIGIN
    )
    assert "Practitioner dr-smith may not see all your records." in review.text  # now
    after = (
        "Practitioner dr-smith may see your test results and measurements marked as "
        "psychiatry notes from "
    )
    assert after in review.text
    etag = re.search(r'name="etag" value="([^"]+)"', review.text)
    assert etag
    saved = await web.post(
        f"/portal/consents/{consent_id}/save",
        data={**changed, "csrf": csrf, "etag": etag.group(1).replace("&#34;", '"')},
        headers=SAME_ORIGIN,
    )
    assert saved.status_code == 200, saved.text
    assert (await ledger_entries(store))[_index(saved.text)].kind == EntryKind.CONSENT
    confirm = await web.get(f"/portal/consents/{consent_id}/revoke")
    assert "until 2099-06-30" in confirm.text
    revoked = await web.post(
        f"/portal/consents/{consent_id}/revoke", data={"csrf": csrf}, headers=SAME_ORIGIN
    )
    assert revoked.status_code == 200, revoked.text
    assert (await ledger_entries(store))[_index(revoked.text)].kind == EntryKind.CONSENT_REVOKE
    details = await web.get(f"/portal/consents/{consent_id}")
    assert "No longer in effect" in details.text
    assert details.text.count("/portal/receipts/") >= 3  # one receipt per change


async def test_bad_choices_show_the_form_again(web: httpx.AsyncClient) -> None:
    csrf = await sign_in(web, "patient", "p1")
    bad = {**DENY_DR, "who_id": "../Patient/p2", "until": "2001-01-01"}
    answer = await web.post(
        "/portal/consents/new/review", data={**bad, "csrf": csrf}, headers=SAME_ORIGIN
    )
    assert answer.status_code == 400
    assert "Type their ID" in answer.text
    assert "The end date must be" in answer.text


# --- CSRF ---


@pytest.mark.parametrize(
    ("csrf", "headers"),
    [
        pytest.param(None, SAME_ORIGIN, id="no-token"),
        pytest.param("forged", SAME_ORIGIN, id="wrong-token"),
        pytest.param("own", {"origin": "https://evil.example"}, id="foreign-origin"),
    ],
)
async def test_csrf_refused_on_save_and_revoke(
    web: httpx.AsyncClient, store: MemoryLogStore, csrf: str | None, headers: dict[str, str]
) -> None:
    own = await sign_in(web, "patient", "p1")
    consent_id = _consent_id((await _create(web, own, DENY_DR)).text)
    size = await store.size()
    data = {} if csrf is None else {"csrf": own if csrf == "own" else csrf}
    saved = await web.post("/portal/consents/new/save", data={**DENY_DR, **data}, headers=headers)
    revoked = await web.post(f"/portal/consents/{consent_id}/revoke", data=data, headers=headers)
    assert saved.status_code == 403
    assert revoked.status_code == 403
    assert await store.size() == size  # nothing recorded, not even an attempt


# --- another patient's data ---


async def test_another_patients_consent_is_not_found(
    make_web: Callable[..., httpx.AsyncClient], store: MemoryLogStore
) -> None:
    async with make_web() as alice, make_web() as mallory:
        alice_csrf = await sign_in(alice, "patient", "alice")
        created = await _create(alice, alice_csrf, DENY_DR)
        consent_id = _consent_id(created.text)
        index = _index(created.text)
        csrf = await sign_in(mallory, "patient", "mallory")
        for path in (
            f"/portal/consents/{consent_id}",
            f"/portal/consents/{consent_id}/change",
            f"/portal/consents/{consent_id}/revoke",
            f"/portal/receipts/{index}",
            f"/portal/receipts/{index}/download",
            "/portal/consents/does-not-exist",
            "/portal/consents/bad%2Fid",
        ):
            answer = await mallory.get(path)
            assert answer.status_code == 404, (path, answer.status_code)
            assert "Page not found" in answer.text
            assert "dr-smith" not in answer.text
        # Saving a change or revoking: someone else's consent and one that does not exist are
        # the same 404 (a save to another's consent was a 403 "Not allowed" while a new id
        # was a 200 "Saved": the PUT created it), and nothing is created or changed.
        consents = [e for e in await ledger_entries(store) if e.kind == EntryKind.CONSENT]
        for target in (consent_id, "does-not-exist"):
            for action, data in (
                ("save", {**DENY_DR, "decision": "permit", "csrf": csrf, "etag": 'W/"1"'}),
                ("save", {**DENY_DR, "csrf": csrf}),
                ("review", {**DENY_DR, "csrf": csrf}),
                ("revoke", {"csrf": csrf}),
            ):
                posted = await mallory.post(
                    f"/portal/consents/{target}/{action}", data=data, headers=SAME_ORIGIN
                )
                assert posted.status_code == 404, (target, action, posted.status_code)
                assert "Page not found" in posted.text
                assert "dr-smith" not in posted.text
        after = [e for e in await ledger_entries(store) if e.kind == EntryKind.CONSENT]
        assert len(after) == len(consents)
        assert (await mallory.get("/portal/consents/does-not-exist")).status_code == 404
        assert "dr-smith" not in (await mallory.get("/portal/")).text
        # alice's consent is untouched
        assert "In effect" in (await alice.get(f"/portal/consents/{consent_id}")).text


async def _raw(
    client: httpx.AsyncClient, method: str, path: str, body: bytes = b""
) -> tuple[int, str]:
    """``path`` sent to the app exactly as written: httpx would remove its dot segments
    (RFC 3986 §5.2.4) before sending, and a browser or proxy may not."""
    transport = client._transport  # the app behind this test client
    assert isinstance(transport, httpx.ASGITransport)
    cookies = "; ".join(f"{c.name}={c.value}" for c in client.cookies.jar)
    headers = [
        (b"host", b"gateway.test"),
        (b"cookie", cookies.encode()),
        (b"origin", ORIGIN.encode()),
    ]
    if body:
        headers += [(b"content-type", b"application/x-www-form-urlencoded")]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("203.0.113.7", 50000),
        "server": ("gateway.test", 80),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    out: dict[str, Any] = {"status": 0, "body": b""}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] += message.get("body", b"")

    await transport.app(scope, receive, send)
    return out["status"], out["body"].decode()


async def test_a_consent_id_of_dots_is_not_found(
    web: httpx.AsyncClient, router: respx.Router
) -> None:
    """Attack: ``.`` and ``..`` passed as consent ids, and the HTTP client collapsed
    ``Consent/..`` to the Consent base: the page answered with a search of the patient's
    consents (and a save would have posted to the base). Ids made only of dots are not FHIR
    ids: the generic 404, and no API call."""
    csrf = await sign_in(web, "patient", "p1")
    await _create(web, csrf, DENY_DR)
    body = f"csrf={csrf}&decision=deny&who=practitioner&who_id=dr-smith&what=all".encode()
    for dots in (".", ".."):
        for method, path in (
            ("GET", f"/portal/consents/{dots}"),
            ("GET", f"/portal/consents/{dots}/change"),
            ("GET", f"/portal/consents/{dots}/revoke"),
            ("POST", f"/portal/consents/{dots}/review"),
            ("POST", f"/portal/consents/{dots}/save"),
            ("POST", f"/portal/consents/{dots}/revoke"),
        ):
            status, text = await _raw(web, method, path, body if method == "POST" else b"")
            assert status == 404, (method, path, status)
            assert "Page not found" in text
            assert "dr-smith" not in text
    assert not router.calls  # nothing reached the upstream either


# --- receipts ---


async def test_receipt_download_and_check(web: httpx.AsyncClient) -> None:
    csrf = await sign_in(web, "patient", "p1")
    index = _index((await _create(web, csrf, DENY_DR)).text)
    page = await web.get(f"/portal/receipts/{index}")
    assert page.status_code == 200
    assert "Entry number" in page.text
    download = await web.get(f"/portal/receipts/{index}/download")
    assert download.status_code == 200
    assert "attachment" in download.headers["content-disposition"]
    receipt = download.text
    assert receipt.startswith("c2sp.org/tlog-proof@v1\n")
    checked = await web.get(f"/portal/receipts/{index}/check")
    assert checked.text.count("Passed:") == 2
    assert "Failed:" not in checked.text
    # uploaded as a file after more entries were recorded: still included, log only grew
    await _create(web, csrf, {**DENY_DR, "who_id": "dr-jones"})
    uploaded = await web.post(
        "/portal/receipts/check",
        data={"csrf": csrf},
        files={"file": ("receipt.txt", receipt.encode(), "text/plain")},
        headers=SAME_ORIGIN,
    )
    assert uploaded.status_code == 200
    assert uploaded.text.count("Passed:") == 2


async def test_a_changed_receipt_fails_the_check(web: httpx.AsyncClient) -> None:
    csrf = await sign_in(web, "patient", "p1")
    index = _index((await _create(web, csrf, DENY_DR)).text)
    receipt = (await web.get(f"/portal/receipts/{index}/download")).text
    lines = receipt.split("\n")
    extra = lines[1]
    assert extra.startswith("extra ")
    flipped = extra[:-6] + ("A" if extra[-6] != "A" else "B") + extra[-5:]
    forged = "\n".join([lines[0], flipped, *lines[2:]])
    for text in (forged, "not a receipt"):
        answer = await web.post(
            "/portal/receipts/check", data={"csrf": csrf, "receipt": text}, headers=SAME_ORIGIN
        )
        assert answer.status_code == 200
        assert "Failed:" in answer.text
        assert "Passed:" not in answer.text


@pytest.mark.parametrize("recorded_us", [2**64 - 1, 2**62])
async def test_a_receipt_with_an_impossible_time_does_not_check(
    web: httpx.AsyncClient, recorded_us: int
) -> None:
    """Attack: a pasted receipt whose leaf's time (bytes 8-16, microseconds) lies past year
    9999 made the page a 500 (the conversion overflowed outside the parse's error handling);
    it is a receipt that does not read."""
    csrf = await sign_in(web, "patient", "p1")
    index = _index((await _create(web, csrf, DENY_DR)).text)
    receipt = (await web.get(f"/portal/receipts/{index}/download")).text
    found = re.search(r"^extra (\S+)$", receipt, re.M)
    assert found is not None
    leaf = bytearray(base64.b64decode(found.group(1)))
    leaf[8:16] = struct.pack(">Q", recorded_us)
    forged = receipt.replace(found.group(1), base64.b64encode(bytes(leaf)).decode())
    answer = await web.post(
        "/portal/receipts/check", data={"csrf": csrf, "receipt": forged}, headers=SAME_ORIGIN
    )
    assert answer.status_code == 200
    assert "This is not a receipt we can read." in answer.text
    assert "Passed:" not in answer.text


# --- who looked at my record ---


async def test_who_looked_lists_reads_and_explains_break_the_glass(
    web: httpx.AsyncClient, router: respx.Router, issuer: UnsafeDevelopmentIssuer
) -> None:
    router.get("/Observation/o1").respond(
        200,
        json={
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"},
        },
    )
    for who, purposes in (("dr-smith", ()), ("dr-er", ("BTG",))):
        token = issuer.issue(
            who,
            scopes="user/*.rs",
            audience=AUDIENCE,
            fhir_user=f"Practitioner/{who}",
            purpose_of_use=purposes,
        )
        read = await web.get("/fhir/Observation/o1", headers={"authorization": f"Bearer {token}"})
        assert read.status_code == 200
    await sign_in(web, "patient", "p1")
    page = await web.get("/portal/access")
    assert page.status_code == 200
    assert "<td>Practitioner/dr-smith</td>" in page.text
    assert "<td>Practitioner/dr-er</td>" in page.text
    assert "Emergency access" in page.text
    assert "Looked at" in page.text
    again = await web.get("/portal/access")  # the first page's own search is on it now
    assert "<td>You</td>" in again.text
    only = await web.get("/portal/access", params={"who": "Practitioner/dr-smith"})
    assert "<td>Practitioner/dr-smith</td>" in only.text
    assert "<td>Practitioner/dr-er</td>" not in only.text
    future = await web.get("/portal/access", params={"from": "2099-01-01"})
    assert "<td>Practitioner/dr-smith</td>" not in future.text
    bad = await web.get("/portal/access", params={"from": "yesterday"})
    assert bad.status_code == 400


async def test_who_looked_pages_through_the_api(
    web: httpx.AsyncClient, router: respx.Router, issuer: UnsafeDevelopmentIssuer
) -> None:
    router.get("/Observation/o1").respond(
        200,
        json={
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"},
        },
    )
    token = issuer.issue(
        "dr-smith", scopes="user/*.rs", audience=AUDIENCE, fhir_user="Practitioner/dr-smith"
    )
    for _ in range(55):
        await web.get("/fhir/Observation/o1", headers={"authorization": f"Bearer {token}"})
    await sign_in(web, "patient", "p1")
    first = await web.get("/portal/access")
    older = re.search(r'href="(/portal/access\?[^"]+)"', first.text)
    assert older
    second = await web.get(older.group(1).replace("&amp;", "&"))
    assert second.status_code == 200
    assert "<td>Practitioner/dr-smith</td>" in second.text


# --- nothing a browser sends gives a 500 ---


async def test_odd_requests_are_4xx_pages(web: httpx.AsyncClient) -> None:
    csrf = await sign_in(web, "patient", "p1")
    gets = [
        "/portal/receipts/99999999999999999999",
        "/portal/receipts/-1",
        "/portal/receipts/12/download",
        "/portal/access?cursor=not-a-cursor",
        "/portal/access?from=2026-02-30",
        "/portal/access?who=%00",
        "/portal/consents/" + "a" * 65,
        "/portal/consents/x/nothing",
    ]
    for path in gets:
        answer = await web.get(path)
        assert 400 <= answer.status_code < 500, (path, answer.status_code)
        assert "<h1>" in answer.text
    posts: list[tuple[str, dict[str, Any]]] = [
        (
            "/portal/consents/new/review",
            {
                "content": b"--x\r\nnot multipart",
                "headers": {"content-type": "multipart/form-data; boundary=x"},
            },
        ),
        (
            "/portal/consents/new/review",
            {"data": {f"f{i}": "1" for i in range(300)} | {"csrf": csrf}},
        ),
        ("/portal/consents/new/save", {"data": {"csrf": csrf, "decision": "permit"}}),
        (
            "/portal/receipts/check",
            {"data": {"csrf": csrf, "receipt": "c2sp.org/tlog-proof@v1\nindex 01\n\nx"}},
        ),
        ("/portal/", {"data": {"csrf": csrf}}),
    ]
    for path, kwargs in posts:
        headers = {**SAME_ORIGIN, **kwargs.pop("headers", {})}
        answer = await web.post(path, headers=headers, **kwargs)
        assert 200 <= answer.status_code < 500, (path, answer.status_code)
        assert answer.status_code != 200 or "Failed:" in answer.text


async def test_api_calls_carry_the_browsers_address(
    web: httpx.AsyncClient, issuer: UnsafeDevelopmentIssuer
) -> None:
    """The audit of a page's API call names the browser's address (203.0.113.7 here), as a
    direct call would, not the gateway's loopback."""
    await sign_in(web, "patient", "p1")
    assert (await web.get("/portal/access")).status_code == 200
    auditor = issuer.issue(
        "officer", scopes="user/AuditEvent.rs", audience=AUDIENCE, roles=["ledger-auditor"]
    )
    found = await web.get(
        "/fhir/AuditEvent",
        params={"patient": "Patient/p1", "subtype": "search-type"},
        headers={"authorization": f"Bearer {auditor}"},
    )
    assert found.status_code == 200, found.text
    assert "203.0.113.7" in found.text
    assert "127.0.0.1" not in found.text


async def test_home_lists_consents_in_force_first_then_newest(web: httpx.AsyncClient) -> None:
    csrf = await sign_in(web, "patient", "p1")
    await _create(web, csrf, DENY_DR)
    jones = _consent_id((await _create(web, csrf, {**DENY_DR, "who_id": "dr-jones"})).text)
    home = (await web.get("/portal/")).text
    assert home.index("dr-jones") < home.index("dr-smith")
    await web.post(f"/portal/consents/{jones}/revoke", data={"csrf": csrf}, headers=SAME_ORIGIN)
    home = (await web.get("/portal/")).text
    assert home.index("dr-smith") < home.index("dr-jones")
