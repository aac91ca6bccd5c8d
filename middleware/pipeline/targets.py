"""What a write may touch: its target's current version and a conditional write's matches,
fetched from the upstream and each checked, and the consent check of any resource it writes.

Conditional targets (``PUT/PATCH/DELETE [type]?criteria``, ``If-None-Exist``) are resolved
first with a search of at most two matches (:meth:`Targets.matches`): one visible match
becomes the instance write it names; several, or any the caller may not see, get the same 412
(a hidden match must not be written, and must not be told apart from several). A record the
caller may not see, a missing one and a deleted one all answer the generic 404
(:meth:`Targets.current`), and nothing is forwarded; a target whose labels on data withhold
it from the caller's reads (purpose of use, :mod:`middleware.consent.labels`) is such a
record. A write may not take off a label the caller is not entitled to
(:meth:`Targets.check_labels`). :meth:`Targets.check` is the one consent
and compartment check of a write (FHIR consentaction ``collect`` for what is new, ``correct``
for what exists, ``access`` for a conditional match); its refusal says neither whether a
consent exists nor why (:data:`DENIED_WRITE`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from middleware.consent.labels import Screen, relabelling_refused
from middleware.errors import BadRequest, Forbidden, GatewayError, PreconditionFailed, UpstreamError
from middleware.fhir.request import FhirRequest, Level
from middleware.ops.tracing import stage
from middleware.pipeline.caller import ACTION_ACCESS, ACTION_CORRECT
from middleware.pipeline.exchange import Ask, Upstreamed, not_found, upstream_failure
from middleware.pipeline.flow import Flow
from middleware.pipeline.guards import check_search
from middleware.pipeline.judge import GATEWAY_OWNED
from middleware.pipeline.pages import is_match, next_link
from middleware.pipeline.params import decode_params, encode_params

__all__ = ["DENIED_WRITE", "NO_SINGLE_MATCH", "Targets", "json_accept"]

#: The one text of every refused write: it says neither whether a consent exists nor why.
DENIED_WRITE: Final = "this write is not allowed"
#: The 412 of a condition that matches several resources, or one the caller may not see.
NO_SINGLE_MATCH: Final = "the condition does not identify exactly one resource"
_MATCHES_LIMIT: Final = "2"
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


class Targets:
    """Fetches and checks what a write touches (module docstring), judging through the read
    half ``flow`` (its judge, search guards and mapping)."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow

    async def current(self, ask: Ask) -> dict[str, Any] | None:
        """The current version of the write's target, checked visible and writable by the
        caller (``correct``); None when it does not exist (404/410). A hidden target raises
        the generic 404 (412 for a conditional write, as for several matches)."""
        request = ask.request
        if request.conditional and request.level is Level.TYPE:
            matches = await self.matches(ask, request.resource_type or "", request.query)
            if len(matches) > 1:
                raise PreconditionFailed(NO_SINGLE_MATCH)
            current = matches[0] if matches else None
        else:
            up = await ask.forward(
                "GET",
                f"{request.resource_type}/{request.resource_id}",
                headers=json_accept(),
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
            await self.check(ask, current, ACTION_CORRECT, hidden=not_found, screened=True)
        return current

    async def matches(self, ask: Ask, rtype: str, criteria: bytes) -> list[dict[str, Any]]:
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
        up = await ask.forward("GET", target, headers=json_accept(), client_headers=False)
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
            raise PreconditionFailed(NO_SINGLE_MATCH)
        for resource in found:
            await self.check(ask, resource, ACTION_ACCESS, hidden=_no_single_match, screened=True)
        return found

    async def check(
        self,
        ask: Ask,
        resource: dict[str, Any],
        action: tuple[str, str],
        *,
        hidden: Callable[[], GatewayError] | None = None,
        screened: bool = False,
    ) -> None:
        """Raise unless the consent and compartment rules let the caller do ``action`` on
        ``resource``, a resource of the request's type (``hidden()`` is raised instead of the
        generic write refusal). ``screened``: ``resource`` exists upstream, and its labels
        must let the caller read it too (:meth:`~middleware.pipeline.judge.Judge.screened`,
        the read rule), or a write would tell what a read hides (a PATCH ``test`` op is an
        oracle on a record's content)."""
        kind = resource.get("resourceType")
        if not isinstance(kind, str):  # a list is unhashable: never looked up in a set
            raise BadRequest(f"the resource must be a {ask.request.resource_type} resource")
        if kind in GATEWAY_OWNED:
            raise Forbidden(DENIED_WRITE)  # the gateway's own consent API owns them
        if kind != ask.request.resource_type:
            raise BadRequest(f"the resource must be a {ask.request.resource_type} resource")
        with stage("decide") as marks:
            judge = await self.flow.judging.judge(ask.caller, action, resource, ask.trail)
            marks.set("consentry.patients", len(judge.policies))
        if screened and judge.screened(resource) is Screen.WITHHOLD:
            raise (hidden or _denied)()
        if not judge.permits(resource):
            raise (hidden or _denied)()

    def check_labels(self, ask: Ask, before: dict[str, Any], after: dict[str, Any]) -> None:
        """Refuse (the generic :data:`DENIED_WRITE`) a write turning ``before`` into
        ``after`` that removes or changes a purpose-of-use label the caller's purposes do not
        admit, or a 42 CFR Part 2 label (:func:`~middleware.consent.labels.relabelling_refused`):
        taking a label off releases the record to the callers it kept it from."""
        rules = self.flow.judging.defaults.labels
        if relabelling_refused(before, after, ask.caller.purposes, rules):
            raise _denied()


def json_accept() -> list[tuple[str, str]]:
    """The ``Accept`` of the gateway's own GETs for a write: FHIR JSON."""
    return [("accept", "application/fhir+json")]


def _as_error(up: Upstreamed, request: FhirRequest) -> GatewayError:
    outcome = upstream_failure(up, request)
    return outcome if isinstance(outcome, GatewayError) else UpstreamError("upstream failed")


def _denied() -> GatewayError:
    return Forbidden(DENIED_WRITE)


def _no_single_match() -> GatewayError:
    return PreconditionFailed(NO_SINGLE_MATCH)
