"""``_sort`` on the AuditEvent search other than by date, through the gateway: every page of a
sorted search walked by its ``next`` links holds each entry once, in the order asked for (the
expected order is computed from the events served, not from the index), descending is the
reverse of ascending, and a sort the gateway does not answer is a 400, never ignored."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.app import test_audit_http as base
from tests.app.consenting import Tokens
from tests.app.test_audit_http import auditor, events, restful, search, traffic, who

store = base.store  # the same gateway and ledger fixtures as the search tests
client = base.client


async def _walk(client: httpx.AsyncClient, tokens: Tokens, **params: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    got = await search(client, auditor(tokens), **params, _count="2")
    while True:
        assert got.status_code == 200, got.text
        found += events(got.json())
        nxt = [link["url"] for link in got.json()["link"] if link["relation"] == "next"]
        if not nxt:
            return found
        got = await client.get(nxt[0], headers=auditor(tokens))


def _entries(found: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(e["id"].split("-")[0] for e in found))


async def test_pages_sorted_by_agent_hold_each_entry_once_in_agent_order(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    await traffic(client, tokens)
    up = await _walk(client, tokens, type="rest", _sort="agent")
    down = await _walk(client, tokens, type="rest", _sort="-agent")
    agents = [min(who(e) & {"Practitioner/dr-a", "Practitioner/dr-b"}) for e in restful(up)]
    assert agents == sorted(agents)
    assert agents.count("Practitioner/dr-a") == 2
    assert agents.count("Practitioner/dr-b") == 2  # the read of p2 and the refused create
    entries = _entries(up)
    assert len(entries) == len(set(entries)) == 4
    # the first walk's own audit entries (agent Practitioner/officer) lead the second
    assert [e for e in _entries(down) if e in entries] == entries[::-1]
    assert _entries(down)[0] not in entries


async def test_a_descending_outcome_sort_puts_the_failure_first(
    client: httpx.AsyncClient, tokens: Tokens
) -> None:
    await traffic(client, tokens)
    found = restful(await _walk(client, tokens, type="rest", _sort="-outcome"))
    assert [e["outcome"] for e in found] == ["4", "0", "0", "0"]


@pytest.mark.parametrize("query", ["_sort=name", "_sort=date,agent", "_sort=agent&_sort=date"])
async def test_a_sort_not_answered_is_refused(
    client: httpx.AsyncClient, tokens: Tokens, query: str
) -> None:
    got = await client.get(f"/fhir/AuditEvent?{query}", headers=auditor(tokens))
    assert got.status_code == 400
    assert got.json()["resourceType"] == "OperationOutcome"
