"""What of an upstream answer a caller is given: the answer judged, filtered and paged.

:meth:`Release.release` takes an answer the upstream sent for an
:class:`~middleware.pipeline.exchange.Ask` (a read's, a search's, a write's ``return=
representation``) and returns the :class:`~middleware.pipeline.exchange.Answer` to release,
or raises a :class:`~middleware.errors.GatewayError`:

- paging links are sealed into cursors bound to the caller, its purposes and the query
  (:class:`~middleware.pipeline.paging.Pager`) before rebasing rewrites the upstream URLs;
- every resource is judged (:mod:`~middleware.pipeline.judging`) and the answer filtered
  (:func:`~middleware.pipeline.filter.filter_answer`); nothing left is the generic 404;
- a page of search or history results is refilled from the following upstream pages until it
  holds as many matches as the client asked for or the result ends
  (:mod:`~middleware.pipeline.pages`), bounded by the walk's hard limits of counting
  (``count_max_pages`` upstream pages, ``count_max_walked`` matches walked, hidden ones
  included, ``count_deadline_seconds``): a page still short there is released short with a
  ``next`` cursor, which tells only that more than that many hidden matches follow (padding
  with visible matches fills the page and ends the walk, so it cannot lower the threshold;
  docs/security.md);
- an ``_include``d resource outside the Patient compartment (an Organization, a Medication)
  is released only beside a released resource it is linked to (:mod:`~middleware.pipeline.
  linked`): beside withheld matches alone it would tell what they say;
- the mapping profile and ``_summary``/``_elements`` (:mod:`~middleware.pipeline.subset`) are
  applied to what is released; an answer released whole and unchanged keeps the upstream's
  bytes;
- ``Bundle.total`` is never the upstream's (the filter removes it: it counts hidden matches).
  A first page (``first``) that holds the whole result, every match of it judged (no further
  page, none left over, no ``_offset``), gets ``total``: the matches released, exact for this
  caller (R4 search.html#total). Any other page has none, unless the search asked for a count
  (:mod:`~middleware.pipeline.counting` sets it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Final

from middleware.errors import GatewayError, UpstreamError
from middleware.fhir.request import Interaction
from middleware.ops.tracing import stage
from middleware.pipeline.caller import ACTION_ACCESS
from middleware.pipeline.cursor import rewrite_links
from middleware.pipeline.exchange import Answer, Ask, Upstreamed, not_found, upstream_failure
from middleware.pipeline.filter import filter_answer
from middleware.pipeline.guards import GuardPolicy
from middleware.pipeline.judge import Judge
from middleware.pipeline.judging import Judging
from middleware.pipeline.linked import keep_linked
from middleware.pipeline.mapper import Mapper
from middleware.pipeline.pages import (
    is_match,
    next_link,
    requested_count,
    skip_matches,
    take,
    with_skip,
)
from middleware.pipeline.paging import Page, Pager, Paging
from middleware.pipeline.subset import Subset, apply_subset_to_answer
from middleware.proxy.rewrite import Rebaser

__all__ = ["Release", "accept_of", "bundle_page", "read_failure", "with_total"]

_RELEASED_HEADERS: Final = frozenset({"content-type", "etag", "last-modified"})
#: Answers about one record: when all of it is withheld, the record's own 404 is answered.
_OF_ONE_RECORD: Final = frozenset({Interaction.HISTORY_INSTANCE, Interaction.OPERATION})
#: Bundle types whose pages are refilled: results of a search and of a history.
_PAGED: Final = frozenset({"searchset", "history"})


class Release:
    """Judges, filters and pages upstream answers (module docstring) with ``judging``; the
    read half's ``pager`` seals the cursors, ``rebaser`` rewrites upstream URLs, ``mapper``
    (None: no profile) maps what is released; ``walk`` bounds refilling a page (its
    ``count_max_pages`` and ``count_max_walked``)."""

    def __init__(
        self,
        judging: Judging,
        *,
        pager: Pager,
        rebaser: Rebaser,
        mapper: Mapper | None,
        walk: GuardPolicy | None = None,
    ) -> None:
        self.judging = judging
        self.pager = pager
        self.rebaser = rebaser
        self.mapper = mapper
        self.walk = GuardPolicy() if walk is None else walk

    async def release(
        self,
        ask: Ask,
        up: Upstreamed,
        *,
        paging: Paging | None = None,
        subset: Subset | None = None,
        status: int | None = None,
        page: Page | None = None,
        first: bool = False,
    ) -> Answer:
        """Judge and filter an upstream answer read for ``ask``'s caller (see the module
        docstring); the generic 404 when nothing of it may be released. ``page`` says where a
        page of search or history results came from, so that it can be refilled; ``first``
        that it is the result's first page (not a cursor's), so that it may carry a total."""
        document = up.document
        if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
            raise UpstreamError("the upstream server sent no FHIR resource")
        if (
            paging is not None
            and page is not None
            and document["resourceType"] == "Bundle"
            and document.get("type") in _PAGED
        ):
            return await self._release_page(
                ask, up, document, paging, page, subset, status, first=first
            )
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
        judge = await self._judge(ask, document, up.raw)
        altered = (ask.trail.redacted, ask.trail.marked)
        released = _filtered(document, judge)
        if released is None:
            raise not_found()
        headers = self._headers(up)
        changed = bool(occurrences) or (ask.trail.redacted, ask.trail.marked) != altered
        if self.mapper is not None:
            with stage("map"):
                mapped = self.mapper.answer(released, owned=True)  # decoded and filtered here
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
        *,
        first: bool = False,
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
        pages, walked = 1, upstream_size
        # The count's deadline bounds a refill too: one `_count=1` search over many hidden
        # matches would otherwise hold the upstream and the event loop for up to
        # count_max_pages round trips.
        clock = asyncio.get_running_loop().time
        ends = clock() + self.walk.count_deadline_seconds
        while not left and following:
            have = sum(1 for entry in kept if is_match(entry))
            if have >= target:
                break
            if (
                pages >= self.walk.count_max_pages
                or walked >= self.walk.count_max_walked
                or clock() >= ends
            ):
                break  # the walk's hard limits: released short, with its cursor (docstring)
            pages += 1
            refilled = True
            link = following
            more_up, more = await bundle_page(ask, link)
            more_entries, more_size, following = await self._page_entries(ask, more_up, more)
            walked += more_size
            added, taken, left = take(more_entries, target - have)
            kept += added
            resume = with_skip(link, taken) if left else following
        if any(_included(entry) for entry in kept):
            # An included resource outside the Patient compartment only beside a released
            # match it is linked to (pipeline.linked): not beside withheld ones alone.
            kept = keep_linked(
                kept, base_urls=self.judging.base_urls, keep=_not_included, referring=True
            )
        if not kept and page.skip == 0 and ask.request.interaction in _OF_ONE_RECORD:
            # Everything withheld: the history or $everything of a record the caller may not
            # see is the same 404 as that of a record that does not exist.
            raise not_found()
        # The whole result is on this page, every match judged: its released matches are the
        # caller's exact total (module docstring), counted before mapping (which drops none).
        total = (
            sum(1 for entry in kept if is_match(entry))
            if first and page.skip == 0 and resume is None and _whole(paging.params)
            else None
        )
        if target == 0:
            resume = None  # a page of nothing offers no next page: "next" would tell matches exist
        if self.mapper is not None:
            with stage("map"):
                kept = self.mapper.entries(kept, owned=True)
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
        if total is not None:
            document = with_total(document, total)
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
        judge = await self._judge(ask, document, up.raw)
        released = _filtered(document, judge)
        if released is None:
            return [], size, following
        entries = released.get("entry")
        return (entries if isinstance(entries, list) else []), size, following

    async def _judge(self, ask: Ask, document: Any, raw: bytes) -> Judge:
        """The judge of ``document`` for ``ask``'s caller: a trace's ``decide`` span."""
        with stage("decide") as marks:
            judge = await self.judging.judge(ask.caller, ACTION_ACCESS, document, ask.trail, raw)
            marks.set("consentry.patients", len(judge.policies))
        return judge


def _filtered(document: Any, judge: Judge) -> Any | None:
    """``document`` filtered by ``judge`` (:func:`filter_answer`): a trace's ``filter`` span,
    with how many resources were kept and withheld."""
    with stage("filter") as marks:
        released, stats = filter_answer(document, judge.allowed)
        marks.set("consentry.resources.kept", stats.kept)
        marks.set("consentry.resources.withheld", stats.removed)
    return released


def _included(entry: Any) -> bool:
    """Whether ``entry`` is a search's ``include`` (``_include``/``_revinclude``)."""
    search = entry.get("search") if isinstance(entry, dict) else None
    return isinstance(search, dict) and search.get("mode") == "include"


def _not_included(entry: Any) -> bool:
    return not _included(entry)


#: Parameters after which a first page is not the start of the whole result.
_SKIPPING: Final = frozenset({"_offset", "_page"})
#: ``_total`` values that ask for no total (R4 search.html#total).
_NO_TOTAL: Final = frozenset({"none"})


def _whole(params: Sequence[tuple[str, str]]) -> bool:
    """True unless the client's query skips matches (``_offset``) or asks for no total."""
    for name, value in params:
        code = name.partition(":")[0].strip().lower()
        if code in _SKIPPING or (code == "_total" and value.strip().lower() in _NO_TOTAL):
            return False
    return True


def with_total(document: dict[str, Any], total: int) -> dict[str, Any]:
    """A copy of the Bundle ``document`` with ``total`` after ``type`` (where FHIR's JSON
    puts it), replacing any ``total`` it had."""
    out: dict[str, Any] = {}
    for key, value in document.items():
        if key != "total":
            out[key] = value
        if key == "type":
            out["total"] = total
    out.setdefault("total", total)
    return out


def _copy_links(links: Any) -> Any:
    """``Bundle.link`` as :func:`rewrite_links` will read it, kept from the in-place rebasing
    of the document: a list's link objects copied one level (their ``relation`` and ``url``,
    all it keeps, are strings: a link whose are not is dropped whatever they hold); anything
    else as it is (rewrite_links keeps nothing of it). A tenth of ``copy.deepcopy``'s cost."""
    if not isinstance(links, list):
        return links
    return [dict(link) if isinstance(link, dict) else link for link in links]


def accept_of(ask: Ask) -> list[tuple[str, str]]:
    """The ``Accept`` a read's GET sends: always FHIR JSON, the one format the gateway reads
    (the client's own format is answered at the edge, :mod:`middleware.fhir.negotiate`)."""
    del ask  # the same for every request, whatever the client accepts
    return [("accept", "application/fhir+json")]


def read_failure(up: Upstreamed, ask: Ask) -> GatewayError:
    """The error a read's failed upstream answer (status 400 or more) is raised as."""
    outcome = upstream_failure(up, ask.request)
    if isinstance(outcome, GatewayError):
        return outcome
    return UpstreamError(f"the upstream server failed ({up.status})")  # reads only: unreachable


async def bundle_page(ask: Ask, link: str) -> tuple[Upstreamed, dict[str, Any]]:
    """GET the upstream page ``link`` of a read: the answer and its Bundle. A failed answer
    is raised as :func:`read_failure`; anything but a Bundle is an :class:`UpstreamError`
    (never read as entries)."""
    up = await ask.forward("GET", link, client_headers=False, headers=accept_of(ask))
    if up.status >= 400:
        raise read_failure(up, ask)
    document = up.document
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        raise UpstreamError("the upstream server sent no Bundle page")
    return up, document
