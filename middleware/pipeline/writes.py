"""Enforcement of writes: create, update, patch, delete and their conditional forms.

A write is checked against the patient compartment of the resource *before* the change (the
current version, fetched from the upstream) and *after* it (the submitted body, or the current
version with the JSON Patch applied, :mod:`~middleware.pipeline.jsonpatch`), so a write can
neither touch a record the caller may not see nor move a resource into or out of a compartment
whose consent does not allow the write (FHIR consentaction ``collect`` for what is new,
``correct`` for what exists). Then, in this order (architecture invariant 1):

1. the decision is recorded on the ledger (``record(ask, status, "decision")``);
2. the request is forwarded, pinned to the version that was checked with ``If-Match`` (FHIR
   R4 http.html#concurrency), so a concurrent change makes the upstream refuse (412) rather
   than apply the write to a version nobody checked; a patch is never forwarded: the
   resource the gateway computed and judged is sent as that pinned update (``PUT``);
3. the answer is released like a read (``Prefer: return=representation`` bodies are filtered)
   and its outcome recorded by the caller of the flow.

A create that carries an ``Idempotency-Key`` header (IETF draft-ietf-httpapi-idempotency-key-
header) can be retried safely, across restarts and replicas: the gateway tags the resource
(``meta.tag`` of :data:`IDEMPOTENCY_TAG`, its code an HMAC, under a key derived from the
ledger key, of the caller's issuer, subject, client and the key: nobody without the gateway's
key computes another caller's code) and sends it as a conditional create on that tag (FHIR R4
http.html#ccreate, ``If-None-Exist``), so the upstream answers a retry of a create it already
stored with that resource (200) instead of storing it twice. Another caller's key never
matches. A second tag (:data:`IDEMPOTENCY_REQUEST_TAG`) binds the key to the request: an HMAC
of the key's code and of the resource as sent; when the upstream answers 200 with a record
whose request tag differs, the key was reused for another request and the answer is 422 (the
draft's "Idempotency-Key is already being used for a different request payload"), never the
other request's record. A client may not write the gateway's tags itself, in any write,
transaction and batch entries included (400): an update or patch may keep or leave out the
tags the resource has, never add or change one (:func:`refuse_own_tags`).
With the client's own ``If-None-Exist`` its criteria decide, as before, and the key is only
the tag.

Every create is tagged so (a random code when the client gives no key; no ``If-None-Exist``
then): with the decision recorded and before the write is forwarded, ``intend`` keeps a
*probe* of it (JSON: the method, the target or the create's tag, the pinned version and a
digest of what was sent), by which a gateway killed before recording the outcome learns from
the upstream at its next start whether the write happened (``proxy.reconcile``).

Conditional targets (``PUT/PATCH/DELETE [type]?criteria``, ``If-None-Exist``) are resolved
first with a search of at most two matches: one visible match becomes the instance write it
names; several, or any the caller may not see, get the same 412 (a hidden match must not be
written, and must not be told apart from several). A record the caller may not see, a
missing one and a deleted one all answer the generic 404, and nothing is forwarded.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

from middleware.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    NotFound,
    PreconditionFailed,
    UnprocessableEntity,
    UnsupportedMediaType,
    UpstreamError,
)
from middleware.fhir import jsoncodec
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.ledger.signing import keyed_digest
from middleware.pipeline.caller import (
    ACTION_ACCESS,
    ACTION_COLLECT,
    ACTION_CORRECT,
    check_interaction,
)
from middleware.pipeline.exchange import Answer, Ask, Upstreamed, not_found, upstream_failure
from middleware.pipeline.flow import Flow
from middleware.pipeline.guards import check_search
from middleware.pipeline.jsonpatch import apply_patch
from middleware.pipeline.judge import GATEWAY_OWNED
from middleware.pipeline.pages import is_match, next_link
from middleware.pipeline.params import decode_params, encode_params

__all__ = [
    "DENIED_WRITE",
    "IDEMPOTENCY_REQUEST_TAG",
    "IDEMPOTENCY_TAG",
    "NEW_ID",
    "Recorder",
    "Writes",
    "refuse_own_tags",
]

#: The one text of every refused write: it says neither whether a consent exists nor why.
DENIED_WRITE: Final = "this write is not allowed"
_NO_SINGLE_MATCH: Final = "the condition does not identify exactly one resource"
#: The id a created resource is judged under before the server assigns its own: a valid FHIR
#: id no server hands out (it names no existing record and has no consent).
NEW_ID: Final = "consentry-new-record"
_MATCHES_LIMIT: Final = "2"
#: The ``meta.tag`` system of the tag an ``Idempotency-Key`` create is stored with.
IDEMPOTENCY_TAG: Final = "https://consentry.dev/CodeSystem/idempotency"
#: The ``meta.tag`` system of the tag binding an ``Idempotency-Key`` to the request it came with.
IDEMPOTENCY_REQUEST_TAG: Final = "https://consentry.dev/CodeSystem/idempotency-request"
_OWN_SYSTEMS: Final = frozenset({IDEMPOTENCY_TAG, IDEMPOTENCY_REQUEST_TAG})
_OWN_TAG: Final = "the idempotency tag is set by the gateway, from Idempotency-Key"
#: Longest ``Idempotency-Key`` accepted (a UUID fits six times over).
_MAX_KEY: Final = 200
#: Search result parameters (R4 search.html#return): not criteria.
_RESULT_PARAMS: Final = frozenset(
    {
        "_count",
        "_offset",
        "_page",
        "_sort",
        "_summary",
        "_elements",
        "_include",
        "_revinclude",
        "_total",
        "_contained",
        "_containedType",
        "_cursor",
        "_format",
        "_pretty",
    }
)

#: Records one phase of an exchange on the ledger; raises ServiceUnavailable when it cannot.
Recorder = Callable[[Ask, int, Literal["exchange", "decision", "outcome"]], Awaitable[None]]
#: Keeps a write's audit intent before it is forwarded: ``(ask, probe, created)``.
Intend = Callable[[Ask, str, bool], Awaitable[None]]


class Writes:
    """The write half of the pipeline (module docstring), over the read half ``flow`` (its
    judging and release); batch and transaction are :mod:`~middleware.pipeline.bundles`'.
    ``record`` and ``intend`` keep the exchange's audit; ``tag_key`` (32 bytes,
    ``derive_box_key(ledger key, "idempotency")``, the same on every replica) keys the
    idempotency tags."""

    def __init__(
        self,
        flow: Flow,
        record: Recorder,
        intend: Intend | None = None,
        *,
        tag_key: bytes,
    ) -> None:
        self.flow = flow
        self.record = record
        self.intend = intend
        self.tag_key = tag_key

    async def __call__(self, ask: Ask) -> Answer:
        interaction = ask.request.interaction
        if interaction in (Interaction.BATCH, Interaction.TRANSACTION):
            # pipeline.dispatch hands these to pipeline.bundles: never one write.
            raise Forbidden("batch and transaction are not enabled on this gateway")
        check_interaction(ask.caller, ask.request)
        if interaction is Interaction.CREATE:
            return await self._create(ask)
        current = await self.current(ask)
        if interaction is Interaction.UPDATE:
            return await self._update(ask, current)
        if interaction is Interaction.PATCH:
            return await self._patch(ask, current)
        return await self._delete(ask, current)

    # -- interactions ------------------------------------------------------------------------

    def _incoming(self, ask: Ask) -> dict[str, Any]:
        """The write's body as the upstream will store it (mapped when a profile is on):
        what consent is decided on and what is forwarded."""
        body = _resource(ask.body, ask.request.resource_type)
        mapper = self.flow.mapper
        if mapper is None:
            return body
        ask.trail.mapped(mapper.label)
        mapped = mapper.write(body)
        return mapped if isinstance(mapped, dict) else body

    async def _create(self, ask: Ask) -> Answer:
        request = ask.request
        body = self._incoming(ask)
        refuse_own_tags(body, None)
        criteria = ask.headers.get("if-none-exist")
        pinned: list[tuple[str, str]] = []
        key = ask.headers.get("idempotency-key")
        replay: tuple[str, str] | None = None
        if key is None:
            code = secrets.token_hex(16)  # found again only by the reconciliation probe
            body = _with_tags(body, [(IDEMPOTENCY_TAG, code)])
        else:
            code = _key_code(self.tag_key, ask.caller.binding, key)
            sent = _request_code(self.tag_key, code, body)
            body = _with_tags(body, [(IDEMPOTENCY_TAG, code), (IDEMPOTENCY_REQUEST_TAG, sent)])
            if criteria is None:  # the client's own criteria decide instead
                pinned = [("if-none-exist", f"_tag={IDEMPOTENCY_TAG}|{code}")]
                replay = (code, sent)
        if criteria is not None:
            matches = await self._matches(ask, request.resource_type or "", criteria.encode())
            if matches:
                if len(matches) > 1:
                    raise PreconditionFailed(_NO_SINGLE_MATCH)
                # FHIR R4 http.html#ccreate: an existing match is answered 200, not created.
                up = Upstreamed(200, [], matches[0], jsoncodec.encode(matches[0]))
                return await self.flow.release(ask, up)
        # The server assigns the id (FHIR R4 http.html#create: any id in the body is ignored):
        # judge the record as the new one it will be, so that a new Patient is its own, not
        # yet consented, compartment rather than an unknown one.
        await self.check(ask, {**body, "id": NEW_ID}, ACTION_COLLECT)
        rtype = request.resource_type or ""
        probe = {"method": "POST", "type": rtype, "tag": code}
        raw = jsoncodec.encode(body)
        return await self._forward(ask, "POST", rtype, pinned, raw, probe=probe, replay=replay)

    async def _update(self, ask: Ask, current: dict[str, Any] | None) -> Answer:
        request = ask.request
        body = self._incoming(ask)
        if request.resource_id is not None and body.get("id") != request.resource_id:
            raise BadRequest("the resource id must match the id in the URL")
        refuse_own_tags(body, current)
        if current is None:  # FHIR update-as-create: the body is new data
            if request.conditional:
                # No match: a create (R4 http.html#cond-update), sent as one. Forwarding the
                # conditional PUT would let the upstream match again, on criteria the gateway
                # did not judge the result of.
                if "id" in body:
                    raise BadRequest("a conditional update that creates takes no id")
                await self.check(ask, {**body, "id": NEW_ID}, ACTION_COLLECT)
                return await self._forward(
                    ask, "POST", request.resource_type or "", [], jsoncodec.encode(body)
                )
            await self.check(ask, body, ACTION_COLLECT)
            return await self._forward(ask, "PUT", request.path, [], jsoncodec.encode(body))
        if request.conditional:  # the instance it resolved to is written, under its id
            if body.get("id", current["id"]) != current["id"]:
                raise BadRequest("the resource id must match the resource the condition names")
            body = {**body, "id": current["id"]}
        await self.check(ask, body, ACTION_CORRECT)
        # The bytes judged are the bytes sent (a duplicate key read one way here and another
        # way upstream must not change whose record this is).
        raw = jsoncodec.encode(body)
        return await self._forward(ask, "PUT", _instance(current), _pin(ask, current), raw)

    async def _patch(self, ask: Ask, current: dict[str, Any] | None) -> Answer:
        request = ask.request
        if request.patch_format != "json-patch":
            raise UnsupportedMediaType("only JSON Patch is supported through the gateway")
        if current is None:
            raise not_found()
        try:
            operations = jsoncodec.decode(ask.body)
        except jsoncodec.DecodeError as exc:
            raise BadRequest("the patch is not valid JSON", code="structure") from exc
        mapper = self.flow.mapper
        # Under a mapping profile the client patches the resource as *it* sees it (with the
        # codings the gateway adds): the gateway applies the patch to that view and maps the
        # result back.
        view = current if mapper is None else mapper.answer(current)
        after = apply_patch(view, operations)
        if (
            not isinstance(after, dict)
            or after.get("resourceType") != current.get("resourceType")
            or after.get("id") != current.get("id")
        ):
            raise BadRequest("a patch may not change the resource type or id")
        if mapper is not None:
            ask.trail.mapped(mapper.label)
            after = mapper.write(after)
        refuse_own_tags(after, current)
        await self.check(ask, after, ACTION_CORRECT)
        # What was judged is what is stored: the patched resource, sent as an update pinned to
        # the version it was computed from. Forwarding the patch would let the upstream's
        # JSON Patch (its reading of "-", escaped pointers, test, a duplicate key) produce a
        # resource nobody judged.
        headers = [("content-type", "application/fhir+json"), *_pin(ask, current)]
        return await self._forward(ask, "PUT", _instance(current), headers, jsoncodec.encode(after))

    async def _delete(self, ask: Ask, current: dict[str, Any] | None) -> Answer:
        if current is None:
            raise not_found()
        return await self._forward(ask, "DELETE", _instance(current), [])

    # -- steps -------------------------------------------------------------------------------

    async def current(self, ask: Ask) -> dict[str, Any] | None:
        """The current version of the write's target, checked visible and writable by the
        caller (``correct``); None when it does not exist (404/410). A hidden target raises
        the generic 404 (412 for a conditional write, as for several matches)."""
        request = ask.request
        if request.conditional and request.level is Level.TYPE:
            matches = await self._matches(ask, request.resource_type or "", request.query)
            if len(matches) > 1:
                raise PreconditionFailed(_NO_SINGLE_MATCH)
            current = matches[0] if matches else None
        else:
            up = await ask.forward(
                "GET",
                f"{request.resource_type}/{request.resource_id}",
                headers=_json_accept(),
                client_headers=False,
            )
            if up.status in (404, 410):
                return None
            if up.status >= 400:
                raise _as_error(up, request)
            current = up.document  # decoded by the forwarder (and mapped to client ids)
            if not isinstance(current, dict) or current.get("resourceType") != (
                request.resource_type
            ):
                raise UpstreamError("the upstream server sent another resource type")
        if current is not None:
            await self.check(ask, current, ACTION_CORRECT, hidden=not_found)
        return current

    async def _matches(self, ask: Ask, rtype: str, criteria: bytes) -> list[dict[str, Any]]:
        """The resources a conditional write's criteria match (at most two are fetched);
        any the caller may not see makes the condition fail with 412."""
        params = decode_params(criteria)
        if not params:
            raise BadRequest("a conditional write needs search criteria")
        if any(name.partition(":")[0] in _RESULT_PARAMS for name, _ in params):
            # Criteria select records; these shape a result page, and an upstream that reads
            # them differently from the gateway's own search would write another record.
            raise BadRequest("conditional criteria may not use result parameters")
        check_search(
            params,
            caller_kind=ask.caller.context,
            sees_everything=False,
            policy=self.flow.guards,
        )
        params = self.flow.map_search(ask, rtype, params)
        target = f"{rtype}?{encode_params([*params, ('_count', _MATCHES_LIMIT)])}"
        up = await ask.forward("GET", target, headers=_json_accept(), client_headers=False)
        if up.status >= 400:
            raise _as_error(up, ask.request)
        bundle = up.document
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise UpstreamError("the upstream server sent no search result")
        entries = bundle.get("entry")
        found = [
            entry["resource"]
            for entry in (entries if isinstance(entries, list) else ())
            if is_match(entry) and isinstance(entry.get("resource"), dict)
        ]
        if len(found) > 1 or next_link(bundle) is not None:
            raise PreconditionFailed(_NO_SINGLE_MATCH)
        for resource in found:
            await self.check(ask, resource, ACTION_ACCESS, hidden=_no_single_match)
        return found

    async def check(
        self,
        ask: Ask,
        resource: dict[str, Any],
        action: tuple[str, str],
        *,
        hidden: Callable[[], GatewayError] | None = None,
    ) -> None:
        """Raise unless the consent and compartment rules let the caller do ``action`` on
        ``resource``, a resource of the request's type (``hidden()`` is raised instead of the
        generic write refusal)."""
        kind = resource.get("resourceType")
        if not isinstance(kind, str):  # a list is unhashable: never looked up in a set
            raise BadRequest(f"the resource must be a {ask.request.resource_type} resource")
        if kind in GATEWAY_OWNED:
            raise Forbidden(DENIED_WRITE)  # the gateway's own consent API owns them
        if kind != ask.request.resource_type:
            raise BadRequest(f"the resource must be a {ask.request.resource_type} resource")
        judge = await self.flow.judge(ask.caller, action, resource, ask.trail)
        if not judge.permits(resource):
            raise (hidden or _denied)()

    async def _forward(
        self,
        ask: Ask,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | None = None,
        *,
        probe: dict[str, Any] | None = None,
        replay: tuple[str, str] | None = None,
    ) -> Answer:
        """Record the decision, keep the intent (``probe``: how the upstream tells whether
        the write happened; by default the target's version before and a digest of ``body``),
        forward the write (``body``: the client's unless given), release its answer. With
        ``replay`` (the key and request codes of a conditional create on its idempotency tag)
        a 200, the record an earlier create stored, must carry the request code (422)."""
        await self.record(ask, 200, "decision")
        if self.intend is not None:
            if probe is None:
                probe = {"method": method, "target": target, "version": _pinned(headers)}
                if body is not None:
                    probe["sent"] = content_digest(jsoncodec.decode(body))
            await self.intend(ask, jsoncodec.encode(probe).decode(), method == "POST")
        up = await ask.forward(
            method, target, body=ask.body if body is None else body, headers=headers
        )
        if up.status >= 400:
            outcome = upstream_failure(up, ask.request)
            if isinstance(outcome, GatewayError):
                raise outcome
            return outcome
        if replay is not None and up.status == 200:
            await self._same_request(ask, target, up, *replay)
        passed = [(k, v) for k, v in up.headers if k in _WRITE_HEADERS]
        if isinstance(up.document, dict) and up.document.get("resourceType") not in (
            None,
            "OperationOutcome",
        ):
            try:
                answer = await self.flow.release(ask, up)
            except NotFound:
                # Written, but not readable by this caller (a create-only scope, a consent
                # that allows collecting but not access): the outcome without the body.
                pass
            else:
                answer.headers = passed
                return answer
        return Answer(up.status, [(k, v) for k, v in passed if k != "content-type"])

    async def _same_request(
        self, ask: Ask, rtype: str, up: Upstreamed, code: str, sent: str
    ) -> None:
        """Raise 422 unless the record the upstream matched on the key's tag ``code`` (its
        answer, or found by the tag when the answer carries none) was created by this same
        request (its request tag is ``sent``): a key reused with another body must not be
        answered with the first body's record while the second is silently dropped."""
        found = up.document
        if not (isinstance(found, dict) and found.get("resourceType") == rtype):
            target = f"{rtype}?{encode_params([('_tag', f'{IDEMPOTENCY_TAG}|{code}')])}"
            search = await ask.forward("GET", target, headers=_json_accept(), client_headers=False)
            bundle = search.document
            entries = bundle.get("entry") if isinstance(bundle, dict) else None
            matches = [
                entry["resource"]
                for entry in (entries if isinstance(entries, list) else ())
                if is_match(entry) and isinstance(entry.get("resource"), dict)
            ]
            if search.status != 200 or len(matches) != 1:
                raise UpstreamError("the upstream server named no record for the condition")
            found = matches[0]
        if not any(
            hmac.compare_digest(have.encode(), sent.encode())  # str: ASCII only, bytes any
            for system, have in _own_tags(found)
            if system == IDEMPOTENCY_REQUEST_TAG
        ):
            raise UnprocessableEntity("this Idempotency-Key was used for a different request")


_WRITE_HEADERS: Final = frozenset(
    {"content-type", "etag", "last-modified", "location", "content-location"}
)


def _resource(raw: bytes, rtype: str | None) -> dict[str, Any]:
    """The write's body as a resource of type ``rtype`` (400 otherwise)."""
    try:
        document = jsoncodec.decode(raw)
    except jsoncodec.DecodeError as exc:
        raise BadRequest("the request body is not valid JSON", code="structure") from exc
    if not isinstance(document, dict) or document.get("resourceType") != rtype:
        raise BadRequest(f"the request body must be a {rtype} resource", code="structure")
    return document


def content_digest(resource: Any) -> str:
    """SHA-256 of ``resource`` without ``meta`` (the server's version and time), canonical:
    what an update sent and what the upstream holds afterwards compare equal."""
    if isinstance(resource, dict):
        resource = {k: v for k, v in resource.items() if k != "meta"}
    return hashlib.sha256(jsoncodec.encode_canonical(resource)).hexdigest()


def _pinned(headers: list[tuple[str, str]]) -> str | None:
    """The version an ``If-Match`` in ``headers`` pins (``W/"3"`` -> ``3``)."""
    for name, value in headers:
        if name == "if-match":
            return value.removeprefix("W/").strip('"')
    return None


def _key_code(tag_key: bytes, binding: str, key: str) -> str:
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


def _request_code(tag_key: bytes, code: str, body: dict[str, Any]) -> str:
    """The request tag's code: 128 bits of HMAC-SHA256 under ``tag_key`` of the key's ``code``
    and the SHA-256 of ``body`` as sent (canonical JSON, its ``meta`` included: a security
    label is part of the request), before the gateway's tags are added."""
    digest = hashlib.sha256(jsoncodec.encode_canonical(body)).digest()
    return keyed_digest(tag_key, [b"request", code.encode(), digest])[:16].hex()


def _with_tags(body: dict[str, Any], tags: list[tuple[str, str]]) -> dict[str, Any]:
    """``body`` with the ``(system, code)`` tags added to ``meta.tag`` (R4 Meta.tag)."""
    meta = body.get("meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    have = meta.get("tag")
    meta["tag"] = [
        *(have if isinstance(have, list) else []),
        *({"system": system, "code": code} for system, code in tags),
    ]
    return {**body, "meta": meta}


def _own_tags(resource: dict[str, Any]) -> frozenset[tuple[str, str]]:
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
    if not _own_tags(body) <= (frozenset() if current is None else _own_tags(current)):
        raise BadRequest(_OWN_TAG)


def _instance(resource: dict[str, Any]) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def _pin(ask: Ask, current: dict[str, Any]) -> list[tuple[str, str]]:
    """``If-Match`` on the version that was checked; a client's own If-Match must name it."""
    meta = current.get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    if not isinstance(version, str):
        return []
    etag = f'W/"{version}"'
    given = ask.headers.get("if-match")
    if given is not None and given.strip() not in (etag, f'"{version}"'):
        raise PreconditionFailed("the resource has changed (If-Match does not match)")
    return [("if-match", etag)]


def _json_accept() -> list[tuple[str, str]]:
    return [("accept", "application/fhir+json")]


def _as_error(up: Upstreamed, request: FhirRequest) -> GatewayError:
    outcome = upstream_failure(up, request)
    return outcome if isinstance(outcome, GatewayError) else UpstreamError("upstream failed")


def _denied() -> GatewayError:
    return Forbidden(DENIED_WRITE)


def _no_single_match() -> GatewayError:
    return PreconditionFailed(_NO_SINGLE_MATCH)
