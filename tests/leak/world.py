"""The setting every leak test attacks: a gateway (opt-out jurisdiction) in front of
:class:`~tests.leak.upstream.FakeFhir`, patient ``p1`` with an active consent that denies
``Practitioner/dr``, patient ``p2`` with none, and the callers' tokens. The gateway reaches
the upstream through ``httpx.MockTransport`` or, ``served``, over real HTTP with the client
named (``native``, the default, or ``aiohttp``; :mod:`tests.served_upstream`).

Also the assertions the tests share: nothing of p1 in an answer, a 404 that cannot be told
apart from a missing record's, what reached the upstream, what the ledger holds.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import respx

from middleware.app import Gateway, create_app
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.errors import ServiceUnavailable
from middleware.ledger.entry import AppendResult, NewEntry
from middleware.ledger.leaf import Leaf, decode_leaf
from middleware.ledger.sequencer import CheckpointSigner
from middleware.ledger.signing import SigningKey
from middleware.proxy.upstream import Upstream
from middleware.settings import load_settings
from middleware.storage.consent_memory import MemoryConsentStore
from middleware.storage.ledger_memory import MemoryLogStore
from tests.app.consenting import DEV_ISSUER, Tokens, auth_settings
from tests.leak.upstream import GATEWAY, SECRET, UPSTREAM, FakeFhir
from tests.served_upstream import Client, ServedUpstream

__all__ = [
    "DENY_DR",
    "FORM",
    "FlakyLogStore",
    "WallClock",
    "World",
    "assert_nothing_of_p1",
    "assert_same_not_found",
    "assert_withheld",
    "ids_in",
    "open_world",
]

#: p1's consent: permit by default, with one provision (an exception, so deny) for dr.
DENY_DR: Final = {
    "resourceType": "Consent",
    "status": "active",
    "subject": {"reference": "Patient/p1"},
    "decision": "permit",
    "provision": [{"actor": [{"reference": {"reference": "Practitioner/dr"}}]}],
}
FORM: Final = {"content-type": "application/x-www-form-urlencoded"}
_P1: Final = re.compile(r"(?<![A-Za-z0-9])p1(?![A-Za-z0-9])")
_IGNORED_HEADERS: Final = frozenset({"x-request-id", "content-length"})


class FlakyLogStore(MemoryLogStore):
    """A memory log store whose appends fail while ``failing`` is set (a ledger outage)."""

    failing = False

    async def append(
        self, batch: Sequence[NewEntry], *, sign: CheckpointSigner
    ) -> list[AppendResult]:
        if self.failing:
            raise ServiceUnavailable("the ledger database is down")
        return await super().append(batch, sign=sign)


class WallClock:
    """Seconds since the epoch, starting now, moved by hand (cursor expiry, consent periods)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    """One gateway with its upstream, ledger and callers (module docstring)."""

    gateway: Gateway
    http: httpx.AsyncClient
    fhir: FakeFhir
    router: respx.Router
    store: FlakyLogStore
    tokens: Tokens
    wall: WallClock
    dr: dict[str, str] = field(default_factory=dict)
    p2: dict[str, str] = field(default_factory=dict)

    @property
    def sent(self) -> list[httpx.Request]:
        """Every request the upstream received since the setting was seeded."""
        return [call.request for call in self.router.calls]

    @property
    def writes_sent(self) -> list[httpx.Request]:
        return [r for r in self.sent if r.method != "GET"]

    def upstream_answered_p1(self) -> bool:
        """Whether some upstream answer carried p1's data: the attack reached it, so a clean
        answer to the client means the gateway withheld it (the test is not vacuous)."""
        return any(SECRET in call.response.text for call in self.router.calls)

    def sent_params(self) -> list[list[tuple[str, str]]]:
        """The decoded query of each upstream request, in order."""
        return [list(r.url.params.multi_items()) for r in self.sent]

    async def ledger_size(self) -> int:
        return await self.store.size()

    async def leaves(self) -> list[tuple[bytes, Leaf]]:
        size = await self.store.size()
        return [(raw, decode_leaf(raw)) for raw in await self.store.leaves(0, size)]


async def open_world(
    key_file: Path,
    *,
    fhir: FakeFhir | None = None,
    signer: SigningKey | None = None,
    served: Client | None = None,
    **settings: Any,
) -> World:
    """A seeded :class:`World`: p1's consent created through the consent API by p1. With
    ``served`` (``"native"``, the default client, or ``"aiohttp"``), the gateway reaches the
    upstream with that client over real HTTP (:mod:`tests.served_upstream`), else through
    ``httpx.MockTransport``."""
    fhir = fhir or FakeFhir()
    router = respx.Router(assert_all_called=False)
    router.route().mock(side_effect=fhir.handle)
    store = FlakyLogStore()
    wall = WallClock()
    values: dict[str, Any] = {
        "upstream": UPSTREAM,
        "public_url": GATEWAY,
        "store": "memory:",
        "access_log": False,
        "consent_jurisdiction": "opt-out",
        "auth": auth_settings(key_file),
        **settings,
    }
    loaded = load_settings(overrides=values)
    upstream: httpx.AsyncBaseTransport | Upstream = httpx.MockTransport(router.async_handler)
    if served is not None:
        upstream = ServedUpstream(
            router.async_handler,
            loaded.upstream,
            client=served,
            pool_size=loaded.upstream_pool_size,
            connect_timeout=loaded.connect_timeout,
            read_timeout=loaded.read_timeout,
        )
    gateway = create_app(
        loaded,
        upstream=upstream,
        store=store,
        signer=signer or SigningKey.generate("gateway.test/fhir/ledger"),
        consents=MemoryConsentStore(),
        wall_clock=wall,
    )
    transport = httpx.ASGITransport(app=gateway, client=("203.0.113.7", 50000))
    http = httpx.AsyncClient(transport=transport, base_url="http://gateway.test")
    tokens = Tokens(UnsafeDevelopmentIssuer.from_key_file(key_file, DEV_ISSUER, enabled=True))
    created = await http.post("/fhir/Consent", json=DENY_DR, headers=tokens.patient("p1"))
    assert created.status_code == 201, created.text
    router.reset()
    return World(
        gateway=gateway,
        http=http,
        fhir=fhir,
        router=router,
        store=store,
        tokens=tokens,
        wall=wall,
        dr=tokens.practitioner("user/*.cruds"),
        p2=tokens.patient("p2", "patient/*.rs"),
    )


# -- assertions ----------------------------------------------------------------------------


def _without_links(node: Any) -> Any:
    """``node`` without Bundle links: they echo the client's own query (``self``) and carry
    cursors, neither of which is p1's data."""
    if isinstance(node, dict):
        return {k: _without_links(v) for k, v in node.items() if k != "link"}
    if isinstance(node, list):
        return [_without_links(item) for item in node]
    return node


def assert_nothing_of_p1(response: httpx.Response) -> None:
    """Nothing of p1 in ``response``: not its marker, not an id or reference naming p1, and
    never the upstream's host."""
    text = response.text
    assert SECRET not in text
    assert "upstream.test" not in text
    if not text:
        return
    stripped = json.dumps(_without_links(response.json()))
    found = _P1.search(stripped)
    assert found is None, stripped[max(0, found.start() - 80) : found.end() + 80]


def assert_withheld(world: World, response: httpx.Response) -> None:
    """The upstream handed p1's data to the gateway, and none of it reached the client."""
    assert world.upstream_answered_p1(), "the attack never reached p1's data"
    assert_nothing_of_p1(response)


def _comparable(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted(
        (k.lower(), v)
        for k, v in response.headers.multi_items()
        if k.lower() not in _IGNORED_HEADERS
    )
    return response.status_code, response.content, headers


def assert_same_not_found(world: World, denied: httpx.Response, missing: httpx.Response) -> None:
    """``denied`` is byte for byte the 404 a missing record gets (status, body, headers but
    the request id and length), and it was about p1's data that exists.

    "Exists" is checked, not assumed: either the upstream handed p1's data to the gateway for
    the denied request (its calls are found by the ``X-Request-Id`` the gateway forwards), or
    the gateway refused without asking and the record the path names holds p1's data
    upstream. Without this, a mistyped path or an upstream error gives two identical 404s and
    the test passes having tested nothing."""
    assert missing.status_code == 404, missing.text
    assert _comparable(denied) == _comparable(missing)
    rid = denied.headers["x-request-id"]
    answers = [
        call.response.text
        for call in world.router.calls
        if call.request.headers.get("x-request-id") == rid
    ]
    if answers:
        handed = any(SECRET in text or "Patient/p1" in text for text in answers)
        assert handed, "the upstream never handed over p1 data"
    else:
        assert _holds_p1_data(world, denied.request.url.path), "the path names no p1 data"


def _holds_p1_data(world: World, path: str) -> bool:
    """Whether the ``Type/id`` a gateway path names has, in any version, p1's data."""
    segments = [s for s in path.removeprefix("/fhir/").split("/") if s]
    if len(segments) < 2:
        return False
    versions = world.fhir.versions.get(f"{segments[0]}/{segments[1]}", [])
    texts = [json.dumps(version) for version in versions if version is not None]
    return any(SECRET in text or "Patient/p1" in text for text in texts)


def _resources(node: Any) -> Iterator[dict[str, Any]]:
    if not isinstance(node, dict):
        return
    if isinstance(node.get("resourceType"), str):
        yield node
    for key in ("entry", "contained"):
        for item in node.get(key) or []:
            if isinstance(item, dict):
                yield from _resources(item.get("resource") if key == "entry" else item)


def ids_in(document: Any) -> set[str]:
    """``Type/id`` of every resource with an id in ``document`` (entries of nested Bundles
    and contained resources too)."""
    return {f"{r['resourceType']}/{r['id']}" for r in _resources(document) if "id" in r}
