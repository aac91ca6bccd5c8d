"""The ``/ledger`` HTTP API: checkpoints and proofs for anyone, leaf contents for readers.

=====================================================  ========================================
``GET /ledger/checkpoint``                             the latest signed checkpoint (C2SP
                                                       tlog-checkpoint note), ``text/plain``;
                                                       with a witness quorum, the latest one
                                                       that quorum cosigned, cosignatures
                                                       appended (503 until there is one)
``GET /ledger/proof/inclusion?index=I[&size=N]``       RFC 9162 §2.1.3 inclusion proof, JSON:
                                                       hashes only, never the leaf
``GET /ledger/proof/consistency?from=M[&to=N]``        RFC 9162 §2.1.4 consistency proof, JSON
``GET /ledger/entries?start=S[&end=E]``                leaves ``[S, E)``, at most 1,000, JSON;
                                                       an auditor's token only
``GET /ledger/receipt/{index}[?size=N]``               C2SP tlog-proof for one entry with its
                                                       leaf, text; a token that may read it;
                                                       without ``size``, against the witnessed
                                                       checkpoint once it covers the entry
=====================================================  ========================================

The first three are public and carry nothing that links entries to one another or to a
patient: a signed note, sizes, indexes and SHA-256 hashes (a leaf hash hides its leaf: the
leaf holds a random pseudonym and a salted commitment, so it cannot be guessed). That is all
a verifier needs: it checks checkpoints against each other (consistency) and a leaf it already
holds (from its receipt) against a checkpoint (inclusion by the receipt's index). The last two
reveal leaf *contents* (the patient's stable pseudonym, the microsecond time, the kind and
flags), which would let whoever links one entry to a person follow that person's history; they
need a bearer token verified by the gateway's :class:`~middleware.auth.verify.TokenVerifier`
and a reader allowed by :mod:`middleware.ledger.access` (401 without a valid token, 403 for a
token that may not read the leaf or list entries). The token is checked before anything is
read from the store.

Proofs are always against a *signed* size (``size``/``to`` default to the latest checkpoint;
one without a checkpoint is 404) and carry that checkpoint's note, so a client verifies the
note with the log's key, then the proof against its root. Hashes are base64. Bad parameters
are 400, sizes or indexes the log does not have are 404, an unavailable ledger is 503, each as
an OperationOutcome (``fhir.outcome.render_error``).

Proofs come from the service's in-memory tree (:attr:`LedgerService.tree
<middleware.ledger.service.LedgerService.tree>`, shared with the witnessing task), grown from
the store's leaf hashes as the log grows, and checked against each checkpoint's root before
use: a tree that disagrees with the store is dropped and the request fails (503) rather than
serve a proof that cannot verify.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from middleware.auth.identity import Identity
from middleware.consent.access import DEFAULT_ADMIN_ROLE
from middleware.errors import (
    BadRequest,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
)
from middleware.fhir.outcome import render_error
from middleware.ledger.access import (
    DEFAULT_AUDITOR_ROLE,
    Reader,
    check_leaf,
    check_listing,
    reader_of,
)
from middleware.ledger.entry import StoredCheckpoint
from middleware.ledger.errors import LedgerError, OutOfRangeError
from middleware.ledger.leaf import decode_leaf
from middleware.ledger.receipt import TlogProof, format_receipt
from middleware.ledger.service import LedgerService
from middleware.ledger.tree import MerkleLevels
from middleware.storage.ledger_base import LogStore, signed_as

__all__ = ["MAX_ENTRIES", "LeafReaders", "TokenCheck", "Witnessed", "ledger_routes"]

#: Most entries one ``/ledger/entries`` answer carries (RFC 6962 get-entries may answer less).
MAX_ENTRIES = 1000
_NUMBER = re.compile(r"0|[1-9][0-9]{0,18}")
_TEXT = "text/plain; charset=utf-8"
_Handler = Callable[[Request], Awaitable[Response]]


class TokenCheck(Protocol):
    """What the API needs of :class:`~middleware.auth.verify.TokenVerifier`."""

    async def verify(self, authorization: str | None) -> Identity: ...


@dataclass(frozen=True, slots=True)
class LeafReaders:
    """How the API recognises the readers of leaf contents (:mod:`middleware.ledger.access`):
    ``verifier`` checks the bearer token (the gateway's one verifier); ``pseudonym_of``
    returns the pseudonym the consent store holds for ``Patient/<id>`` (None: it has none);
    the roles are the settings ``ledger_auditor_role`` and ``consent_admin_role``."""

    verifier: TokenCheck
    pseudonym_of: Callable[[str], Awaitable[bytes | None]]
    auditor_role: str = DEFAULT_AUDITOR_ROLE
    admin_role: str = DEFAULT_ADMIN_ROLE

    async def reader(self, request: Request) -> Reader:
        """The verified reader of ``request``; Unauthorized (401) or Forbidden (403)."""
        identity = await self.verifier.verify(request.headers.get("authorization"))
        return reader_of(identity, auditor_role=self.auditor_role, admin_role=self.admin_role)


class Witnessed(Protocol):
    """What the API needs of :class:`~middleware.ledger.witnessing.Witnessing`."""

    quorum: int

    async def published(self) -> str | None: ...


def ledger_routes(
    service: LedgerService, readers: LeafReaders, witnessed: Witnessed | None = None
) -> list[BaseRoute]:
    """The routes of the ``/ledger`` API over ``service``; ``readers`` guards the leaf
    contents; ``witnessed``, when its quorum is above 0, is what ``/ledger/checkpoint``
    publishes (see the module docstring)."""
    api = _LedgerApi(service, readers, witnessed)
    endpoints: list[tuple[str, _Handler]] = [
        ("/ledger/checkpoint", api.checkpoint),
        ("/ledger/proof/inclusion", api.inclusion),
        ("/ledger/proof/consistency", api.consistency),
        ("/ledger/entries", api.entries),
        ("/ledger/receipt/{index}", api.receipt),
        ("/ledger/{rest:path}", api.not_found),
    ]
    return [Route(path, _guarded(fn), methods=_ANY_METHOD) for path, fn in endpoints]


_ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _guarded(handler: _Handler) -> _Handler:
    """GET (and HEAD) only; errors rendered as OperationOutcome in the one place."""

    async def endpoint(request: Request) -> Response:
        try:
            if request.method not in ("GET", "HEAD"):
                raise MethodNotAllowed("the ledger API is read-only", allowed=("GET", "HEAD"))
            return await handler(request)
        except OutOfRangeError as exc:
            return _error(NotFound(str(exc)))
        except LedgerError as exc:  # the store disagrees with itself or with the cache
            return _error(ServiceUnavailable(f"ledger unavailable: {exc}"))
        except GatewayError as exc:
            return _error(exc)

    return endpoint


class _LedgerApi:
    def __init__(
        self, service: LedgerService, readers: LeafReaders, witnessed: Witnessed | None
    ) -> None:
        self._service = service
        self._readers = readers
        self._witnessed = witnessed if witnessed is not None and witnessed.quorum else None

    async def checkpoint(self, _request: Request) -> Response:
        if self._witnessed is not None:
            # Only what a quorum of witnesses cosigned is published: a verifier holding it
            # knows that many independent parties saw this tree and no other at its size.
            note = await self._witnessed.published()
            if note is None:
                raise ServiceUnavailable("no checkpoint carries a quorum of cosignatures yet")
            return Response(note, media_type=_TEXT, headers={"cache-control": "no-cache"})
        latest = await (await self._service.store()).checkpoint()
        if latest is None:
            raise NotFound("the ledger has no checkpoint yet")
        return Response(latest.note, media_type=_TEXT, headers={"cache-control": "no-cache"})

    async def inclusion(self, request: Request) -> Response:
        index = _number(request, "index")
        store, signed = await self._signed(request, "size")
        tree = await self._tree_at(store, signed)
        if index >= signed.size:
            raise NotFound(f"entry {index} is not in the tree of size {signed.size}")
        # Hashes only: the leaf itself is served to its readers (receipt, entries).
        body = {
            "index": index,
            "size": signed.size,
            "leaf_hash": _b64(tree.leaf_hash(index)),
            "hashes": [_b64(h) for h in tree.inclusion_proof(index, signed.size)],
            "checkpoint": signed.note,
        }
        return JSONResponse(body)

    async def consistency(self, request: Request) -> Response:
        old = _number(request, "from")
        store, signed = await self._signed(request, "to")
        if old > signed.size:
            raise BadRequest(f"from ({old}) is larger than to ({signed.size})")
        tree = await self._tree_at(store, signed)
        hashes = tree.consistency_proof(old, signed.size)
        body = {
            "from": old,
            "to": signed.size,
            "hashes": [_b64(h) for h in hashes],
            "checkpoint": signed.note,
        }
        return JSONResponse(body)

    async def entries(self, request: Request) -> Response:
        check_listing(await self._readers.reader(request))
        start = _number(request, "start")
        store = await self._service.store()
        latest = await store.checkpoint()
        size = latest.size if latest is not None else 0
        end = _number(request, "end") if "end" in request.query_params else None
        if end is not None and end < start:
            raise BadRequest(f"end ({end}) is before start ({start})")
        if start > size:
            raise NotFound(f"start {start} is beyond the signed size {size}")
        end = size if end is None else end
        end = min(end, size, start + MAX_ENTRIES)
        leaves = await store.leaves(start, end)
        entries = [_entry(start + i, leaf) for i, leaf in enumerate(leaves)]
        return JSONResponse({"start": start, "end": end, "size": size, "entries": entries})

    async def receipt(self, request: Request) -> Response:
        reader = await self._readers.reader(request)
        index = _number(request, "index", request.path_params["index"])
        store, signed = await self._signed(request, "size")
        if index >= signed.size:
            raise NotFound(f"entry {index} is not in the tree of size {signed.size}")
        (leaf,) = await store.leaves(index, index + 1)
        own = None
        if reader.patient is not None:
            own = await self._readers.pseudonym_of(reader.patient)
        check_leaf(reader, decode_leaf(leaf), own)
        if "size" not in request.query_params:
            signed = await self._witnessed_for(store, index) or signed
        tree = await self._tree_at(store, signed)
        proof = TlogProof(index, tuple(tree.inclusion_proof(index, signed.size)), signed.note, leaf)
        return Response(format_receipt(proof), media_type=_TEXT)

    async def _witnessed_for(self, store: LogStore, index: int) -> StoredCheckpoint | None:
        """The published witnessed checkpoint, cosignatures included, when it covers entry
        ``index`` (None: no quorum configured, none yet, or the entry is newer)."""
        note = None if self._witnessed is None else await self._witnessed.published()
        if note is None:
            return None
        stored = await signed_as(store, note)
        if stored is None or index >= stored.size:
            return None
        return StoredCheckpoint(stored.size, stored.root, note)

    async def not_found(self, _request: Request) -> Response:
        raise NotFound("no such ledger resource")

    async def _signed(self, request: Request, name: str) -> tuple[LogStore, StoredCheckpoint]:
        """The store and the checkpoint for the size parameter ``name`` (default: latest)."""
        store = await self._service.store()
        size = _number(request, name) if name in request.query_params else None
        signed = await store.checkpoint(size)
        if signed is None:
            raise NotFound("no checkpoint" if size is None else f"no checkpoint for size {size}")
        return store, signed

    async def _tree_at(self, store: LogStore, signed: StoredCheckpoint) -> MerkleLevels:
        """The shared tree, grown to at least ``signed.size`` and agreeing with its root
        (a disagreement is a LedgerError: 503)."""
        return await self._service.tree.at(store, signed)


def _number(request: Request, name: str, text: str | None = None) -> int:
    """A non-negative decimal query (or path) parameter; BadRequest otherwise."""
    value = request.query_params.get(name) if text is None else text
    if value is None:
        raise BadRequest(f"parameter {name} is required")
    if not _NUMBER.fullmatch(value):
        raise BadRequest(f"parameter {name} must be a non-negative decimal integer")
    return int(value)


def _entry(index: int, leaf: bytes) -> dict[str, object]:
    decoded = decode_leaf(leaf)
    return {
        "index": index,
        "leaf": _b64(leaf),
        "kind": decoded.kind.label,
        "recorded_us": decoded.recorded_us,
        "pseudonym": None if decoded.pseudonym is None else decoded.pseudonym.hex(),
        "previous": decoded.previous,
        "consent": decoded.consent,
        "flags": int(decoded.flags),
        "commitment": _b64(decoded.commitment),
    }


def _error(error: GatewayError) -> Response:
    status, headers, body = render_error(error)
    response = Response(body, status_code=status)
    response.headers.update({k.decode("latin-1"): v.decode("latin-1") for k, v in headers})
    return response


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
