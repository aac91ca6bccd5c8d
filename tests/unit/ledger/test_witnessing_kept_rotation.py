"""A witnessed checkpoint kept before ``consentry keys rotate`` and published after it
(:func:`~middleware.ledger.witnessed_store.signer_at`): the log's signature on it is the retired
key's, which the log's key events name for that size.

- a genuine kept note signed before a rotation is published by a gateway restarted with the
  successor key, witnesses down (it was refused as ``kept-log-signature``, and the gateway
  answered 503 until a witness quorum came back), right after the rotation, once the log grew
  under the new key, after two rotations, and on SQLite and PostgreSQL;
- without a key event naming the current key as successor (another key file, no rotation
  recorded), or with its signature line replaced in both rows, it is still refused.
"""

from __future__ import annotations

import base64
from dataclasses import replace

from middleware.ledger.rotation import record_rotation
from middleware.ledger.signing import SigningKey
from middleware.ledger.witnessing import Witnessing
from middleware.ledger.writer import checkpoint_signer
from middleware.storage.ledger_base import LogStore
from middleware.storage.ledger_memory import MemoryLogStore
from tests.contract.backends import Backend
from tests.contract.helpers import KEY, ORIGIN, entry
from tests.unit.ledger.test_witnessing import W1, W2, endpoint, router
from tests.unit.ledger.test_witnessing_kept import DOWN, NOW, backend, grow, witnesses

__all__ = ["backend"]  # the fixture, parametrized over memory, SQLite and PostgreSQL

NEW = SigningKey.from_seed(ORIGIN, bytes([9]) * 32)
THIRD = SigningKey.from_seed(ORIGIN, bytes([10]) * 32)


async def _publish(store: LogStore, key: SigningKey, *, up: bool) -> tuple[str | None, Witnessing]:
    """What a gateway signing with ``key`` publishes at its first call (a round first if
    ``up``: the witnesses cosign); its witnessing object, closed, for its failures."""

    async def opened() -> LogStore:
        return store

    async with router(witnesses({}) if up else DOWN, []) as client:
        replica = Witnessing(
            opened,
            [endpoint(W1), endpoint(W2)],
            quorum=2,
            client=client,
            clock=lambda: NOW,
            kept=opened,
            log_key=key.verifier(),
        )
        try:
            if up:
                await replica.submit_latest()
            return await replica.published(), replica
        finally:
            await replica.aclose()


async def _kept_before_rotation(store: LogStore) -> str:
    await grow(store, 3)
    note, _ = await _publish(store, KEY, up=True)
    assert note is not None
    assert await store.witnessed() == (3, note)
    return note


async def _rotate(store: LogStore, retired: SigningKey, successor: SigningKey) -> None:
    await record_rotation(store, retired, successor, origin=ORIGIN, recorded_us=1)


async def test_published_right_after_the_rotation_witnesses_down() -> None:
    store = await MemoryLogStore.open()
    note = await _kept_before_rotation(store)
    await _rotate(store, KEY, NEW)  # the key event at 3, signed by KEY at 4: NEW signed nothing
    published, replica = await _publish(store, NEW, up=False)
    assert published == note
    assert "kept-log-signature" not in replica.failures


async def test_published_once_the_log_grew_under_the_new_key(backend: Backend) -> None:
    store = await backend.open()
    try:
        note = await _kept_before_rotation(store)
        await _rotate(store, KEY, NEW)
        for n in range(5, 9):
            await store.append([entry(n)], sign=checkpoint_signer(NEW, ORIGIN))
        published, replica = await _publish(store, NEW, up=False)
        assert published == note
        assert "kept-log-signature" not in replica.failures
    finally:
        await store.close()


async def test_published_after_two_rotations() -> None:
    store = await MemoryLogStore.open()
    note = await _kept_before_rotation(store)
    await _rotate(store, KEY, NEW)
    await store.append([entry(5)], sign=checkpoint_signer(NEW, ORIGIN))
    await _rotate(store, NEW, THIRD)
    await store.append([entry(7)], sign=checkpoint_signer(THIRD, ORIGIN))
    published, _ = await _publish(store, THIRD, up=False)
    assert published == note


async def test_refused_without_a_key_event_naming_the_current_key() -> None:
    store = await MemoryLogStore.open()
    await _kept_before_rotation(store)
    published, replica = await _publish(store, NEW, up=False)  # no rotation recorded
    assert published is None
    assert replica.failures.get("kept-log-signature") == 1
    await _rotate(store, KEY, NEW)
    published, replica = await _publish(store, THIRD, up=False)  # NEW's successor? none
    assert published is None
    assert replica.failures.get("kept-log-signature") == 1


async def test_refused_when_the_retired_keys_signature_was_replaced_in_both_rows() -> None:
    store = await MemoryLogStore.open()
    await _kept_before_rotation(store)
    await _rotate(store, KEY, NEW)
    logged = await store.checkpoint(3)
    kept = await store.witnessed()
    assert logged is not None
    assert kept is not None
    # The DBA replaces the retired key's signature line in the checkpoint row and the kept
    # row alike (same key name and ID): only the retired key tells them apart.
    signature = logged.note.rstrip("\n").rsplit(" ", 1)[1]
    other = base64.b64encode(base64.b64decode(signature)[:4] + bytes(64)).decode()
    store.log.checkpoints[3] = replace(logged, note=logged.note.replace(signature, other))
    store.log.witnessed[3] = kept[1].replace(signature, other)
    published, replica = await _publish(store, NEW, up=False)
    assert published is None
    assert replica.failures.get("kept-log-signature") == 1
