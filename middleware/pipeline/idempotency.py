"""The gateway's idempotency tags on created resources, and the codes they carry.

A create that carries an ``Idempotency-Key`` header (IETF draft-ietf-httpapi-idempotency-key-
header) can be retried safely, across restarts and replicas: the gateway tags the resource
(``meta.tag`` of :data:`IDEMPOTENCY_TAG`, its code an HMAC, under a key derived from the
ledger key, of the caller's issuer, subject, client and the key: nobody without the gateway's
key computes another caller's code, :func:`key_code`) and sends it as a conditional create on
that tag (FHIR R4 http.html#ccreate, ``If-None-Exist``), so the upstream answers a retry of a
create it already stored with that resource (200) instead of storing it twice. Another
caller's key never matches. A second tag (:data:`IDEMPOTENCY_REQUEST_TAG`) binds the key to
the request: an HMAC of the key's code and of the resource as sent (:func:`request_code`);
when the upstream answers 200 with a record whose request tag differs, the key was reused for
another request and the answer is 422 (the draft's "Idempotency-Key is already being used for
a different request payload"), never the other request's record
(:mod:`~middleware.pipeline.write_forward`). A client may not write the gateway's tags
itself, in any write, transaction and batch entries included (400): an update or patch may
keep or leave out the tags the resource has, never add or change one
(:func:`refuse_own_tags`). With the client's own ``If-None-Exist`` its criteria decide, and
the key is only the tag.

Every create is tagged so (a random code when the client gives no key; no ``If-None-Exist``
then): the tag is how the reconciliation probe finds the create again
(:mod:`~middleware.pipeline.write_forward`, ``proxy.reconcile``). Pure: no I/O here.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from middleware.errors import BadRequest
from middleware.fhir import jsoncodec
from middleware.ledger.signing import keyed_digest

__all__ = [
    "IDEMPOTENCY_REQUEST_TAG",
    "IDEMPOTENCY_TAG",
    "key_code",
    "own_tags",
    "refuse_own_tags",
    "request_code",
    "with_tags",
]

#: The ``meta.tag`` system of the tag an ``Idempotency-Key`` create is stored with.
IDEMPOTENCY_TAG: Final = "https://consentry.dev/CodeSystem/idempotency"
#: The ``meta.tag`` system of the tag binding an ``Idempotency-Key`` to the request it came with.
IDEMPOTENCY_REQUEST_TAG: Final = "https://consentry.dev/CodeSystem/idempotency-request"
_OWN_SYSTEMS: Final = frozenset({IDEMPOTENCY_TAG, IDEMPOTENCY_REQUEST_TAG})
_OWN_TAG: Final = "the idempotency tag is set by the gateway, from Idempotency-Key"
#: Longest ``Idempotency-Key`` accepted (a UUID fits six times over).
_MAX_KEY: Final = 200


def key_code(tag_key: bytes, binding: str, key: str) -> str:
    """The tag code of ``key`` for the caller ``binding`` names (issuer, subject, client): 128
    bits of HMAC-SHA256 under ``tag_key``, so one caller's key never matches another's, and
    nobody without the gateway's key can compute (and plant) a caller's code. ``key`` is a
    Structured Field string (``"..."``, as the draft has it) or a bare token; 1..200 visible
    ASCII characters (400 otherwise)."""
    text = key.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    if not (0 < len(text) <= _MAX_KEY and all("!" <= c <= "~" for c in text)):
        raise BadRequest(f"Idempotency-Key must be 1 to {_MAX_KEY} visible ASCII characters")
    return keyed_digest(tag_key, [b"key", binding.encode(), text.encode()])[:16].hex()


def request_code(tag_key: bytes, code: str, body: dict[str, Any]) -> str:
    """The request tag's code: 128 bits of HMAC-SHA256 under ``tag_key`` of the key's ``code``
    and the SHA-256 of ``body`` as sent (canonical JSON, its ``meta`` included: a security
    label is part of the request), before the gateway's tags are added."""
    digest = hashlib.sha256(jsoncodec.encode_canonical(body)).digest()
    return keyed_digest(tag_key, [b"request", code.encode(), digest])[:16].hex()


def with_tags(body: dict[str, Any], tags: list[tuple[str, str]]) -> dict[str, Any]:
    """``body`` with the ``(system, code)`` tags added to ``meta.tag`` (R4 Meta.tag)."""
    meta = body.get("meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    have = meta.get("tag")
    meta["tag"] = [
        *(have if isinstance(have, list) else []),
        *({"system": system, "code": code} for system, code in tags),
    ]
    return {**body, "meta": meta}


def own_tags(resource: dict[str, Any]) -> frozenset[tuple[str, str]]:
    """The ``(system, code)`` of the gateway's idempotency tags on ``resource``."""
    meta = resource.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    return frozenset(
        (str(tag.get("system")), str(tag.get("code")))
        for tag in (tags if isinstance(tags, list) else ())
        if isinstance(tag, dict) and tag.get("system") in _OWN_SYSTEMS
    )


def refuse_own_tags(body: dict[str, Any], current: dict[str, Any] | None) -> None:
    """Raise 400 unless every gateway tag on ``body`` (a resource a client writes) is already
    on ``current`` (the version it replaces; None for a create): a client may keep or leave
    out the gateway's tags (its PUT rarely carries ``meta``), never set, add or change one.
    A tag it wrote itself would squat another request's Idempotency-Key."""
    if not own_tags(body) <= (frozenset() if current is None else own_tags(current)):
        raise BadRequest(_OWN_TAG)
