"""The portal's receipt check against a published checkpoint older than the receipt's: with a
witness quorum ``/ledger/checkpoint`` is the newest witnessed one, and a receipt made at once
names a newer, unwitnessed checkpoint. An honest log proves the published tree a prefix of the
receipt's: "not yet witnessed, check again later" (it said "does not match" before); a log
whose published tree is not a prefix of the receipt's still gets the mismatch text.

The gateway side is a small ASGI app serving a real Merkle tree's signed checkpoint and RFC 9162
consistency proofs, called through the portal's own :class:`GatewayApi`.
"""

from __future__ import annotations

import base64
import hashlib

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.signing import SigningKey
from middleware.ledger.tree import MerkleLevels
from middleware.web.api import GatewayApi
from middleware.web.receipt_check import _consistent
from middleware.web.text import t

ORIGIN = "example.org/log"
KEY = SigningKey.generate(ORIGIN)
WITNESSED, RECEIPT = 8, 10


def _tree(tag: bytes) -> MerkleLevels:
    tree = MerkleLevels()
    tree.extend([hashlib.sha256(tag + bytes([i])).digest() for i in range(RECEIPT)])
    return tree


def _gateway(tree: MerkleLevels, published: int) -> GatewayApi:
    """The ledger API of a log holding ``tree``, publishing its checkpoint at ``published``."""

    async def checkpoint(_request: Request) -> Response:
        note = KEY.sign_checkpoint(Checkpoint(ORIGIN, published, tree.root(published)))
        return Response(note, media_type="text/plain; charset=utf-8")

    async def consistency(request: Request) -> Response:
        first, second = int(request.query_params["from"]), int(request.query_params["to"])
        hashes = tree.consistency_proof(first, second)
        return JSONResponse({"hashes": [base64.b64encode(h).decode() for h in hashes]})

    app = Starlette(
        routes=[
            Route("/ledger/checkpoint", checkpoint),
            Route("/ledger/proof/consistency", consistency),
        ]
    )
    return GatewayApi(app, "http://gateway.test")


async def test_a_receipt_ahead_of_the_witnessed_checkpoint_is_not_yet_witnessed() -> None:
    tree = _tree(b"a")
    api = _gateway(tree, WITNESSED)
    try:
        found = await _consistent(api, Checkpoint(ORIGIN, RECEIPT, tree.root(RECEIPT)))
    finally:
        await api.aclose()
    assert found.ok
    assert found.text == t("receipt.check.not_yet_witnessed", size=WITNESSED)


async def test_a_receipt_whose_tree_does_not_extend_the_published_one_is_a_mismatch() -> None:
    published, other = _tree(b"a"), _tree(b"b")  # the receipt's tree shares no prefix
    api = _gateway(published, WITNESSED)
    try:
        found = await _consistent(api, Checkpoint(ORIGIN, RECEIPT, other.root(RECEIPT)))
    finally:
        await api.aclose()
    assert not found.ok
    assert found.text == t("receipt.check.inconsistent")


async def test_a_receipt_behind_the_published_checkpoint_still_checks_as_before() -> None:
    tree = _tree(b"a")
    api = _gateway(tree, RECEIPT)
    try:
        found = await _consistent(api, Checkpoint(ORIGIN, WITNESSED, tree.root(WITNESSED)))
    finally:
        await api.aclose()
    assert found.ok
    assert found.text == t("receipt.check.consistent", size=RECEIPT)
