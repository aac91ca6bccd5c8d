"""Enforcement of reads: read, vread, searches, history, ``$everything``; dispatch of the rest.

:class:`Flow` takes one :class:`~middleware.pipeline.exchange.Ask` and returns the
:class:`~middleware.pipeline.exchange.Answer` to release, or raises a
:class:`~middleware.errors.GatewayError`. What it does per interaction (enforcement issue):

- **read, vread, history of an instance**: forwarded without the client's conditional headers
  (a ``304`` would confirm a record the caller may not see), then every resource is judged
  (:class:`~middleware.pipeline.judge.Judge`); a denied record, a missing one and a deleted one
  all get the same generic 404. A patient-context caller asking for another Patient gets that
  404 without anything being forwarded.
- **searches** (type, system, compartment; GET and ``POST _search``): search guards
  (:func:`~middleware.pipeline.guards.check_search`), then a patient-context caller's query is
  pinned to its compartment (:func:`~middleware.pipeline.guards.pin_patient`; a system-level
  search cannot be and is refused); ``_summary``/``_elements`` are taken off the upstream
  query and applied after judging full resources (:mod:`~middleware.pipeline.subset`); the
  answer is filtered (:func:`~middleware.pipeline.filter.filter_answer`, ``Bundle.total``
  stripped); paging links become sealed cursors bound to the caller, its purposes and the
  query (:mod:`~middleware.pipeline.cursor`), and a redeemed cursor's page is judged again.
- **history of a type or the system**: filtered like a search; refused to patient-context
  callers (it cannot be narrowed to a compartment).
- **operations**: ``Patient/[id]/$everything`` filtered (a patient-context caller only on its
  own record); every other operation and ``$graphql`` is refused (403).
- **writes, batch and transaction** are not this module's:
  :class:`~middleware.pipeline.dispatch.Pipeline` hands them to
  :mod:`~middleware.pipeline.writes` and :mod:`~middleware.pipeline.bundles`, which use this
  flow's judging and release.

All time comes from the injected wall clock (cursor expiry, consent periods).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from middleware.consent.decide import Defaults
from middleware.consent.decisions import DecisionCache
from middleware.consent.model import Coding, Policy
from middleware.errors import BadRequest, Forbidden, GatewayError, UpstreamError
from middleware.fhir.compartment import PatientRefs
from middleware.fhir.compartment_data import PATIENT_COMPARTMENT
from middleware.fhir.request import Interaction, Level
from middleware.pipeline.breakglass import BreakGlass, forbids_break_glass
from middleware.pipeline.caller import ACTION_ACCESS, Caller, check_interaction
from middleware.pipeline.cursor import CURSOR_PARAM, CursorCodec, rewrite_links
from middleware.pipeline.exchange import Answer, Ask, Upstreamed, not_found, upstream_failure
from middleware.pipeline.filter import filter_answer
from middleware.pipeline.guards import GuardPolicy, check_search, pin_patient
from middleware.pipeline.judge import GATEWAY_OWNED, Judge, Trail, needs_walk, patients_in
from middleware.pipeline.mapper import Mapper
from middleware.pipeline.pages import (
    MAX_REFILL_PAGES,
    is_match,
    next_link,
    requested_count,
    skip_matches,
    take,
    with_skip,
)
from middleware.pipeline.paging import Page, Pager, Paging, cursor_of
from middleware.pipeline.params import decode_params, encode_params
from middleware.pipeline.subset import Subset, apply_subset_to_answer, split_subset
from middleware.proxy.rewrite import Rebaser

__all__ = ["FILTERED_OPERATIONS", "Flow", "PolicySource"]

#: Operations the gateway filters; every other one is refused (deny by default).
FILTERED_OPERATIONS: Final = frozenset({("Patient", "$everything")})
_RELEASED_HEADERS: Final = frozenset({"content-type", "etag", "last-modified"})
#: Answers about one record: when all of it is withheld, the record's own 404 is answered.
_OF_ONE_RECORD: Final = frozenset({Interaction.HISTORY_INSTANCE, Interaction.OPERATION})
#: Bundle types whose pages are refilled: results of a search and of a history.
_PAGED: Final = frozenset({"searchset", "history"})

#: Loads the compiled consents of one patient (``Patient/<id>``).
PolicySource = Callable[[str], Awaitable[tuple[Policy, ...]]]


class Flow:
    """The enforcement pipeline for one gateway (see the module docstring).

    ``policies`` loads a patient's consents; the write halves are built on this one
    (:mod:`~middleware.pipeline.dispatch`). ``allow_unknown`` names the caller contexts
    (``user``, ``system``, ``patient``) for which a resource whose patient cannot be
    determined is released.
    """

    def __init__(
        self,
        *,
        policies: PolicySource,
        cursors: CursorCodec,
        guards: GuardPolicy,
        defaults: Defaults,
        rebaser: Rebaser,
        base_urls: Sequence[str],
        allow_unknown: frozenset[str] = frozenset(),
        wall_clock: Callable[[], float],
        break_glass: BreakGlass | None = None,
        mapper: Mapper | None = None,
    ) -> None:
        self._policies = policies
        self.pager = Pager(
            cursors,
            gateway_base=rebaser.gateway_base,
            upstream_base=rebaser.upstream_base,
            wall_clock=wall_clock,
        )
        self.guards = guards
        self.defaults = defaults
        self.rebaser = rebaser
        self.base_urls = tuple(base_urls)
        self.allow_unknown = allow_unknown
        self.wall_clock = wall_clock
        self.break_glass = break_glass
        self.mapper = mapper
        self.gateway_base = rebaser.gateway_base
        self.upstream_base = rebaser.upstream_base
        # Decisions outlive one exchange: a consent change is a new policies tuple from the
        # registry, so a new key (middleware.consent.decisions).
        self.decisions = DecisionCache(defaults)

    async def run(self, ask: Ask) -> Answer:
        """The answer to ``ask``; raises :class:`GatewayError` for every refusal."""
        interaction = ask.request.interaction
        if interaction in (Interaction.READ, Interaction.VREAD, Interaction.HISTORY_INSTANCE):
            return await self._read(ask)
        if interaction in (
            Interaction.SEARCH_TYPE,
            Interaction.SEARCH_SYSTEM,
            Interaction.SEARCH_COMPARTMENT,
            Interaction.HISTORY_TYPE,
            Interaction.HISTORY_SYSTEM,
        ):
            return await self._search(ask)
        if interaction is Interaction.OPERATION:
            return await self._operation(ask)
        if ask.request.is_write:  # the write halves' (pipeline.dispatch): never judged as a read
            raise Forbidden("writes are not enabled on this gateway")
        # $graphql and anything a later classification adds: refused until it is enforced.
        raise Forbidden("this interaction is not allowed through the gateway")

    # -- judging -----------------------------------------------------------------------------

    async def judge(
        self,
        caller: Caller,
        action: Coding,
        document: Any,
        trail: Trail,
        raw: bytes | None = None,
    ) -> Judge:
        """A :class:`Judge` for ``document`` (``raw``: its bytes as received, when known) with
        the consents of every patient it touches."""
        seen: dict[int, PatientRefs] = {}
        patients = patients_in(document, base_urls=self.base_urls, seen=seen)
        policies = {patient: await self._policies(patient) for patient in sorted(patients)}
        seconds = self.wall_clock()
        now = datetime.fromtimestamp(seconds, UTC)
        return Judge(
            caller=caller,
            action=action,
            policies=policies,
            defaults=self.defaults,
            now=now,
            base_urls=self.base_urls,
            allow_unknown=caller.context in self.allow_unknown,
            override=self._override(
                caller, action=action, policies=policies, trail=trail, seconds=seconds, now=now
            ),
            trail=trail,
            seen=seen,
            walk=needs_walk(raw, policies.values()),
            decisions=self.decisions,
        )

    def _override(
        self,
        caller: Caller,
        *,
        action: Coding,
        policies: dict[str, tuple[Policy, ...]],
        trail: Trail,
        seconds: float,
        now: datetime,
    ) -> frozenset[str]:
        """The patients whose denials break-the-glass overrides for this read: those of an
        open session, or all when the request asks for emergency access, minus every patient
        whose consent refuses it. Writes are never overridden."""
        if self.break_glass is None or action != ACTION_ACCESS:
            return frozenset()
        candidates = set(self.break_glass.active(caller, seconds))
        if trail.emergency:
            candidates |= set(policies)
        return frozenset(
            p for p in candidates & set(policies) if not forbids_break_glass(policies[p], now)
        )

    async def release(
        self,
        ask: Ask,
        up: Upstreamed,
        *,
        paging: Paging | None = None,
        subset: Subset | None = None,
        status: int | None = None,
        page: Page | None = None,
    ) -> Answer:
        """Judge and filter an upstream answer read for ``ask``'s caller (see the module
        docstring); the generic 404 when nothing of it may be released. ``page`` says where a
        page of search or history results came from, so that it can be refilled."""
        document = up.document
        if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
            raise UpstreamError("the upstream server sent no FHIR resource")
        if (
            paging is not None
            and page is not None
            and document["resourceType"] == "Bundle"
            and document.get("type") in _PAGED
        ):
            return await self._release_page(ask, up, document, paging, page, subset, status)
        if paging is not None and document["resourceType"] == "Bundle":
            # Cursors first: they seal the upstream URLs, before rebasing would change them.
            pager = paging
            rewrite_links(
                document,
                lambda link: self.pager.url(ask.caller, pager, link),
                self_url=ask.self_url,
            )
        occurrences = self.rebaser.occurrences(up.raw)
        if occurrences:
            self.rebaser.rewrite(document, occurrences)
        judge = await self.judge(ask.caller, ACTION_ACCESS, document, ask.trail, up.raw)
        redacted = ask.trail.redacted
        released, _stats = filter_answer(document, judge.allowed)
        if released is None:
            raise not_found()
        headers = self._headers(up)
        changed = bool(occurrences) or ask.trail.redacted != redacted
        if self.mapper is not None:
            mapped = self.mapper.answer(released)
            ask.trail.mapped(self.mapper.label)
            changed |= mapped is not released
            released = mapped
        if subset is not None:
            released = apply_subset_to_answer(released, subset)
            ask.trail.narrow()
        elif document["resourceType"] != "Bundle" and not changed:
            # Released whole and unchanged: the upstream's bytes, as written.
            return Answer(status or up.status, headers, raw=up.raw)
        return Answer(status or up.status, headers, released)

    async def _release_page(  # noqa: PLR0917 - release()'s arguments, passed on
        self,
        ask: Ask,
        up: Upstreamed,
        document: dict[str, Any],
        paging: Paging,
        page: Page,
        subset: Subset | None,
        status: int | None,
    ) -> Answer:
        """A page of results with as many matches as the client asked for (:mod:`.pages`):
        withheld entries are made up from the following upstream pages, and the next cursor
        continues exactly after the last match released."""
        original_links = _copy_links(document.get("link"))
        entries, upstream_size, following = await self._page_entries(ask, up, document)
        target = requested_count(paging.params)
        target = upstream_size if target is None else target
        kept, taken, left = take(skip_matches(entries, page.skip), target)
        refilled = page.skip > 0 or left
        resume = with_skip(page.sent, page.skip + taken) if left else following
        fetched = 0
        while not left and following and fetched < MAX_REFILL_PAGES:
            have = sum(1 for entry in kept if is_match(entry))
            if have >= target:
                break
            fetched += 1
            refilled = True
            link = following
            more_up = await ask.forward("GET", link, client_headers=False, headers=_accept(ask))
            if more_up.status >= 400:
                raise _failure(more_up, ask)
            more = more_up.document
            if not isinstance(more, dict) or more.get("resourceType") != "Bundle":
                raise UpstreamError("the upstream server sent no Bundle page")
            more_entries, _, following = await self._page_entries(ask, more_up, more)
            added, taken, left = take(more_entries, target - have)
            kept += added
            resume = with_skip(link, taken) if left else following
        if not kept and page.skip == 0 and ask.request.interaction in _OF_ONE_RECORD:
            # Everything withheld: the history or $everything of a record the caller may not
            # see is the same 404 as that of a record that does not exist.
            raise not_found()
        if target == 0:
            resume = None  # a page of nothing offers no next page: "next" would tell matches exist
        if self.mapper is not None:
            kept = self.mapper.entries(kept)
            ask.trail.mapped(self.mapper.label)
        if kept:
            document["entry"] = kept
        else:
            document.pop("entry", None)
        if refilled:
            links = [{"relation": "self", "url": ask.self_url}]
            if resume:
                links.append(
                    {"relation": "next", "url": self.pager.url(ask.caller, paging, resume)}
                )
            document["link"] = links
        else:
            if original_links is not None:
                document["link"] = original_links
            rewrite_links(
                document,
                lambda link: self.pager.url(ask.caller, paging, link),
                self_url=ask.self_url,
            )
        if subset is not None:
            document = apply_subset_to_answer(document, subset)
            ask.trail.narrow()
        return Answer(status or up.status, self._headers(up), document)

    def _headers(self, up: Upstreamed) -> list[tuple[str, str]]:
        """The upstream headers an answer releases, and the mapping profile when one is on."""
        headers = [(k, v) for k, v in up.headers if k in _RELEASED_HEADERS]
        if self.mapper is not None:
            headers.append(("x-consentry-mapping", self.mapper.profile.id))
        return headers

    async def _page_entries(
        self, ask: Ask, up: Upstreamed, document: dict[str, Any]
    ) -> tuple[list[Any], int, str | None]:
        """One upstream page judged: its released entries, how many matches it held before
        filtering, and its upstream ``next`` link (read before rebasing changes it)."""
        following = next_link(document)  # before rebasing rewrites it
        raw_entries = document.get("entry")
        size = sum(1 for e in raw_entries if is_match(e)) if isinstance(raw_entries, list) else 0
        occurrences = self.rebaser.occurrences(up.raw)
        if occurrences:
            self.rebaser.rewrite(document, occurrences)
        judge = await self.judge(ask.caller, ACTION_ACCESS, document, ask.trail, up.raw)
        released, _stats = filter_answer(document, judge.allowed)
        if released is None:
            return [], size, following
        entries = released.get("entry")
        return (entries if isinstance(entries, list) else []), size, following

    # -- interactions ------------------------------------------------------------------------

    async def _read(self, ask: Ask) -> Answer:
        request, caller = ask.request, ask.caller
        check_interaction(caller, request)
        if (
            caller.patient is not None
            and request.resource_type == "Patient"
            and f"Patient/{request.resource_id}" != caller.patient
        ):
            raise not_found()
        params = decode_params(request.query)
        paging = page = None
        if request.interaction is Interaction.HISTORY_INSTANCE:
            token = cursor_of(params)
            params = [(n, v) for n, v in params if n != CURSOR_PARAM]
            paging = self.pager.paging(request.path, params)
            if token is not None:
                page = self.pager.redeem(ask.caller, token, paging)
        subset, rest = split_subset(params)
        if page is None:
            page = Page(_target(request.path, rest))
        # Without the client's conditional headers: a 304 would confirm a hidden record.
        up = await ask.forward("GET", page.sent, headers=_accept(ask), client_headers=False)
        if up.status >= 400:
            raise _failure(up, ask)
        return await self.release(ask, up, paging=paging, subset=subset, status=200, page=page)

    async def _search(self, ask: Ask) -> Answer:
        request, caller = ask.request, ask.caller
        check_interaction(caller, request)
        params = decode_params(request.query)
        if request.via_post:
            params += decode_params(ask.body)
        path = request.path.removesuffix("_search").rstrip("/")
        token = cursor_of(params)
        client = [(n, v) for n, v in params if n != CURSOR_PARAM]
        paging = self.pager.paging(path, client)
        subset, rest = split_subset(client)
        check_search(rest, caller_kind=caller.context, sees_everything=False, policy=self.guards)
        _refuse_gateway_types(rest)
        if token is not None:
            page = self.pager.redeem(ask.caller, token, paging)
        else:
            target = _target(
                path, self.map_search(ask, request.resource_type, self._narrow(ask, rest))
            )
            page = Page(target)
        up = await ask.forward("GET", page.sent, client_headers=False, headers=_accept(ask))
        if up.status >= 400:
            raise _failure(up, ask)
        return await self.release(ask, up, paging=paging, subset=subset, status=200, page=page)

    async def _operation(self, ask: Ask) -> Answer:
        request, caller = ask.request, ask.caller
        if (request.resource_type, request.operation) not in FILTERED_OPERATIONS or (
            request.level is not Level.INSTANCE
        ):
            raise Forbidden("this operation is not allowed through the gateway")
        check_interaction(caller, request)
        if caller.patient is not None and f"Patient/{request.resource_id}" != caller.patient:
            raise not_found()
        params = decode_params(request.query)
        if request.method == "POST" and ask.body:
            raise BadRequest("$everything takes its parameters in the query string")
        token = cursor_of(params)
        client = [(n, v) for n, v in params if n != CURSOR_PARAM]
        paging = self.pager.paging(request.path, client)
        if token is not None:
            page = self.pager.redeem(ask.caller, token, paging)
        else:
            page = Page(_target(request.path, client))
        up = await ask.forward("GET", page.sent, client_headers=False, headers=_accept(ask))
        if up.status >= 400:
            raise _failure(up, ask)
        return await self.release(ask, up, paging=paging, status=200, page=page)

    # -- helpers -----------------------------------------------------------------------------

    def _narrow(self, ask: Ask, params: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """A patient-context caller's query pinned to its own compartment."""
        request, own = ask.request, ask.caller.patient
        if own is None:
            return params
        ask.trail.narrow()
        if request.interaction in (Interaction.HISTORY_TYPE, Interaction.HISTORY_SYSTEM):
            raise Forbidden("history of a type or the system is not available in a patient context")
        if request.compartment is not None and request.compartment[0] == "Patient":
            if f"Patient/{request.compartment[1]}" != own:
                raise Forbidden("a patient-context search may name only the caller's patient")
            return params
        rtype = request.resource_type
        if rtype is not None and rtype not in PATIENT_COMPARTMENT and rtype != "Patient":
            return params  # not patient data: judged by scopes alone
        return pin_patient(rtype, params, own.removeprefix("Patient/"), base_urls=self.base_urls)

    def map_search(
        self, ask: Ask, resource_type: str | None, params: list[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """``params`` in the upstream's codes and systems when a mapping profile is on."""
        if self.mapper is None:
            return params
        ask.trail.mapped(self.mapper.label)
        return self.mapper.search(resource_type, params)


_TYPE_PARAMS: Final = frozenset({"_type", "_include", "_revinclude"})


def _refuse_gateway_types(params: Sequence[tuple[str, str]]) -> None:
    """A search may not bring the gateway's own types (Consent) from the upstream, by
    ``_type``, ``_include`` or ``_revinclude`` (answers withhold them anyway: this keeps the
    query itself from reaching the upstream)."""
    for name, value in params:
        if name.partition(":")[0] not in _TYPE_PARAMS:
            continue
        words = {w for part in value.split(",") for w in part.strip().split(":")}
        if words & GATEWAY_OWNED:
            raise Forbidden("these resources are served by the gateway's own API")


def _copy_links(links: Any) -> Any:
    """``Bundle.link`` as :func:`rewrite_links` will read it, kept from the in-place rebasing
    of the document: a list's link objects copied one level (their ``relation`` and ``url``,
    all it keeps, are strings: a link whose are not is dropped whatever they hold); anything
    else as it is (rewrite_links keeps nothing of it). A tenth of ``copy.deepcopy``'s cost."""
    if not isinstance(links, list):
        return links
    return [dict(link) if isinstance(link, dict) else link for link in links]


def _target(path: str, params: Sequence[tuple[str, str]]) -> str:
    return f"{path}?{encode_params(params)}" if params else path


def _accept(ask: Ask) -> list[tuple[str, str]]:
    return [(k, v) for k, v in ask.headers.items() if k == "accept"]


def _failure(up: Upstreamed, ask: Ask) -> GatewayError:
    outcome = upstream_failure(up, ask.request)
    if isinstance(outcome, GatewayError):
        return outcome
    return UpstreamError(f"the upstream server failed ({up.status})")  # reads only: unreachable
