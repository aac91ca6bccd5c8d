"""``consentry witness serve`` as a real process cosigning the checkpoints of a real ledger
(a SQLite log store written through its append API), over HTTP; its state survives a restart
and it refuses a fork signed by the log's own key, keeping it (and not a bad proof) as evidence."""

from __future__ import annotations

from pathlib import Path

import httpx

from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.cosignature import verify_cosignatures
from middleware.ledger.merkle import consistency_proof, leaf_hash, root
from middleware.ledger.signing import CosignatureVerifier
from middleware.storage.ledger_open import open_log_store
from middleware.witness.protocol import SIZE_CONTENT_TYPE, format_submission
from middleware.witness.state import WitnessState
from tests.contract.helpers import KEY, ORIGIN, SIGN, entry
from tests.support.witness_peer import WitnessServer


async def test_a_witness_process_cosigns_every_checkpoint_of_a_real_ledger(tmp_path: Path) -> None:
    store = await open_log_store(f"sqlite:{tmp_path / 'ledger.db'}")
    witness = WitnessServer({ORIGIN: [KEY.vkey()]})
    try:
        witness.start()
        assert witness.key is not None
        verifier = CosignatureVerifier(witness.key)
        url = f"{witness.root_url}/add-checkpoint"
        async with httpx.AsyncClient(timeout=10.0) as client:
            old, last_note = 0, ""
            for batch in range(6):
                await store.append([entry(batch * 10 + n) for n in range(batch + 1)], sign=SIGN)
                latest = await store.checkpoint()
                assert latest is not None
                hashes = await store.leaf_hashes(0, latest.size)
                proof = consistency_proof(hashes, old, latest.size) if old else []
                answer = await client.post(url, content=format_submission(old, proof, latest.note))
                assert answer.status_code == 200, answer.text
                witnessed = latest.note + answer.text
                assert verify_cosignatures(witnessed, [verifier], 1) == {witness.key.name}
                old, last_note = latest.size, latest.note

            # Restarted on the same files, it still knows where the log was.
            witness.stop()
            witness.start()
            url = f"{witness.root_url}/add-checkpoint"  # a new port
            stale = format_submission(0, [], last_note)
            answer = await client.post(url, content=stale)
            assert answer.status_code == 409
            assert answer.text == f"{old}\n"
            assert answer.headers["content-type"].startswith(SIZE_CONTENT_TYPE)

            # A second tree of the same size, signed by the log's key: a split view.
            forked = [leaf_hash(b"forked %d" % n) for n in range(old)]
            fork = KEY.sign_checkpoint(Checkpoint(ORIGIN, old, root(forked)))
            answer = await client.post(url, content=format_submission(old, [], fork))
            assert answer.status_code == 409
            assert not answer.text.startswith("\u2014")

            # A larger tree with a proof that does not verify: the client's, not evidence.
            ahead = KEY.sign_checkpoint(Checkpoint(ORIGIN, old + 5, root(forked + forked[:5])))
            answer = await client.post(url, content=format_submission(old, [bytes(32)], ahead))
            assert answer.status_code == 422
        witness.stop()
        state = WitnessState(witness.state_path)
        try:
            assert state.get(ORIGIN).note == last_note
            assert state.forks(ORIGIN) == [fork]  # kept: the log signed both roots
        finally:
            state.close()
    finally:
        witness.close()
        await store.close()


async def test_the_witness_answers_bad_requests_without_a_500(tmp_path: Path) -> None:
    witness = WitnessServer({ORIGIN: [KEY.vkey()]})
    try:
        witness.start()
        async with httpx.AsyncClient(base_url=witness.root_url, timeout=10.0) as client:
            assert (await client.post("/add-checkpoint", content=b"\xff" * 100)).status_code == 400
            big = b"old 0\n" + b"A" * (70 * 1024)
            assert (await client.post("/add-checkpoint", content=big)).status_code == 413
            assert (await client.get("/add-checkpoint")).status_code == 405
            assert (await client.get("/nothing")).status_code == 404
    finally:
        witness.close()
