"""The gateway with witnesses configured, none of which answers: the ledger keeps recording,
``GET /ledger/checkpoint`` with a quorum answers 503 (an OperationOutcome, nothing
uncosigned), without a quorum it serves the latest checkpoint, and the failures are counted.
Publication with real witnesses is in ``tests/integration/test_witnessed_gateway.py``."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import httpx

from middleware.app import Gateway
from middleware.ledger.entry import NewEntry
from middleware.ledger.leaf import EntryFlag, EntryKind
from middleware.ledger.signing import Cosigner
from middleware.ledger.tree import MerkleLevels
from tests.app.consenting import auth_settings
from tests.support.peers import free_port

WITNESS = Cosigner.generate("w1.test")


def _witnesses() -> list[dict[str, str]]:
    """One witness at a port nothing listens on (free a moment ago)."""
    url = f"http://127.0.0.1:{free_port()}"
    return [{"name": WITNESS.name, "url": url, "vkey": WITNESS.vkey()}]


async def _append(app: Gateway, count: int) -> None:
    for n in range(count):
        entry = NewEntry.create(
            EntryKind.ACCESS_DECISION, b"evidence", recorded_us=n, flags=EntryFlag.PERMIT
        )
        await app.ledger.append(entry)


def _awaiting_one(make_app: Callable[..., Gateway], dev_key_file: Path) -> Gateway:
    """A gateway wanting one cosignature from the unreachable witness (2 s timeout)."""
    return make_app(
        auth=auth_settings(dev_key_file),
        witnesses=_witnesses(),
        witness_quorum=1,
        witness_timeout_seconds=2.0,
    )


async def _get(app: Gateway, path: str, **params: int) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
        return await c.get(path, params=params)


async def test_unreachable_witnesses_leave_the_ledger_working_and_publish_nothing(
    make_app: Callable[..., Gateway], dev_key_file: Path
) -> None:
    app = _awaiting_one(make_app, dev_key_file)
    try:
        await _append(app, 3)
        assert app.witnessing is not None
        await app.witnessing.submit_latest()
        await _append(app, 2)  # appends never wait for witnesses
        assert app.witnessing.failures == {"unreachable": 1}
        answer = await _get(app, "/ledger/checkpoint")
        assert answer.status_code == 503
        assert answer.json()["resourceType"] == "OperationOutcome"
        assert "\u2014" not in answer.text  # no note, cosigned or not
    finally:
        await app.aclose()


async def test_without_a_quorum_the_latest_checkpoint_is_served(
    make_app: Callable[..., Gateway], dev_key_file: Path
) -> None:
    app = make_app(auth=auth_settings(dev_key_file), witnesses=_witnesses(), witness_quorum=0)
    try:
        await _append(app, 3)
        answer = await _get(app, "/ledger/checkpoint")
        assert answer.status_code == 200
        assert answer.text.split("\n")[1] == "3"
    finally:
        await app.aclose()


async def test_proofs_and_witnessing_share_one_tree(
    make_app: Callable[..., Gateway], dev_key_file: Path
) -> None:
    """The witnessing round and a /ledger proof both need the log's tree: one is built and
    held, not one each (the tree costs about 140 MiB per 10**6 entries)."""
    before = {id(t) for t in gc.get_objects() if isinstance(t, MerkleLevels)}
    app = _awaiting_one(make_app, dev_key_file)
    try:
        await _append(app, 5)
        assert app.witnessing is not None
        await app.witnessing.submit_latest()
        answer = await _get(app, "/ledger/proof/inclusion", index=2)
        assert answer.status_code == 200
        gc.collect()
        trees = [
            t
            for t in gc.get_objects()
            if isinstance(t, MerkleLevels) and t.size and id(t) not in before
        ]
        assert [t.size for t in trees] == [5]
    finally:
        await app.aclose()
