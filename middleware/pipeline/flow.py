"""Enforcement of reads: read, vread, searches, history, ``$everything``; dispatch of the rest.

:class:`Flow` takes one :class:`~middleware.pipeline.exchange.Ask` and returns the
:class:`~middleware.pipeline.exchange.Answer` to release, or raises a
:class:`~middleware.errors.GatewayError`. What it does per interaction (enforcement issue):

- **read, vread, history of an instance**: forwarded without the client's conditional headers
  (a ``304`` would confirm a record the caller may not see; a history's ``_summary=count``,
  ``_count=0`` and ``_total`` are refused, 400), then the answer is released
  (:mod:`~middleware.pipeline.release`: every resource judged, :mod:`~middleware.pipeline.judging`,
  and the answer filtered); a denied record, a missing one and a deleted one
  all get the same generic 404. A patient-context caller asking for another Patient gets that
  404 without anything being forwarded.
- **searches** (type, system, compartment; GET and ``POST _search``): search guards
  (:func:`~middleware.pipeline.guards.check_search`), then a patient-context caller's query is
  pinned to its compartment (:func:`~middleware.pipeline.guards.pin_patient`; a system-level
  search cannot be and is refused); ``_summary``/``_elements`` are taken off the upstream
  query and applied after judging full resources (:mod:`~middleware.pipeline.subset`); the
  answer is released like a read's (the upstream's ``Bundle.total`` stripped, pages
  refilled); ``_summary=count``, ``_count=0`` and ``_total`` are answered by counting what
  the caller may see (:mod:`~middleware.pipeline.counting`); paging links
  become sealed cursors bound to the caller, its purposes and the query
  (:mod:`~middleware.pipeline.cursor`), and a redeemed cursor's page is judged again.
- **history of a type or the system**: filtered like a search; refused to patient-context
  callers (it cannot be narrowed to a compartment).
- **operations**: by the operations table (:mod:`~middleware.pipeline.operations`,
  :mod:`~middleware.pipeline.operation_table`): filtered, forwarded with audit, or refused;
  what the table does not name, and ``$graphql``, is refused (403).
- **writes, batch and transaction** are not this module's:
  :class:`~middleware.pipeline.dispatch.Pipeline` hands them to
  :mod:`~middleware.pipeline.writes` and :mod:`~middleware.pipeline.bundles`, which use this
  flow's judging and release.

All time comes from the injected wall clock (cursor expiry, consent periods).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from middleware.consent.decide import Defaults
from middleware.errors import BadRequest, Forbidden
from middleware.fhir.compartment_data import PATIENT_COMPARTMENT
from middleware.fhir.request import Interaction
from middleware.ops.tracing import stage
from middleware.pipeline.breakglass import BreakGlass
from middleware.pipeline.caller import check_interaction
from middleware.pipeline.counting import (
    Counter,
    CountSlots,
    has_total,
    total_answer,
    without_total,
)
from middleware.pipeline.cursor import CURSOR_PARAM, CursorCodec
from middleware.pipeline.exchange import Answer, Ask, not_found
from middleware.pipeline.guards import Family, GuardPolicy, check_search, count_family, pin_patient
from middleware.pipeline.judge import GATEWAY_OWNED
from middleware.pipeline.judging import Judging, PolicySource
from middleware.pipeline.mapper import Mapper
from middleware.pipeline.memberships import Memberships
from middleware.pipeline.operation_table import DEFAULT_TABLE, OperationTable
from middleware.pipeline.operations import Operations
from middleware.pipeline.paging import Page, Pager, cursor_of
from middleware.pipeline.params import decode_params, encode_params
from middleware.pipeline.release import Release, accept_of, read_failure
from middleware.pipeline.subset import split_subset
from middleware.proxy.rewrite import Rebaser

__all__ = ["FILTERED_OPERATIONS", "Flow", "PolicySource"]

#: ``(type, operation)`` the default operations table allows at some level (``*``: any type);
#: what it does not name is refused (deny by default).
FILTERED_OPERATIONS: Final = DEFAULT_TABLE.allowed()


class Flow:
    """The read half of the enforcement pipeline for one gateway (see the module docstring).

    ``policies`` loads a patient's consents; the write halves are built on this one
    (:mod:`~middleware.pipeline.dispatch`) and judge and release through its :attr:`judging`
    (:class:`~middleware.pipeline.judging.Judging`) and :attr:`releasing`
    (:class:`~middleware.pipeline.release.Release`). ``allow_unknown`` names the caller
    contexts (``user``, ``system``, ``patient``) for which a resource whose patient cannot be
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
        memberships: Memberships | None = None,
        operations: OperationTable | None = None,
    ) -> None:
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
        self.judging = Judging(
            policies=policies,
            defaults=defaults,
            base_urls=self.base_urls,
            allow_unknown=allow_unknown,
            wall_clock=wall_clock,
            break_glass=break_glass,
            memberships=memberships,
        )
        self.releasing = Release(
            self.judging, pager=self.pager, rebaser=rebaser, mapper=mapper, walk=guards
        )
        self.count_slots = CountSlots(guards.count_max_concurrent)  # per process (counting.py)
        self.operations = Operations(
            operations,
            pager=self.pager,
            releasing=self.releasing,
            judging=self.judging,
            rebaser=rebaser,
            guards=guards,
            base_urls=self.base_urls,
            mapper=mapper,
        )

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
            if count_family(params) is not None:
                # The upstream would count every version, withheld ones included: refused, never
                # forwarded (R4 search.html#summary; the gateway counts searches only).
                raise BadRequest("a count of one record's history is not supported")
            token = cursor_of(params)
            params = [(n, v) for n, v in params if n != CURSOR_PARAM]
            paging = self.pager.paging(request.path, params)
            if token is not None:
                page = self.pager.redeem(ask.caller, token, paging)
        subset, rest = split_subset(params)
        if page is None:
            page = Page(_target(request.path, rest))
        # Without the client's conditional headers: a 304 would confirm a hidden record.
        up = await ask.forward("GET", page.sent, headers=accept_of(ask), client_headers=False)
        if up.status >= 400:
            raise read_failure(up, ask)
        return await self.releasing.release(
            ask, up, paging=paging, subset=subset, status=200, page=page
        )

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
        counted = count_family(rest)  # answered by counting what may be released (counting.py)
        check_search(
            rest,
            caller_kind=caller.context,
            sees_everything=False,
            policy=self.guards,
            counted=True,
        )
        _refuse_gateway_types(rest)
        query: list[tuple[str, str]] = []
        if token is None or counted is not None:
            query = self.map_search(ask, request.resource_type, self._narrow(ask, rest))
        page = (
            Page(_target(path, without_total(query)))
            if token is None
            else self.pager.redeem(caller, token, paging)
        )
        counter = Counter(
            self.judging,
            rebaser=self.rebaser,
            pager=self.pager,
            policy=self.guards,
            mapper=self.mapper,
            slots=self.count_slots,
        )
        if counted is Family.COUNT:
            return await counter.answer(ask, path, query)
        up = await ask.forward("GET", page.sent, client_headers=False, headers=accept_of(ask))
        if up.status >= 400:
            raise read_failure(up, ask)
        answer = await self.releasing.release(
            ask, up, paging=paging, subset=subset, status=200, page=page, first=token is None
        )
        if counted is Family.TOTAL and not has_total(answer):  # a whole first page has it
            return total_answer(answer, await counter.count(ask, path, query))
        return answer

    async def _operation(self, ask: Ask) -> Answer:
        return await self.operations.run(ask)

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
        with stage("map"):
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


def _target(path: str, params: Sequence[tuple[str, str]]) -> str:
    return f"{path}?{encode_params(params)}" if params else path
