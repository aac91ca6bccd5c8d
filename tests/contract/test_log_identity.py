"""The log's identity (``middleware.ledger.identity``) on memory, SQLite and PostgreSQL: a
reopened log is continued only by its own key and origin, or by the successor its final key
event names; anything else refuses to start before a checkpoint is signed."""

from __future__ import annotations

import pytest

from middleware.errors import ServiceUnavailable
from middleware.ledger.identity import LedgerIdentityError
from middleware.ledger.rotation import record_rotation
from middleware.ledger.service import LedgerService
from middleware.ledger.signing import SigningKey
from tests.contract.backends import Backend
from tests.contract.helpers import KEY, ORIGIN, entry

OTHER_KEY = SigningKey.from_seed(ORIGIN, bytes(range(1, 33)))


async def _run(backend: Backend, key: SigningKey, origin: str, *, count: int = 3) -> None:
    """Start a ledger service on the backend's log, append ``count`` entries, stop it."""
    service = LedgerService(backend.open, key, origin=origin)
    try:
        size = await (await service.store()).size()
        for n in range(size, size + count):
            await service.append(entry(n))
    finally:
        await service.aclose()


async def _refused(backend: Backend, key: SigningKey, origin: str) -> str:
    """Start a service that must refuse the log; the refusal's message. Nothing was signed."""
    store = await backend.open()
    before = await store.checkpoints()
    await store.close()
    service = LedgerService(backend.open, key, origin=origin)
    try:
        with pytest.raises(ServiceUnavailable) as refused:
            await service.store()
        with pytest.raises(ServiceUnavailable):  # and a request is 503, never a new checkpoint
            await service.append(entry(99))
    finally:
        await service.aclose()
    assert isinstance(refused.value.__cause__, LedgerIdentityError)
    store = await backend.open()
    assert await store.checkpoints() == before
    await store.close()
    return str(refused.value.__cause__)


async def test_the_same_key_and_origin_continue_the_log(backend: Backend) -> None:
    await _run(backend, KEY, ORIGIN)
    await _run(backend, KEY, ORIGIN)
    store = await backend.open()
    assert await store.size() == 6
    await store.close()


async def test_another_origin_is_refused_naming_both(backend: Backend) -> None:
    await _run(backend, KEY, ORIGIN)
    message = await _refused(backend, KEY, "127.0.0.1:9090/fhir/ledger")
    assert repr(ORIGIN) in message
    assert "'127.0.0.1:9090/fhir/ledger'" in message


async def test_another_key_is_refused_naming_both_keys(backend: Backend) -> None:
    await _run(backend, KEY, ORIGIN)
    message = await _refused(backend, OTHER_KEY, ORIGIN)
    assert f"{KEY.key_id:08x}" in message
    assert f"{OTHER_KEY.key_id:08x}" in message
    assert "keys rotate" in message


async def test_the_successor_of_a_recorded_rotation_continues_the_log(backend: Backend) -> None:
    await _run(backend, KEY, ORIGIN)
    store = await backend.open()
    await record_rotation(store, KEY, OTHER_KEY, origin=ORIGIN, recorded_us=10)
    await store.close()
    await _refused(backend, SigningKey.generate(ORIGIN), ORIGIN)  # not the named successor
    await _run(backend, OTHER_KEY, ORIGIN)
    await _refused(backend, KEY, ORIGIN)  # the retired key may not sign again


async def test_an_empty_log_takes_any_identity(backend: Backend) -> None:
    await _run(backend, OTHER_KEY, "another.example/ledger", count=0)
    await _refused(backend, KEY, ORIGIN)
