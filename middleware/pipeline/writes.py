"""Enforcement of writes: create, update, patch, delete and their conditional forms.

A write is checked against the patient compartment of the resource *before* the change (the
current version, fetched from the upstream) and *after* it (the submitted body, or the current
version with the JSON Patch applied, :mod:`~middleware.pipeline.jsonpatch`), so a write can
neither touch a record the caller may not see nor move a resource into or out of a compartment
whose consent does not allow the write (FHIR consentaction ``collect`` for what is new,
``correct`` for what exists; :mod:`~middleware.pipeline.targets` fetches and checks the
target, resolving conditional ones; a target the caller's labels on data hide answers 404
like a read, and a write may not take off a label the caller is not entitled to). Then, in
this order (architecture invariant 1,
:mod:`~middleware.pipeline.write_forward`):

1. the decision is recorded on the ledger (``record(ask, status, "decision")``);
2. the request is forwarded, pinned to the version that was checked with ``If-Match`` (FHIR
   R4 http.html#concurrency), so a concurrent change makes the upstream refuse (412) rather
   than apply the write to a version nobody checked; a patch is never forwarded: the
   resource the gateway computed and judged is sent as that pinned update (``PUT``);
3. the answer is released like a read (``Prefer: return=representation`` bodies are filtered)
   and its outcome recorded by the caller of the flow.

Every create is tagged with the gateway's idempotency tag (a code from the client's
``Idempotency-Key``, sent as a conditional create on that tag unless the client's own
``If-None-Exist`` decides; a random code when it gives no key), and a client may not write
the gateway's tags itself (400): :mod:`~middleware.pipeline.idempotency`.

Writes of the records consent memberships are read from (PractitionerRole, Organization,
CareTeam, Group, Person) are refused first unless the caller is a directory administrator:
:mod:`~middleware.pipeline.directory`.
"""

from __future__ import annotations

import secrets
from typing import Any, Final

from middleware.errors import BadRequest, Forbidden, PreconditionFailed, UnsupportedMediaType
from middleware.fhir import jsoncodec
from middleware.fhir.request import Interaction
from middleware.pipeline.caller import ACTION_COLLECT, ACTION_CORRECT, check_interaction
from middleware.pipeline.directory import DirectoryGuard
from middleware.pipeline.exchange import Answer, Ask, Upstreamed, not_found
from middleware.pipeline.flow import Flow
from middleware.pipeline.idempotency import (
    IDEMPOTENCY_REQUEST_TAG,
    IDEMPOTENCY_TAG,
    key_code,
    refuse_own_tags,
    request_code,
    with_tags,
)
from middleware.pipeline.jsonpatch import apply_patch
from middleware.pipeline.targets import NO_SINGLE_MATCH, Targets
from middleware.pipeline.write_forward import Intend, Recorder, WriteForward

__all__ = ["NEW_ID", "Recorder", "Writes"]

#: The id a created resource is judged under before the server assigns its own: a valid FHIR
#: id no server hands out (it names no existing record and has no consent).
NEW_ID: Final = "consentry-new-record"


class Writes:
    """The write half of the pipeline (module docstring), over the read half ``flow`` (its
    judging and release); batch and transaction are :mod:`~middleware.pipeline.bundles`'.
    ``record`` and ``intend`` keep the exchange's audit; ``tag_key`` (32 bytes,
    ``derive_box_key(ledger key, "idempotency")``, the same on every replica) keys the
    idempotency tags. Its :attr:`targets` (:class:`~middleware.pipeline.targets.Targets`)
    and :attr:`directory` (who may write the memberships directory; by default nobody)
    check the transaction's entries too."""

    def __init__(
        self,
        flow: Flow,
        record: Recorder,
        intend: Intend | None = None,
        *,
        tag_key: bytes,
        directory: DirectoryGuard | None = None,
    ) -> None:
        self.flow = flow
        self.directory = DirectoryGuard() if directory is None else directory
        self.record = record
        self.intend = intend
        self.tag_key = tag_key
        self.targets = Targets(flow)
        self.forwarding = WriteForward(record, intend, flow.releasing)

    async def __call__(self, ask: Ask) -> Answer:
        interaction = ask.request.interaction
        if interaction in (Interaction.BATCH, Interaction.TRANSACTION):
            # pipeline.dispatch hands these to pipeline.bundles: never one write.
            raise Forbidden("batch and transaction are not enabled on this gateway")
        check_interaction(ask.caller, ask.request)
        # A batch entry comes here too (pipeline.bundles); the body's type is the URL's or
        # the write is refused (400) before anything is judged.
        self.directory.check(ask.caller, ask.request.resource_type)
        if interaction is Interaction.CREATE:
            return await self._create(ask)
        current = await self.targets.current(ask)
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
            body = with_tags(body, [(IDEMPOTENCY_TAG, code)])
        else:
            code = key_code(self.tag_key, ask.caller.binding, key)
            sent = request_code(self.tag_key, code, body)
            body = with_tags(body, [(IDEMPOTENCY_TAG, code), (IDEMPOTENCY_REQUEST_TAG, sent)])
            if criteria is None:  # the client's own criteria decide instead
                pinned = [("if-none-exist", f"_tag={IDEMPOTENCY_TAG}|{code}")]
                replay = (code, sent)
        if criteria is not None:
            matches = await self.targets.matches(
                ask, request.resource_type or "", criteria.encode()
            )
            if matches:
                if len(matches) > 1:
                    raise PreconditionFailed(NO_SINGLE_MATCH)
                # FHIR R4 http.html#ccreate: an existing match is answered 200, not created.
                up = Upstreamed(200, [], matches[0], jsoncodec.encode(matches[0]))
                return await self.flow.releasing.release(ask, up)
        # The server assigns the id (FHIR R4 http.html#create: any id in the body is ignored):
        # judge the record as the new one it will be, so that a new Patient is its own, not
        # yet consented, compartment rather than an unknown one.
        await self.targets.check(ask, {**body, "id": NEW_ID}, ACTION_COLLECT)
        rtype = request.resource_type or ""
        probe = {"method": "POST", "type": rtype, "tag": code}
        raw = jsoncodec.encode(body)
        return await self.forwarding.forward(
            ask, "POST", rtype, pinned, raw, probe=probe, replay=replay
        )

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
                await self.targets.check(ask, {**body, "id": NEW_ID}, ACTION_COLLECT)
                return await self.forwarding.forward(
                    ask, "POST", request.resource_type or "", [], jsoncodec.encode(body)
                )
            await self.targets.check(ask, body, ACTION_COLLECT)
            return await self.forwarding.forward(
                ask, "PUT", request.path, [], jsoncodec.encode(body)
            )
        if request.conditional:  # the instance it resolved to is written, under its id
            if body.get("id", current["id"]) != current["id"]:
                raise BadRequest("the resource id must match the resource the condition names")
            body = {**body, "id": current["id"]}
        self.targets.check_labels(ask, current, body)
        await self.targets.check(ask, body, ACTION_CORRECT)
        # The bytes judged are the bytes sent (a duplicate key read one way here and another
        # way upstream must not change whose record this is).
        raw = jsoncodec.encode(body)
        return await self.forwarding.forward(
            ask, "PUT", _instance(current), _pin(ask, current), raw
        )

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
        self.targets.check_labels(ask, current, after)
        await self.targets.check(ask, after, ACTION_CORRECT)
        # What was judged is what is stored: the patched resource, sent as an update pinned to
        # the version it was computed from. Forwarding the patch would let the upstream's
        # JSON Patch (its reading of "-", escaped pointers, test, a duplicate key) produce a
        # resource nobody judged.
        headers = [("content-type", "application/fhir+json"), *_pin(ask, current)]
        return await self.forwarding.forward(
            ask, "PUT", _instance(current), headers, jsoncodec.encode(after)
        )

    async def _delete(self, ask: Ask, current: dict[str, Any] | None) -> Answer:
        if current is None:
            raise not_found()
        return await self.forwarding.forward(ask, "DELETE", _instance(current), [])


def _resource(raw: bytes, rtype: str | None) -> dict[str, Any]:
    """The write's body as a resource of type ``rtype`` (400 otherwise)."""
    try:
        document = jsoncodec.decode(raw)
    except jsoncodec.DecodeError as exc:
        raise BadRequest("the request body is not valid JSON", code="structure") from exc
    if not isinstance(document, dict) or document.get("resourceType") != rtype:
        raise BadRequest(f"the request body must be a {rtype} resource", code="structure")
    return document


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
