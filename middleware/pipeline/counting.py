"""Counts without oracles: ``_summary=count``, ``_count=0`` and ``_total`` counted after filtering.

An upstream's count covers every match, hidden ones included, so the number alone tells a
caller that a patient it may not see has records (:mod:`~middleware.pipeline.guards`). The
gateway therefore never forwards a count: it runs the search upstream itself and counts what
it would release to this caller.

- **The query counted** is the one a search release would send (pinned to a patient-context
  caller's compartment, mapped to the upstream's codes: the flow hands it over), without the
  result parameters that select nothing (:data:`_RESULT_PARAMS`: ``_summary``, ``_total``,
  ``_count``, ``_offset``, ``_sort``, ``_include``/``_revinclude``, ``_elements``, fhirpy's
  ``_totalMethod``...) and with a page size the gateway chooses (``count_page_size``).
  Includes are not counted (R4 search.html#total: ``total`` is the number of matches).
- **Every page is judged** exactly as a search release judges it (rebased, then the same
  :class:`~middleware.pipeline.judging.Judging` on the exchange's trail, then
  :func:`~middleware.pipeline.filter.filter_answer`), and the matches left are counted. The
  upstream's ``next`` links are followed to the end (a link off the upstream base is a 502);
  no page is skipped because its answer could be guessed, so a denied patient's count is a
  plain 0 after the same work as anyone's.
- **The caller's cap**: more than ``count_max_resources`` matches *released* is
  :class:`CountTooCostly`, a 422 ``too-costly`` (the caller narrows its search; 403 would say
  it may not count). Only released matches count towards it: a cap on matches walked (hidden
  ones included) would be an oracle the caller tunes, padding the query with visible matches
  (``patient=p2,p1``) up to the cap to learn whether one hidden record of p1 exists.
- **The walk's hard limits**, apart from the cap and far above it (settings refuse a walk
  limit at or below the cap): at most ``count_max_walked`` upstream matches (hidden ones
  included) over ``count_max_pages`` pages, else the same 422. One bit remains: whether more
  than ``count_max_walked`` minus ``count_max_resources`` hidden records match, a threshold
  padding cannot lower (padding past the cap is refused first) (docs/security.md).
- **Time and load**: a walk ends within ``count_deadline_seconds`` (503 with ``Retry-After``
  beyond: :class:`CountTimedOut`), and at most ``count_max_concurrent`` walks run at once in a
  process (:class:`CountSlots`: 429 with ``Retry-After`` beyond); each ``_total`` page walks
  the count again, so these bound what repeating it costs.
- **The answers**: for ``_summary=count`` (and ``_count=0``, which asks for the number alone)
  a ``searchset`` (``history`` for a history) Bundle with ``total`` and no entries (R4
  search.html#summary); for ``_total=accurate|estimate`` the normal first page with
  ``Bundle.total`` set to the count (estimate is answered exactly).
- **Audit**: the exchange's trail records every patient judged (decisions) and every patient
  whose resources were counted as released (its ``released``): a count discloses a number
  about each of them, a search is recorded by its query (BALP Query), not resource by resource.

Pure apart from the injected upstream seam (:class:`~middleware.pipeline.exchange.Forwarder`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

from middleware.errors import GatewayError, ServiceUnavailable, TooManyRequests, UpstreamError
from middleware.fhir.request import Interaction
from middleware.pipeline.caller import ACTION_ACCESS
from middleware.pipeline.exchange import Answer, Ask
from middleware.pipeline.filter import filter_answer
from middleware.pipeline.guards import GuardPolicy
from middleware.pipeline.judging import Judging
from middleware.pipeline.mapper import Mapper
from middleware.pipeline.pages import is_match, next_link
from middleware.pipeline.paging import Pager
from middleware.pipeline.params import encode_params
from middleware.pipeline.release import read_failure, with_total
from middleware.proxy.rewrite import Rebaser

__all__ = [
    "CountSlots",
    "CountTimedOut",
    "CountTooCostly",
    "Counter",
    "count_query",
    "has_total",
    "total_answer",
    "without_total",
]

#: Parameters that shape a result page but select no match (R4 search.html#return), plus
#: ``_totalMethod`` (fhirpy's ``count()`` sends it, for Aidbox): left off the counted query.
_RESULT_PARAMS: Final = frozenset(
    {
        "_summary",
        "_total",
        "_totalmethod",
        "_count",
        "_offset",
        "_page",
        "_sort",
        "_include",
        "_revinclude",
        "_elements",
        "_format",
        "_pretty",
    }
)
_JSON: Final = (("accept", "application/fhir+json"),)
_PAGED: Final = frozenset({"searchset", "history"})
_HISTORIES: Final = frozenset({Interaction.HISTORY_TYPE, Interaction.HISTORY_SYSTEM})


class CountTooCostly(GatewayError):
    """Counting would walk more upstream matches or pages than the gateway allows: the caller
    narrows the search (FHIR issue type ``too-costly``), so a 4xx, not a server error."""

    status = 422
    code = "too-costly"


class CountTimedOut(ServiceUnavailable):
    """Counting did not end within the walk's deadline (``count_deadline_seconds``)."""


class CountSlots:
    """At most ``limit`` counting walks at once in a process; one more is
    :class:`~middleware.errors.TooManyRequests` (429, ``Retry-After``), not queued: a queue
    would hold connections open for walks that each may take the whole deadline. One event
    loop per process, so a plain counter is enough (no lock)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the ``with`` block; 429 when none is free."""
        if self.busy >= self.limit:
            raise TooManyRequests("too many counts are running; retry shortly", retry_after=1)
        self.busy += 1
        try:
            yield
        finally:
            self.busy -= 1


def count_query(params: Sequence[tuple[str, str]], page_size: int) -> list[tuple[str, str]]:
    """``params`` (decoded, narrowed and mapped) without :data:`_RESULT_PARAMS` (names read
    case-insensitively, modifiers ignored, as the guards read them), with ``_count`` set to
    ``page_size``."""
    kept = [
        (name, value)
        for name, value in params
        if name.partition(":")[0].strip().lower() not in _RESULT_PARAMS
    ]
    return [*kept, ("_count", str(page_size))]


def without_total(params: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``params`` without ``_total`` (read as the guards read it): the page a search releases
    is fetched without asking the upstream to count (its figure is never released)."""
    return [(n, v) for n, v in params if n.partition(":")[0].strip().lower() != "_total"]


def has_total(answer: Answer) -> bool:
    """True when ``answer`` is a Bundle document carrying ``total`` (set by the gateway: the
    upstream's is always removed)."""
    document = answer.document
    return isinstance(document, dict) and "total" in document


def total_answer(answer: Answer, total: int) -> Answer:
    """``answer`` (a released page) with ``Bundle.total`` set to ``total``; an answer that
    is no Bundle document is returned as is."""
    document = answer.document
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        return answer
    return Answer(answer.status, answer.headers, with_total(document, total))


class Counter:
    """Counts what a search would release to a caller (module docstring): judged by
    ``judging``, upstream URLs rewritten by ``rebaser``, paging links checked by ``pager``,
    bounded by ``policy`` and, for walks at once, by ``slots`` (None: a set of its own);
    ``mapper`` (None: no profile) names the profile in the answer."""

    def __init__(
        self,
        judging: Judging,
        *,
        rebaser: Rebaser,
        pager: Pager,
        policy: GuardPolicy,
        mapper: Mapper | None = None,
        slots: CountSlots | None = None,
    ) -> None:
        self.judging = judging
        self.rebaser = rebaser
        self.pager = pager
        self.policy = policy
        self.mapper = mapper
        self.slots = CountSlots(policy.count_max_concurrent) if slots is None else slots

    async def answer(self, ask: Ask, path: str, params: Sequence[tuple[str, str]]) -> Answer:
        """The ``_summary=count`` answer: a Bundle with the counted ``total``, no entries."""
        total = await self.count(ask, path, params)
        kind = "history" if ask.request.interaction in _HISTORIES else "searchset"
        document = {
            "resourceType": "Bundle",
            "type": kind,
            "total": total,
            "link": [{"relation": "self", "url": ask.self_url}],
        }
        headers = [] if self.mapper is None else [("x-consentry-mapping", self.mapper.profile.id)]
        return Answer(200, headers, document)

    async def count(self, ask: Ask, path: str, params: Sequence[tuple[str, str]]) -> int:
        """How many matches of ``path?params`` (the query a search release would send) the
        caller may see; :class:`CountTooCostly` beyond the cap or the walk's limits,
        :class:`CountTimedOut` beyond its deadline, 429 when too many counts run."""
        with self.slots.slot():
            deadline = asyncio.timeout(self.policy.count_deadline_seconds)
            try:
                async with deadline:
                    return await self._walk(ask, path, params)
            except TimeoutError:
                if not deadline.expired():
                    raise  # not the walk's deadline: whoever raised it decides
                raise CountTimedOut(
                    "counting this search took longer than the gateway allows;"
                    " retry later or narrow the search"
                ) from None

    async def _walk(self, ask: Ask, path: str, params: Sequence[tuple[str, str]]) -> int:
        policy = self.policy
        query = encode_params(count_query(params, policy.count_page_size))
        link: str | None = f"{path}?{query}"
        walked = counted = pages = 0
        seen: set[str] = set()  # the links followed: a next link seen before is a loop
        while link is not None:
            if pages >= policy.count_max_pages:
                raise _too_costly()
            pages += 1
            seen.add(link)
            up = await ask.forward("GET", link, headers=_JSON, client_headers=False)
            if up.status >= 400:
                raise read_failure(up, ask)
            document = up.document
            if (
                not isinstance(document, dict)
                or document.get("resourceType") != "Bundle"
                or document.get("type") not in _PAGED
            ):
                raise UpstreamError("the upstream server sent no Bundle page")
            link = next_link(document)  # before rebasing rewrites it
            if link is not None and not self.pager.on_upstream(link):
                raise UpstreamError("the upstream server sent a paging link off its base")
            if link is not None and link in seen:
                raise UpstreamError("the upstream server sent a paging loop")
            entries = document.get("entry")
            walked += sum(1 for e in entries if is_match(e)) if isinstance(entries, list) else 0
            # Judged before any refusal: the trail then names every patient the walk touched
            # (a refused count is recorded with them, proxy.exchange_audit).
            counted += await self._released(ask, up.raw, document)
            if counted > policy.count_max_resources or walked > policy.count_max_walked:
                raise _too_costly()  # the cap (released only), then the walk's hard limit
        return counted

    async def _released(self, ask: Ask, raw: bytes, document: dict[str, Any]) -> int:
        """How many matches of one upstream page are released to the caller, judged exactly
        as :class:`~middleware.pipeline.release.Release` judges a page (on the same trail)."""
        occurrences = self.rebaser.occurrences(raw)
        if occurrences:
            self.rebaser.rewrite(document, occurrences)
        judge = await self.judging.judge(ask.caller, ACTION_ACCESS, document, ask.trail, raw)
        released, _stats = filter_answer(document, judge.allowed)
        entries = released.get("entry") if isinstance(released, dict) else None
        return sum(1 for e in entries if is_match(e)) if isinstance(entries, list) else 0


def _too_costly() -> CountTooCostly:
    # One message for the cap and the walk's limits: which one was met is not the caller's.
    return CountTooCostly("counting this search would examine too many resources; narrow it")
