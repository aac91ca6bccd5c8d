"""``Observation/$stats``: statistics released only when all they summarise may be seen.

The answer of ``$stats`` (R4 observation-operation-stats) is a Parameters of statistics
(average, count, minimum...) computed upstream over a patient's Observations: no resource in
it can be withheld, and a count or an average of a hidden value discloses it. So the gateway
releases it only when it can vouch for every input, and fails closed otherwise:

1. The query names exactly one patient: one ``subject`` or ``patient`` parameter holding one
   ``Patient/<id>`` (or a bare id), and at least one ``code`` or ``coding``; any parameter
   the operation does not define is a 400 (its meaning upstream is unknown), ``include=true``
   (which would return the Observations themselves) a 403. A patient-context caller naming
   another patient gets the generic 404.
2. Before forwarding, the patient's consents must grant this caller *every* Observation of
   the patient: an Observation of that patient with no codes, labels, date or id is judged
   (:meth:`~middleware.pipeline.judge.Judge.permits`), and no active consent of the patient
   may hold a deny decided by what an Observation says (its codes, security labels, date,
   id or references, an R5 ``expression``, a profile or coded class), itself or
   through a provision above it (:func:`narrowed`). Otherwise the answer is the generic
   404, whatever data the patient has: the consent alone answers, so that the 404 cannot
   tell whether the patient has Observations a consent hides (a probe with the asked codes
   could not: codes without a system, labels, dates and expressions are not in a query).
   Then every Observation
   of that patient with the asked codes is fetched with an ordinary search
   (``Observation?patient=...&code=...``, any date: a superset of what a ``period`` or
   ``duration`` selects) and judged as a search answer would be. One withheld
   or redacted Observation, a result the gateway cannot read, or more than
   :data:`MAX_PAGES` pages, and the answer is the generic 404 a denied read gets; so is
   an answer with no Observation at all (nothing to summarise), so that a patient who does
   not exist, or has none, answers as one whose consent refuses does.
3. Only then is ``$stats`` forwarded, with a query rebuilt from the checked values
   (``subject=Patient/<id>``, the codes, and the operation's other defined parameters; never
   the client's query string), and its answer released like a forwarded operation's.

The audit of the exchange names the Observations the statistics were computed over: they
were disclosed in summary.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any, Final

from middleware.consent.model import DENY, Policy, Provision
from middleware.errors import BadRequest, Forbidden, UpstreamError
from middleware.fhir.resource_types import RESOURCE_TYPES
from middleware.pipeline.caller import ACTION_ACCESS
from middleware.pipeline.exchange import Answer, Ask, not_found
from middleware.pipeline.filter import filter_answer
from middleware.pipeline.judging import Judging
from middleware.pipeline.pages import next_link
from middleware.pipeline.paging import Pager
from middleware.pipeline.params import decode_params, encode_params
from middleware.pipeline.release import bundle_page

__all__ = ["MAX_PAGES", "PAGE_SIZE", "Stats", "narrowed"]

#: How many pages of a patient's Observations are judged before the gateway gives up (404).
MAX_PAGES: Final = 20
PAGE_SIZE: Final = 100
#: The parameters R4 defines for Observation/$stats (observation-operation-stats).
_DEFINED: Final = frozenset(
    {"subject", "patient", "code", "system", "coding", "duration", "period", "statistic"}
    | {"include", "limit"}
)
#: Defined parameters forwarded as given: they say what to compute, not over whom.
_PASSED: Final = ("duration", "period", "statistic", "limit")
_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")


class Stats:
    """Enforces ``Observation/$stats`` (module docstring) with ``judging``; ``forward``
    forwards the request and releases its answer as a forwarded operation's."""

    def __init__(
        self,
        judging: Judging,
        *,
        pager: Pager,
        forward: Callable[[Ask, Sequence[tuple[str, str]]], Awaitable[Answer]],
    ) -> None:
        self.judging = judging
        self.pager = pager
        self._forward = forward

    async def run(self, ask: Ask) -> Answer:
        """The statistics, or the generic 404 when not every input may be seen."""
        if ask.request.method == "POST" and ask.body:
            raise BadRequest("$stats takes its parameters in the query string")
        params = decode_params(ask.request.query)
        patient = _patient(params)
        own = ask.caller.patient
        if own is not None and patient != own:
            raise not_found()
        if any(n == "include" and v.strip().lower() != "false" for n, v in params):
            raise Forbidden("$stats is released without the Observations (include)")
        codes = _codes(params)
        await self._vouch(ask, patient, codes)
        return await self._forward(ask, _query(params, patient))

    async def _vouch(self, ask: Ask, patient: str, codes: list[str]) -> None:
        """Judge every Observation of ``patient`` with ``codes``; 404 unless all released."""
        trail = ask.trail
        withheld, redacted = trail.withheld, trail.redacted
        probe = _probe(patient)
        judge = await self.judging.judge(ask.caller, ACTION_ACCESS, probe, trail)
        overridden = patient in judge.override  # break-the-glass: every denial overridden
        if (
            not (ask.caller.may_see(probe) and judge.permits(probe))
            or (not overridden and narrowed(judge.policies.get(patient, ()), judge.now))
            or trail.withheld != withheld
            or trail.redacted != redacted
        ):
            trail.withhold()
            raise not_found()
        query = [("patient", patient), ("code", ",".join(codes)), ("_count", str(PAGE_SIZE))]
        link: str | None = f"Observation?{encode_params(query)}"
        found = 0
        for _ in range(MAX_PAGES):
            if link is None:
                break
            up, page = await bundle_page(ask, link)
            link = next_link(page)
            if link is not None and not self.pager.on_upstream(link):
                raise UpstreamError("the upstream server sent a page link off its base")
            judge = await self.judging.judge(ask.caller, ACTION_ACCESS, page, trail, up.raw)
            released, _ = filter_answer(page, judge.allowed)
            if released is None or trail.withheld != withheld or trail.redacted != redacted:
                raise not_found()
            entries = released.get("entry")
            found += len(entries) if isinstance(entries, list) else 0
        if link is not None:
            raise not_found()  # too many to vouch for: refused like a denial
        if not found:
            # Nothing to summarise: the same 404 as a denial, so that a patient who does not
            # exist (or has no such result) cannot be told from one whose consent refuses.
            raise not_found()


def _patient(params: list[tuple[str, str]]) -> str:
    """``Patient/<id>`` of the one patient the query names (400 otherwise)."""
    names = {name for name, _ in params}
    if names - _DEFINED:
        raise BadRequest("$stats takes only the parameters FHIR defines for it")
    named = [value.strip() for name, value in params if name in ("subject", "patient")]
    if len(named) != 1 or "," in named[0]:
        raise BadRequest("$stats needs exactly one subject (one patient)")
    rid = named[0].removeprefix("Patient/")
    if not _ID.fullmatch(rid):
        raise BadRequest("$stats subject must be Patient/<id>")
    return f"Patient/{rid}"


def _probe(patient: str) -> dict[str, Any]:
    """The least an Observation of ``patient`` can be (FHIR R4 Observation: ``status``,
    ``code``, here ``subject``), for the consent question asked before any data."""
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {},
        "subject": {"reference": patient},
    }


def narrowed(policies: Iterable[Policy], now: datetime) -> bool:
    """Whether one of ``policies`` (a patient's consents, those in force at ``now``) may deny
    some Observation and not another: a deny provision that, or one of whose ancestors,
    decides by what the Observation says (module docstring). A provision whose classes name
    other resource types only never applies to one: it and what it holds are skipped."""
    for policy in policies:
        if policy.status != "active" or (policy.period and not policy.period.contains(now)):
            continue
        if any(node.effect == DENY for node in _conditional(policy.root, inherited=False)):
            return True
    return False


def _conditional(node: Provision, *, inherited: bool) -> Iterator[Provision]:
    """The provisions under (and with) ``node`` that decide by what an Observation says,
    themselves or through an ancestor (``inherited``)."""
    # A provision's classes match a resource's type or profiles, or its codes (consent.match).
    by_class = bool(node.classes) and "Observation" not in node.class_names
    if by_class and not node.class_codings and node.class_names <= RESOURCE_TYPES:
        return  # other resource types only: never an Observation
    by_content = inherited or bool(
        by_class
        or node.codes
        or node.security_labels
        or node.data_period
        or node.data
        or node.expression
    )
    if by_content:
        yield node
    for child in node.children:
        yield from _conditional(child, inherited=by_content)


def _query(params: list[tuple[str, str]], patient: str) -> list[tuple[str, str]]:
    """The query forwarded: the checked patient and codes, the operation's other defined
    parameters as given (values already read by :func:`_codes`)."""
    query = [("subject", patient)]
    query += [(n, v.strip()) for n, v in params if n == "system"]
    query += [("code", c.strip()) for n, v in params if n == "code" for c in v.split(",")]
    query += [(n, v.strip()) for n, v in params if n == "coding"]
    return query + [(n, v) for n, v in params if n in _PASSED]


def _codes(params: list[tuple[str, str]]) -> list[str]:
    """The asked codes as search tokens (``system|code`` when the system is given)."""
    systems = [v.strip() for n, v in params if n == "system"]
    if len(systems) > 1:
        raise BadRequest("$stats takes one system")
    prefix = f"{systems[0]}|" if systems else ""
    codes = [f"{prefix}{c.strip()}" for n, v in params if n == "code" for c in v.split(",")]
    codes += [v.strip() for n, v in params if n == "coding"]
    if not codes or any(not c or c.endswith("|") for c in codes):
        raise BadRequest("$stats needs a code or a coding")
    return codes
