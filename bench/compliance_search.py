"""The compliance dashboard's search and overview over a large audit index on SQLite.

    python -m bench.compliance_search [--rows 1000000] [--sort agent]

Builds ``--rows`` synthetic index rows (:func:`bench.audit_index.rows`: seven years, 5,000
patients per million rows) in a SQLite store, then times what one dashboard page asks of the
AuditEvent API, through the API's own code (:class:`middleware.audit.searching.Searching`,
:class:`middleware.audit.oversight_http.Oversight`) and the page's own rendering
(``compliance/search.html``):

- a search's first page (50) over the whole seven years, newest first; over 30 days; with an
  agent filter; the second page through the sealed cursor;
- the overview of the default 30 days (reads up to 10,000 accesses);
- with ``--sort KEY`` (any ``_sort`` but date: ``agent``, ``-patient``...), the first page
  sorted by it over the seven years and over 30 days, and its second page through the cursor:
  no index serves these orders (none is kept on the write path for them), so SQLite reads and
  sorts every row the filters leave.

The rows have no sealed evidence (the bench builds the index alone), so each found row is
served one canned BALP event: opening a sealed entry costs 150-400 µs (docs/audit.md, bulk
events) and a page opens at most 51, whatever the size of the log. Times are the median of
five runs, by the wall clock and by this process's CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from bench.audit_index import reindex
from middleware.audit.access import AuditReader
from middleware.audit.httptypes import Json, Seen
from middleware.audit.oversight_http import Oversight
from middleware.audit.reports import AfterHours
from middleware.audit.row import AuditQuery, AuditRow
from middleware.audit.searching import Searching
from middleware.auth.identity import Identity
from middleware.auth.scopes import parse_scopes
from middleware.ledger.signing import new_box_key
from middleware.pipeline.cursor import CursorCodec
from middleware.storage.ledger_sqlite import SqliteLogStore
from middleware.web.compliance_search import SORTS, event_row, sort_headers
from middleware.web.render import render_text
from middleware.web.text import t

_DAY_US = 86_400_000_000
_EVENT: Json = {
    "resourceType": "AuditEvent",
    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
    "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
    "action": "R",
    "recorded": "2026-03-10T10:00:00Z",
    "outcome": "0",
    "agent": [{"who": {"reference": "Practitioner/1"}, "requestor": True}],
    "entity": [{"what": {"reference": "Patient/p1"}, "role": {"code": "1"}}],
}


_VALUES = dict.fromkeys(
    ("from", "to", "patient", "agent", "entity", "type", "subtype", "action", "outcome",
     "purpose"), "",
) | {"sort": "-date"}  # fmt: skip


class Sized:
    """The SQLite store with the ledger size the rows' indexes imply (the bench writes index
    rows without leaves; a search keeps rows below the ledger's size)."""

    def __init__(self, store: SqliteLogStore, size: int) -> None:
        self._store = store
        self._size = size

    async def audit_rows(self, query: AuditQuery) -> list[AuditRow]:
        return await self._store.audit_rows(query)

    async def audit_row(self, index: int) -> AuditRow | None:
        return await self._store.audit_row(index)

    async def audit_count(self, query: AuditQuery) -> int:
        return await self._store.audit_count(query)

    async def size(self) -> int:
        return self._size

    async def leaves(self, start: int, end: int) -> list[bytes]:
        return []

    async def evidence_range(self, start: int, end: int) -> dict[int, Any]:
        return {}


async def _timed(fn: Callable[[], Awaitable[Any]]) -> dict[str, float]:
    walls, cpus = [], []
    for _ in range(5):
        began, began_cpu = time.perf_counter(), time.process_time()
        await fn()
        walls.append(time.perf_counter() - began)
        cpus.append(time.process_time() - began_cpu)
    return {"wall_ms": statistics.median(walls) * 1000, "cpu_ms": statistics.median(cpus) * 1000}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    now_us = time.time_ns() // 1000
    with tempfile.TemporaryDirectory() as tmp:
        store = await SqliteLogStore.open(Path(tmp) / "ledger.sqlite3")
        try:
            built = await reindex(store, args, now_us)
            sized = Sized(store, args.rows)

            async def index() -> Sized:
                return sized

            async def events_many(entries: Sequence[int]) -> list[list[Json] | None]:
                return [[dict(_EVENT)] for _ in entries]

            async def events(entry: int) -> list[Json] | None:
                return [dict(_EVENT)]

            searching = Searching(
                index=index,
                events=events,
                events_many=events_many,
                cursors=CursorCodec(new_box_key(), 600),
                base_url="http://gateway.test/fhir",
                gateway_root="http://gateway.test",
                default_count=50,
                max_count=200,
                wall_clock=lambda: now_us / 1_000_000,
            )
            identity = Identity(
                subject="auditor",
                issuer="https://issuer.test",
                expires_at=now_us / 1_000_000 + 600,
                scopes=tuple(parse_scopes("user/AuditEvent.rs").scopes),
                roles=frozenset({"ledger-auditor"}),
            )
            reader = AuditReader("auditor")

            async def page(params: list[tuple[str, str]]) -> Any:
                reply = await searching.search(identity, reader, Seen("bench"), params)
                bundle = json.loads(reply.body)
                rows = [event_row(e["resource"]) for e in bundle.get("entry", [])]
                render_text(
                    "compliance/search.html",
                    {
                        "title": t("compliance.search.title"), "values": _VALUES,
                        "text_fields": (), "actions": (), "outcomes": (), "asked": True,
                        "events": rows, "problem": "", "next_link": "x", "sorts": SORTS,
                        "headers": sort_headers({}, dict(params).get("_sort", "-date")),
                        "session": None, "csrf": "", "path": "/compliance/search",
                        "area": "compliance",
                    },
                )  # fmt: skip
                return bundle

            first = await page([("_sort", "-date"), ("_count", "50")])
            cursor = next(
                link["url"].split("_cursor=")[1] for link in first["link"]
                if link["relation"] == "next"
            )  # fmt: skip
            month = [
                ("date", f"ge{time.strftime('%Y-%m-%d', time.gmtime(now_us / 1e6 - 30 * 86400))}"),
                ("_sort", "-date"),
                ("_count", "50"),
            ]
            oversight = Oversight(
                store=lambda: _ready(Sized(store, 0)),
                append=_no_append,
                role="ledger-auditor",
                after=AfterHours(),
                after_text="19:00-07:00 UTC",
                gateway_name="bench",
                wall_clock=lambda: now_us / 1_000_000,
            )
            results = {
                "rows": args.rows,
                **built,
                "search, seven years, first page": await _timed(
                    lambda: page([("_sort", "-date"), ("_count", "50")])
                ),
                "search, 30 days, first page": await _timed(lambda: page(month)),
                "search, one agent, first page": await _timed(
                    lambda: page([("agent", "Practitioner/7"), ("_count", "50")])
                ),
                "search, second page (cursor)": await _timed(
                    lambda: page([("_sort", "-date"), ("_count", "50"), ("_cursor", cursor)])
                ),
                "overview, 30 days": await _timed(
                    lambda: oversight.answer(identity, Seen("b"), "$overview", [], method="GET")
                ),
            }
            if args.sort:
                results |= await _sorted(page, args.sort, month)
        finally:
            await store.close()
    return results


async def _sorted(
    page: Callable[[list[tuple[str, str]]], Awaitable[Any]],
    sort: str,
    month: list[tuple[str, str]],
) -> dict[str, Any]:
    """The timings of ``--sort``: first pages over seven years and 30 days, a second page."""
    whole = [("_sort", sort), ("_count", "50")]
    first = await page(whole)
    cursor = next(
        link["url"].split("_cursor=")[1] for link in first["link"] if link["relation"] == "next"
    )
    days = [p for p in month if p[0] != "_sort"] + [("_sort", sort)]
    return {
        f"search sorted by {sort}, seven years, first page": await _timed(lambda: page(whole)),
        f"search sorted by {sort}, 30 days, first page": await _timed(lambda: page(days)),
        f"search sorted by {sort}, second page (cursor)": await _timed(
            lambda: page([*whole, ("_cursor", cursor)])
        ),
    }


async def _ready(value: Any) -> Any:
    return value


async def _no_append(entry: Any) -> int:
    raise AssertionError("the bench records nothing")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--sort", default=None, help="also time a search sorted by this _sort")
    args = parser.parse_args()
    args.patients = max(1, args.rows // 200)
    for name, value in asyncio.run(run(args)).items():
        print(f"{name}: {value}")


if __name__ == "__main__":
    main()
