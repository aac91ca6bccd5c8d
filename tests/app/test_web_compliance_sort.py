"""The dashboard's search table sorted by its column headers, through the gateway: each
sortable header is a plain link (no script) to the same filtered search in that column's
order, the sorted header alone carries ``aria-sort``, following the link again reverses the
order, and the rows come back in the order the header says (read from the page itself)."""

from __future__ import annotations

import html
import re

import httpx

from tests.app import test_web_compliance as base
from tests.app.conftest import WallClock
from tests.app.test_web_compliance_api import tokens, traffic
from tests.app.web_signin import sign_in

__all__ = ["tokens"]
web = base.web  # the same dashboard fixture as the other compliance page tests

_HEADER = re.compile(r'<th scope="col"( aria-sort="(\w+)")?><a href="([^"]+)">([^<]+)')


def _headers(page: str) -> dict[str, tuple[str, str]]:
    """Each sortable header's label → (aria-sort, link)."""
    return {
        label.strip(): (state, html.unescape(link))
        for _, state, link, label in _HEADER.findall(page)
    }


def _who(page: str) -> list[str]:
    """The Who cell of each row (the first mono cell of the row)."""
    return re.findall(r'<tr>\s*<td>[^<]*</td>\s*<td class="mono">([^<]*)</td>', page)


async def test_column_headers_sort_the_table_and_say_so(
    web: httpx.AsyncClient, tokens: object, wall: WallClock
) -> None:
    await traffic(web, tokens, wall)  # type: ignore[arg-type]
    await sign_in(web, "auditor")
    first = await web.get("/compliance/search", params={"run": "1", "subtype": "read"})
    assert first.status_code == 200
    headers = _headers(first.text)
    assert list(headers) == ["Time", "Who", "Patient", "What was done", "Result"]
    assert headers["Time"][0] == "descending"  # newest first by default
    assert [state for state, _ in headers.values()].count("") == 4
    by_who = headers["Who"][1]
    assert "sort=agent" in by_who
    assert "subtype=read" in by_who  # the filters are kept

    up = await web.get(by_who)
    assert up.status_code == 200
    headers = _headers(up.text)
    assert headers["Who"][0] == "ascending"
    assert headers["Time"][0] == ""
    who = _who(up.text)
    assert len(set(who)) >= 2
    assert who == sorted(who)
    assert "sort=-agent" in headers["Who"][1]

    down = await web.get(headers["Who"][1])
    assert _headers(down.text)["Who"][0] == "descending"
    assert _who(down.text) == sorted(who, reverse=True)
    assert 'aria-sort="descending"' in down.text
    assert down.text.count("aria-sort=") == 1
    assert '<option value="-agent" selected>' in down.text


async def test_an_unknown_sort_is_read_as_newest_first(
    web: httpx.AsyncClient, wall: WallClock
) -> None:
    await sign_in(web, "auditor")
    page = await web.get("/compliance/search", params={"run": "1", "sort": "secret"})
    assert page.status_code == 200
    assert '<option value="-date" selected>' in page.text
    assert "secret" not in page.text
