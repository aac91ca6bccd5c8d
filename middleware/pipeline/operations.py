"""Enforcement of ``$operation`` requests by the operations table.

:class:`Operations` looks a request up in the
:class:`~middleware.pipeline.operation_table.OperationTable` (deny by default: no row is a
403) and enforces the row's mode:

- ``filter:bundle`` (``$everything``, ``$lastn``...): the answer is released like a search's
  (:mod:`~middleware.pipeline.release`: every resource judged, paging links sealed into
  cursors). Its parameters pass the search guards (:func:`~middleware.pipeline.guards.
  check_search`, no type of the gateway's own in ``_type``/``_include``), a count
  (``_summary=count``, ``_count=0``, ``_total``) is refused (the upstream's would count
  withheld resources), and ``_summary``/``_elements`` are applied after judging whole
  resources (:mod:`~middleware.pipeline.subset`: an upstream subset without ``subject`` would
  leave the judge no patient to ask about). ``Patient/[id]/$everything`` of another patient
  is the generic 404 for a patient-context caller, and an all-withheld instance answer is the
  record's 404. ``$everything`` releases nothing unless the Patient itself may be seen: the
  Patient is judged before anything is forwarded, and a first page without it released is
  the generic 404; a resource outside the Patient compartment (Medication, Organization...)
  is released only when a released resource references it (:mod:`~middleware.pipeline.
  linked`). ``$lastn``, whose parameters are Observation search parameters (R4
  observation-operation-lastn), is treated as a search: a patient-context caller's query
  pinned to its compartment (:func:`~middleware.pipeline.guards.pin_patient`); any other
  type- or system-level operation is refused to a patient-context caller (it cannot be
  narrowed). An all-withheld type-level answer is an empty searchset, as a search's is: a
  404 would tell matches exist.
- ``filter:document`` (``Composition/[id]/$document``): released whole or not at all. A
  withheld Composition, or any withheld or redacted entry, is the generic 404: a document
  with entries missing or cut misrepresents the record it attests (R4 documents.html: the
  document is the Composition and the resources it references, together). ``persist`` (which
  stores the document upstream) is refused, and so are ``_summary``/``_elements`` (400: a
  subset of a document is not the document; sent upstream they would be judged cut).
- ``filter:stats`` (``Observation/$stats``): :mod:`~middleware.pipeline.stats`.
- ``forward`` (terminology, type-level ``$validate``: :data:`~middleware.pipeline.
  operation_table.FORWARDABLE`): forwarded with the client's body and audited like every
  exchange; the answer is released only when it carries no patient data, its outcomes
  without free text (:mod:`~middleware.pipeline.forwarded`).

Pure apart from the injected upstream seam (``Ask.forward``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Final

from middleware.errors import BadRequest, Forbidden, UpstreamError
from middleware.fhir.request import Interaction, Level
from middleware.pipeline.caller import ACTION_ACCESS, check_interaction
from middleware.pipeline.cursor import CURSOR_PARAM
from middleware.pipeline.exchange import Answer, Ask, Upstreamed, not_found
from middleware.pipeline.forwarded import release_forwarded
from middleware.pipeline.guards import GuardPolicy, check_search, count_family, pin_patient
from middleware.pipeline.judge import GATEWAY_OWNED
from middleware.pipeline.judging import Judging
from middleware.pipeline.linked import keep_linked
from middleware.pipeline.mapper import Mapper
from middleware.pipeline.operation_table import (
    DEFAULT_TABLE,
    Mode,
    OperationTable,
)
from middleware.pipeline.paging import Page, Pager, cursor_of
from middleware.pipeline.params import decode_params, encode_params
from middleware.pipeline.release import Release, accept_of, read_failure
from middleware.pipeline.stats import Stats
from middleware.pipeline.subset import Subset, apply_subset_to_answer, split_subset
from middleware.proxy.rewrite import Rebaser

__all__ = ["Operations"]

#: Operations whose parameters are search parameters of their type, so that a patient-context
#: call can be pinned like a search (R4 observation-operation-lastn: "the search parameters
#: ... of Observation").
_SEARCH_LIKE: Final = frozenset({"$lastn"})
_TYPE_PARAMS: Final = frozenset({"_type", "_include", "_revinclude"})


class Operations:
    """Enforces operations by ``table`` (module docstring) with the read half's pieces."""

    def __init__(
        self,
        table: OperationTable | None,
        *,
        pager: Pager,
        releasing: Release,
        judging: Judging,
        rebaser: Rebaser,
        guards: GuardPolicy,
        base_urls: Sequence[str],
        mapper: Mapper | None,
    ) -> None:
        self.table = DEFAULT_TABLE if table is None else table
        self.pager = pager
        self.releasing = releasing
        self.rebaser = rebaser
        self.guards = guards
        self.base_urls = tuple(base_urls)
        self.mapper = mapper
        self.judging = judging
        self.stats = Stats(judging, pager=pager, forward=self.forward_query)
        self._modes: Final[dict[Mode, Callable[[Ask], Any]]] = {
            Mode.BUNDLE: self._bundle,
            Mode.DOCUMENT: self._document,
            Mode.STATS: self.stats.run,
            Mode.FORWARD: self._forward,
        }

    async def run(self, ask: Ask) -> Answer:
        """The answer to an operation request; :class:`Forbidden` when the table refuses it."""
        request = ask.request
        mode = self.table.mode(request.resource_type, request.level, request.operation)
        handler = self._modes.get(mode)
        if handler is None:
            raise Forbidden("this operation is not allowed through the gateway")
        check_interaction(ask.caller, request)
        answer: Answer = await handler(ask)
        return answer

    # -- modes -------------------------------------------------------------------------------

    async def _bundle(self, ask: Ask) -> Answer:
        request, own = ask.request, ask.caller.patient
        params = _query_only(ask)
        token = cursor_of(params)
        client = [(n, v) for n, v in params if n != CURSOR_PARAM]
        # Judged on whole resources, cut after (module docstring).
        subset, client = split_subset(client)
        self._guard(ask, client)
        everything = request.operation == "$everything"
        if request.level is Level.INSTANCE:
            patient = f"Patient/{request.resource_id}"
            if own is not None and request.resource_type == "Patient" and patient != own:
                raise not_found()
            if everything and request.resource_type == "Patient":
                await self._vouch_patient(ask, patient)
            released_as = ask
        else:
            client = self._narrow(ask, client)
            # Judged like a search: nothing released is an empty page, not a 404.
            search = dataclasses.replace(request, interaction=Interaction.SEARCH_TYPE)
            released_as = dataclasses.replace(ask, request=search)
        paging = self.pager.paging(request.path, [(n, v) for n, v in params if n != CURSOR_PARAM])
        if token is not None:
            page = self.pager.redeem(ask.caller, token, paging)
        else:
            page = Page(_target(request.path, client))
        up = await ask.forward("GET", page.sent, client_headers=False, headers=accept_of(ask))
        if up.status >= 400:
            raise read_failure(up, ask)
        if not isinstance(up.document, dict) or up.document.get("resourceType") != "Bundle":
            raise UpstreamError("the upstream server sent no Bundle")
        answer = await self.releasing.release(released_as, up, paging=paging, status=200, page=page)
        if everything:
            first = token is None and request.level is Level.INSTANCE
            self._keep_linked(answer, f"Patient/{request.resource_id}" if first else None)
        return _subset(ask, answer, subset)

    def _guard(self, ask: Ask, params: list[tuple[str, str]]) -> None:
        """The search guards on a filtered operation's parameters, whatever its level (they
        reach the upstream's search machinery as a search's do), and no count: the upstream's
        would count what is withheld."""
        caller = ask.caller
        check_search(params, caller_kind=caller.context, sees_everything=False, policy=self.guards)
        _refuse_gateway_types(params)
        if count_family(params) is not None:
            raise BadRequest(f"a count of {ask.request.operation} is not supported")

    async def _vouch_patient(self, ask: Ask, patient: str) -> None:
        """The generic 404, before anything is forwarded, unless the caller may see the
        Patient whose ``$everything`` is asked: its consent answers for the whole record."""
        probe = {"resourceType": "Patient", "id": patient.removeprefix("Patient/")}
        judge = await self.judging.judge(ask.caller, ACTION_ACCESS, probe, ask.trail)
        if not (ask.caller.may_see(probe) and judge.permits(probe)):
            ask.trail.withhold()
            raise not_found()

    def _keep_linked(self, answer: Answer, patient: str | None) -> None:
        """``$everything``'s released page without the resources outside the Patient
        compartment that no released resource references (:mod:`.linked`); with ``patient``
        (an instance's first page), the generic 404 unless that Patient was released."""
        document = answer.document
        entries = document.get("entry") if isinstance(document, dict) else None
        kept = keep_linked(entries or [], base_urls=self.base_urls)
        if patient is not None and not any(_is(entry, patient) for entry in kept):
            raise not_found()
        if kept:
            document["entry"] = kept
        elif isinstance(document, dict):
            document.pop("entry", None)

    def _narrow(self, ask: Ask, params: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """A type- or system-level filtered operation's query: a patient-context caller's
        pinned to its compartment (search-like operations only; others are refused)."""
        request, caller = ask.request, ask.caller
        search_like = request.operation in _SEARCH_LIKE
        if caller.patient is None:
            return self._mapped(ask, params) if search_like else params
        if not search_like or request.resource_type is None:
            raise Forbidden("this operation is not available in a patient context")
        ask.trail.narrow()
        own = caller.patient.removeprefix("Patient/")
        pinned = pin_patient(request.resource_type, params, own, base_urls=self.base_urls)
        return self._mapped(ask, pinned)

    def _mapped(self, ask: Ask, params: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if self.mapper is None:
            return params
        ask.trail.mapped(self.mapper.label)
        return self.mapper.search(ask.request.resource_type, params)

    async def _document(self, ask: Ask) -> Answer:
        request = ask.request
        params = _query_only(ask)
        if any(n == "persist" and v.strip().lower() != "false" for n, v in params):
            raise Forbidden("$document may not store the document through the gateway")
        if any(n == CURSOR_PARAM for n, _ in params):
            raise BadRequest("a document has no pages")
        subset, _ = split_subset(params)
        if subset is not None or count_family(params) is not None:
            raise BadRequest("a document is released whole: no _summary or _elements")
        self._guard(ask, params)
        up = await ask.forward(
            "GET", _target(request.path, params), client_headers=False, headers=accept_of(ask)
        )
        if up.status >= 400:
            raise read_failure(up, ask)
        document = up.document
        if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
            raise UpstreamError("the upstream server sent no document Bundle")
        trail = ask.trail
        withheld, redacted = trail.withheld, trail.redacted
        answer = await self.releasing.release(ask, up, status=200)
        if trail.withheld != withheld or trail.redacted != redacted:
            raise not_found()  # a partial document misrepresents the record (module docstring)
        return answer

    async def _forward(self, ask: Ask) -> Answer:
        """Forward ``ask`` as sent (its body too) and release an answer with no patient data."""
        request = ask.request
        target = _target(request.path, decode_params(request.query))
        up = await ask.forward(request.method, target, body=ask.body, headers=accept_of(ask))
        return self.release_forwarded(ask, up)

    async def forward_query(self, ask: Ask, params: Sequence[tuple[str, str]]) -> Answer:
        """GET ``ask``'s operation with ``params`` (checked values, not the client's query)
        and release the answer as a forwarded operation's."""
        target = _target(ask.request.path, params)
        up = await ask.forward("GET", target, client_headers=False, headers=accept_of(ask))
        return self.release_forwarded(ask, up)

    def release_forwarded(self, ask: Ask, up: Upstreamed) -> Answer:
        """An answer of an operation that carries no patient data (:mod:`.forwarded`)."""
        return release_forwarded(ask, up, rebaser=self.rebaser, base_urls=self.base_urls)


def _query_only(ask: Ask) -> list[tuple[str, str]]:
    """A filtered operation's parameters: the query string only (a body is not read)."""
    if ask.request.method == "POST" and ask.body:
        raise BadRequest(f"{ask.request.operation} takes its parameters in the query string")
    return decode_params(ask.request.query)


def _refuse_gateway_types(params: Sequence[tuple[str, str]]) -> None:
    for name, value in params:
        if name.partition(":")[0] not in _TYPE_PARAMS:
            continue
        words = {w for part in value.split(",") for w in part.strip().split(":")}
        if words & GATEWAY_OWNED:
            raise Forbidden("these resources are served by the gateway's own API")


def _is(entry: Any, reference: str) -> bool:
    """Whether ``entry`` holds the resource ``reference`` (``Type/id``)."""
    resource = entry.get("resource") if isinstance(entry, dict) else None
    return (
        isinstance(resource, dict)
        and f"{resource.get('resourceType')}/{resource.get('id')}" == reference
    )


def _subset(ask: Ask, answer: Answer, subset: Subset | None) -> Answer:
    """``answer`` with ``_summary``/``_elements`` applied, after judging (module docstring)."""
    if subset is None or answer.document is None:
        return answer
    ask.trail.narrow()
    return dataclasses.replace(answer, document=apply_subset_to_answer(answer.document, subset))


def _target(path: str, params: Sequence[tuple[str, str]]) -> str:
    return f"{path}?{encode_params(params)}" if params else path
