"""Enforcement of batch and transaction Bundles (FHIR R4 http.html#transaction).

**Batch**: every entry is an independent request (R4: "there SHALL be no interdependencies
between the different entries"), so each goes through the whole pipeline on its own, as if the
client had sent it: classified, checked, decided, recorded, forwarded, filtered. Its answer
becomes the entry's ``response``: a denied read is the same ``404`` a missing record gets, a
refused write its ``403``. Entries run in order, one at a time.

**Transaction**: all or nothing. Before anything is forwarded every entry is checked as the
write or read it is: creates against the compartment their body will be in (``urn:uuid``
references to resources created in the same transaction are read as new, consent-less
records of that type), updates and deletes against the current version *and* (updates) the
new body, reads and searches against the search guards. One refusal refuses the transaction,
with one answer that says nothing of which entry or why. The decision is recorded, updates are
pinned to the checked versions (``ifMatch``), and the answer is filtered like any other
(one-to-one: a resource the caller may not see becomes a 404 entry). Conditional entries and
patches inside a transaction are refused: their targets could not be checked before the
upstream resolves them; so are parameters on a write entry (``?_cascade=delete``), which the
upstream would act on unjudged. So is an entry that sets, adds or changes the gateway's idempotency
tags, as a single write would be (:func:`~middleware.pipeline.idempotency.refuse_own_tags`),
and a write of the memberships directory by a caller who is not its administrator
(:mod:`~middleware.pipeline.directory`; a batch entry meets it in the write half).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import urlsplit

from middleware.errors import BadRequest, Forbidden, GatewayError
from middleware.fhir import jsoncodec
from middleware.fhir.classify import classify
from middleware.fhir.request import FhirRequest, Interaction
from middleware.pipeline.caller import ACTION_COLLECT, ACTION_CORRECT, check_interaction
from middleware.pipeline.exchange import Answer, Ask, Forwarder, Upstreamed, upstream_failure
from middleware.pipeline.guards import check_search
from middleware.pipeline.idempotency import refuse_own_tags
from middleware.pipeline.judge import GATEWAY_OWNED, Trail
from middleware.pipeline.params import decode_params
from middleware.pipeline.targets import DENIED_WRITE
from middleware.pipeline.writes import NEW_ID, Writes

__all__ = ["Bundles", "MAX_ENTRIES"]

#: Entries per batch or transaction; more is refused (413-like work for one request).
MAX_ENTRIES: Final = 1000
_REFUSED_TRANSACTION: Final = "this transaction is not allowed"
#: What an entry's ``request.url`` may not hold: a fragment (``#``), space, control
#: characters, non-ASCII. ``urlsplit`` would judge the URL without them (it drops the
#: fragment, strips and removes whitespace: ``Observation/1#/../../PractitionerRole/2`` is
#: read as ``Observation/1``) while the raw text is what is forwarded, and an upstream may
#: read it otherwise. None of them can be in an HTTP request target (RFC 9112 section 3.2,
#: RFC 3986 section 3.5), so none is in a URL a client could send on its own; ``%``, ``;``,
#: ``\``, ``.``/``..`` segments and empty segments are refused by :func:`classify`, as for the
#: request target.
_REFUSED_URL: Final = re.compile(r"[\x00-\x20\x7f#]")
_BAD_URL: Final = "a Bundle entry's url may hold no fragment, space, control or non-ASCII character"
_ENTRY_HEADERS: Final = {
    "ifMatch": "if-match",
    "ifNoneMatch": "if-none-match",
    "ifNoneExist": "if-none-exist",
    "ifModifiedSince": "if-modified-since",
}
_TRANSACTION_ENTRIES: Final = frozenset(
    {
        Interaction.CREATE,
        Interaction.UPDATE,
        Interaction.DELETE,
        Interaction.READ,
        Interaction.VREAD,
        Interaction.SEARCH_TYPE,
    }
)


class Bundles:
    """Batch and transaction enforcement (module docstring) over the write half ``writes``
    and the read half it is built on (``writes.flow``); a batch entry runs through the one
    its interaction needs."""

    def __init__(self, writes: Writes, *, base_path: str) -> None:
        self.writes = writes
        self.flow = writes.flow
        self.base_path = base_path

    async def __call__(self, ask: Ask) -> Answer:
        bundle = _bundle(ask.body)
        entries = bundle.get("entry") or []
        if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
            raise BadRequest(f"a Bundle may carry at most {MAX_ENTRIES} entries")
        if ask.request.interaction is Interaction.BATCH:
            return await self._batch(ask, entries)
        return await self._transaction(ask, bundle, entries)

    # -- batch -------------------------------------------------------------------------------

    async def _batch(self, ask: Ask, entries: list[Any]) -> Answer:
        answers = [await self._batch_entry(ask, entry) for entry in entries]
        return Answer(
            200,
            [("content-type", "application/fhir+json; charset=utf-8")],
            {"resourceType": "Bundle", "type": "batch-response", "entry": answers},
        )

    async def _batch_entry(self, ask: Ask, entry: Any) -> dict[str, Any]:
        try:
            sub = self._sub_ask(ask, entry)
        except GatewayError as error:
            return _error_entry(error)
        status = 500
        try:
            answer = await (self.writes(sub) if sub.request.is_write else self.flow.run(sub))
            status = answer.status
        except GatewayError as error:
            status = error.status
            await self.writes.record(sub, status, _phase(sub))
            return _error_entry(error)
        await self.writes.record(sub, status, _phase(sub))
        return _answer_entry(answer)

    def _sub_ask(self, ask: Ask, entry: Any) -> Ask:
        """One batch entry as the request the client could have sent on its own."""
        if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
            raise BadRequest("a batch entry needs a request")
        spec = entry["request"]
        method, url = spec.get("method"), spec.get("url")
        if not isinstance(method, str) or not isinstance(url, str) or not url:
            raise BadRequest("a batch entry's request needs a method and a url")
        headers = {"accept": "application/fhir+json"}
        for key, name in _ENTRY_HEADERS.items():
            if isinstance(spec.get(key), str):
                headers[name] = spec[key]
        resource = entry.get("resource")
        body = b""
        if resource is not None:
            headers["content-type"] = "application/fhir+json"
            body = jsoncodec.encode(resource)
        request = self._classify(method, url, headers)
        if request.interaction in (Interaction.BATCH, Interaction.TRANSACTION):
            raise BadRequest("a Bundle entry may not be another batch or transaction")
        if request.interaction is Interaction.PATCH:
            raise BadRequest("patches inside a Bundle are not supported by the gateway")
        if request.resource_type in GATEWAY_OWNED:
            raise Forbidden(DENIED_WRITE)
        if (request.operation or "").startswith("$export"):
            # Bulk export is the gateway's own, never an entry: as one it would reach the
            # operations table and, through a row naming it, the upstream.
            raise Forbidden("bulk export is not available inside a Bundle")
        return Ask(
            request=request,
            body=body,
            headers=headers,
            caller=ask.caller,
            forward=_entry_forwarder(ask.forward, headers),
            self_url=f"{self.flow.gateway_base}/{url}",
            trail=Trail(),
            request_id=ask.request_id,
            raw_request=f"{method} {url}".encode(),
            client_address=ask.client_address,
        )

    def _classify(self, method: str, url: str, headers: Mapping[str, str]) -> FhirRequest:
        _refuse_unread(url)
        parts = urlsplit(url)
        path = parts.path
        if parts.scheme or parts.netloc:
            gateway = self.flow.gateway_base
            if not url.startswith(gateway + "/"):
                raise BadRequest("a Bundle entry's url must be on this server")
            path = urlsplit(url[len(gateway) :]).path
        path = "/" + path.lstrip("/") if path else "/"
        return classify(
            method,
            self.base_path + path,
            None,
            parts.query.encode("ascii", "strict"),
            headers,
            base_path=self.base_path,
        )

    # -- transaction -------------------------------------------------------------------------

    async def _transaction(self, ask: Ask, bundle: dict[str, Any], entries: list[Any]) -> Answer:
        for entry in entries:  # the client's own syntax: a 400, not the refusal's 403
            spec = entry.get("request") if isinstance(entry, dict) else None
            url = spec.get("url") if isinstance(spec, dict) else None
            if isinstance(url, str):
                _refuse_unread(url)
        mapper = self.flow.mapper
        if mapper is not None:  # judged and forwarded as the upstream will store them
            ask.trail.mapped(mapper.label)
            for entry in entries:
                if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                    entry["resource"] = mapper.write(entry["resource"])
        new = _new_references(entries)
        writes: set[int] = set()  # the create and update entries, by position
        try:
            for index, entry in enumerate(entries):
                if await self._check_entry(ask, entry, new) in _WRITES:
                    writes.add(index)
        except GatewayError as error:
            if error.status >= 500:
                raise
            raise Forbidden(_REFUSED_TRANSACTION) from None
        await self.writes.record(ask, 200, "decision")
        body = jsoncodec.encode(bundle)
        up = await ask.forward("POST", "", body=body)
        if up.status >= 400:
            outcome = upstream_failure(up, ask.request)
            if isinstance(outcome, GatewayError):
                raise outcome
            return outcome
        written = _write_responses(writes, len(entries), up.document)
        return _keep_write_outcomes(await self.flow.releasing.release(ask, up), written)

    async def _check_entry(self, ask: Ask, entry: Any, new: Mapping[str, str]) -> Interaction:
        """Raise unless the transaction entry may go through (pins updates to the checked
        version by setting ``request.ifMatch`` in the Bundle that will be forwarded); return
        the entry's classified interaction."""
        sub = self._sub_ask(ask, entry)
        request = sub.request
        if request.interaction not in _TRANSACTION_ENTRIES or request.conditional:
            raise BadRequest("this transaction entry is not supported by the gateway")
        if request.is_write and request.query:
            # The Bundle is forwarded as sent, so a parameter on a write entry reaches the
            # upstream unjudged: ``DELETE Practitioner/x?_cascade=delete`` (HAPI) deletes
            # every resource that references it, records of patients whose consent was never
            # checked. A single write is forwarded to its instance without the client's query.
            raise BadRequest("a write inside a transaction takes no parameters")
        check_interaction(ask.caller, request)
        if request.is_write:  # by the URL's type and the body's (a body of another type
            # is refused later too; this check does not rest on that)
            resource = entry.get("resource")
            body_type = resource.get("resourceType") if isinstance(resource, dict) else None
            self.writes.directory.check(ask.caller, request.resource_type, body_type)
        sub.trail = ask.trail
        if request.interaction is Interaction.SEARCH_TYPE:
            if ask.caller.patient is not None:
                raise Forbidden("searches inside a transaction need a user or system caller")
            check_search(
                decode_params(request.query),
                caller_kind=ask.caller.context,
                sees_everything=False,
                policy=self.flow.guards,
            )
            return request.interaction
        if request.interaction in (Interaction.READ, Interaction.VREAD):
            return request.interaction  # judged in the answer, like any read
        if request.interaction is Interaction.CREATE:
            resource = entry.get("resource")
            if isinstance(resource, dict):  # a planted tag would squat a key
                refuse_own_tags(resource, None)
            created = _local(resource, new, entry.get("fullUrl"))
            await self._allow(sub, created, ACTION_COLLECT)
            return request.interaction
        current = await self.writes.targets.current(sub)
        if request.interaction is Interaction.UPDATE:
            body = _local(entry.get("resource"), new)
            if isinstance(body, dict):
                refuse_own_tags(body, current)
                if current is not None:  # no label the caller is not entitled to comes off
                    self.writes.targets.check_labels(sub, current, body)
            await self._allow(sub, body, ACTION_COLLECT if current is None else ACTION_CORRECT)
        elif current is None:
            raise Forbidden(_REFUSED_TRANSACTION)
        if current is not None:
            version = (current.get("meta") or {}).get("versionId")
            if isinstance(version, str) and "ifMatch" not in entry["request"]:
                entry["request"]["ifMatch"] = f'W/"{version}"'
        return request.interaction

    async def _allow(self, sub: Ask, resource: Any, action: tuple[str, str]) -> None:
        if not isinstance(resource, dict):
            raise BadRequest("a transaction entry needs a resource")
        await self.writes.targets.check(sub, resource, action)  # a refusal refuses the transaction


def _refuse_unread(url: str) -> None:
    """400 for an entry URL with a part ``urlsplit`` would not judge (:data:`_REFUSED_URL`)."""
    if not url.isascii() or _REFUSED_URL.search(url):
        raise BadRequest(_BAD_URL)


def _bundle(raw: bytes) -> dict[str, Any]:
    try:
        document = jsoncodec.decode(raw)
    except jsoncodec.DecodeError as exc:
        raise BadRequest("the request body is not valid JSON", code="structure") from exc
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        raise BadRequest("the request body must be a Bundle", code="structure")
    return document


#: What a transaction-response entry of the caller's own write keeps when the caller may not
#: read the resource: the outcome a single write answers with in its headers (201 + Location,
#: ETag, Last-Modified), no resource and no upstream OperationOutcome.
_WRITE_OUTCOME: Final = ("status", "location", "etag", "lastModified")
#: The transaction entries answered by their outcome when the caller may not read them.
_WRITES: Final = frozenset({Interaction.CREATE, Interaction.UPDATE})


def _write_responses(writes: set[int], asked: int, document: Any) -> dict[int, dict[str, Any]]:
    """The ``response`` objects (not copies: rebasing rewrites them in place) of the upstream's
    successful answers to the entries at ``writes`` (positions of the entries classified as
    create or update, never by HTTP method alone: a ``POST _search`` entry is a search) among
    ``asked`` entries (R4 http.html#trules: a transaction-response has one entry per request
    entry, in order)."""
    answered = document.get("entry") if isinstance(document, dict) else None
    if not isinstance(answered, list) or len(answered) != asked:
        return {}
    found: dict[int, dict[str, Any]] = {}
    for index in sorted(writes):
        got = answered[index]
        response = got.get("response") if isinstance(got, dict) else None
        if isinstance(response, dict) and str(response.get("status", "")).startswith("2"):
            found[index] = response
    return found


def _keep_write_outcomes(answer: Answer, written: Mapping[int, dict[str, Any]]) -> Answer:
    """``answer`` with each create or update entry the filter withheld (the caller may write
    the record but not read it: an EHR collecting under opt-in) answered by its outcome
    (:data:`_WRITE_OUTCOME`) instead of the generic 404: the caller learns the id of what it
    wrote, as a single create's ``Location`` tells it, and nothing it could not write."""
    released = answer.document.get("entry") if isinstance(answer.document, dict) else None
    if not written or not isinstance(released, list):
        return answer
    for index, response in written.items():
        entry = released[index] if index < len(released) else None
        if isinstance(entry, dict) and "resource" not in entry:
            entry.clear()
            entry["response"] = {k: response[k] for k in _WRITE_OUTCOME if k in response}
    return answer


def _new_references(entries: list[Any]) -> dict[str, str]:
    """``urn:uuid:`` full URLs of created entries -> a local reference for judging them:
    ``Type/<uuid>``, a record with no consent yet (FHIR R4 http.html#trules)."""
    found: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        full_url, resource = entry.get("fullUrl"), entry.get("resource")
        if (
            isinstance(full_url, str)
            and full_url.startswith("urn:uuid:")
            and isinstance(resource, dict)
            and isinstance(resource.get("resourceType"), str)
        ):
            found[full_url] = f"{resource['resourceType']}/{full_url.removeprefix('urn:uuid:')}"
    return found


def _local(resource: Any, new: Mapping[str, str], full_url: Any = None) -> Any:
    """A copy of ``resource`` whose ``urn:uuid`` references name the local placeholders; a
    created resource (``full_url`` given) is judged under its placeholder id, or
    :data:`~middleware.pipeline.writes.NEW_ID`: the server assigns the real one."""
    if not isinstance(resource, dict):
        return resource
    copied = copy.deepcopy(resource)
    if new:
        _replace(copied, new, 0)
    if full_url is not None or "id" not in copied:
        placeholder = new.get(full_url) if isinstance(full_url, str) else None
        copied["id"] = placeholder.partition("/")[2] if placeholder else NEW_ID
    return copied


def _replace(node: Any, new: Mapping[str, str], depth: int) -> None:
    if depth > 64:
        return
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str) and value in new:
                node[key] = new[value]
            else:
                _replace(value, new, depth + 1)
    elif isinstance(node, list):
        for item in node:
            _replace(item, new, depth + 1)


def _entry_forwarder(forward: Forwarder, entry_headers: Mapping[str, str]) -> Forwarder:
    """The exchange's forwarder with a batch entry's own headers in place of the client's."""
    own = [(k, v) for k, v in entry_headers.items() if k != "accept"]

    async def call(
        method: str,
        target: str,
        *,
        body: bytes = b"",
        headers: Any = (),
        client_headers: bool = True,
    ) -> Upstreamed:
        extra = [*own, *headers] if client_headers else list(headers)
        return await forward(method, target, body=body, headers=extra, client_headers=False)

    return call


def _phase(sub: Ask) -> Any:
    return "outcome" if sub.request.is_write else "exchange"


def _answer_entry(answer: Answer) -> dict[str, Any]:
    response: dict[str, Any] = {"status": str(answer.status)}
    for name, key in (("location", "location"), ("etag", "etag")):
        value = next((v for k, v in answer.headers if k == name), None)
        if value is not None:
            response[key] = value
    modified = next((v for k, v in answer.headers if k == "last-modified"), None)
    instant = _instant(modified) if modified is not None else None
    if instant is not None:
        response["lastModified"] = instant
    entry: dict[str, Any] = {}
    if answer.raw is not None:
        entry["resource"] = jsoncodec.decode(answer.raw)
    elif answer.document is not None:
        entry["resource"] = answer.document
    entry["response"] = response
    return entry


def _instant(http_date: str) -> str | None:
    """An HTTP ``Last-Modified`` date (RFC 9110 §5.6.7) as a FHIR instant
    (``entry.response.lastModified``); None when it does not parse."""
    try:
        moment = parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _error_entry(error: GatewayError) -> dict[str, Any]:
    texts = error.issues or (error.diagnostics,)
    issues = [{"severity": "error", "code": error.code, "diagnostics": t} for t in texts]
    outcome = {"resourceType": "OperationOutcome", "issue": issues}
    return {"response": {"status": str(error.status), "outcome": outcome}}
