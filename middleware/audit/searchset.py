"""AuditEvents as the gateway serves them: ids from the ledger index, and searchset Bundles.

One ledger entry renders to one or more IHE BALP AuditEvents (the AuthZconsent event of a
decision, then the RESTful event of the exchange; :func:`middleware.audit.render.render_events`,
deterministic). The ``n``-th event of the entry at ledger index ``i`` is served as
``AuditEvent/<i>-<n>``: stable for as long as the ledger is (the same entry always renders the
same events in the same order), and it tells a reviewer which entry to prove. Each served
event also names its entry in ``meta``: ``meta.source`` is the entry's receipt URL
(``/ledger/receipt/<i>``, the RFC 9162 inclusion proof) and ``meta.tag`` carries the index as
a code of :data:`LEDGER_INDEX_SYSTEM`. An entry whose release rested on a break-the-glass
override (its leaf's flag; the rendered events cannot say it: the decision event says deny,
the RESTful event success) has its events tagged :data:`BREAK_GLASS_TAG` as well, so a reader
(the patient's "who looked at my record") tells an emergency access from a refusal.

A searchset (FHIR R4 bundle.html, http.html#search) carries no ``total``: a count is not
needed to page, and one less number is one less thing to infer from.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

__all__ = [
    "BREAK_GLASS_TAG",
    "LEDGER_INDEX_SYSTEM",
    "event_id",
    "parse_event_id",
    "searchset",
    "served_event",
]

Json = dict[str, Any]

#: ``meta.tag`` system whose code is the ledger index of the entry an event was rendered from.
LEDGER_INDEX_SYSTEM: Final = "https://consentry.dev/fhir/CodeSystem/ledger-index"
#: ``meta.tag`` of the events of an entry released under a break-the-glass override (the
#: audit-flag code system of ``alerts.REVIEW_TAG``).
BREAK_GLASS_TAG: Final = {
    "system": "https://consentry.dev/fhir/CodeSystem/audit-flag",
    "code": "break-the-glass",
    "display": "Released under a break-the-glass override",
}
_EVENT_ID: Final = re.compile(r"(0|[1-9][0-9]{0,17})-(0|[1-9][0-9]{0,3})")


def event_id(index: int, n: int) -> str:
    """The id of the ``n``-th event (from 0) of the entry at ledger ``index``."""
    return f"{index}-{n}"


def parse_event_id(text: str) -> tuple[int, int] | None:
    """``(index, n)`` of an id made by :func:`event_id`; None for anything else (one
    spelling per event: no leading zeros, no sign)."""
    found = _EVENT_ID.fullmatch(text)
    return None if found is None else (int(found[1]), int(found[2]))


def served_event(
    event: Json, *, index: int, n: int, gateway_root: str, break_glass: bool = False
) -> Json:
    """A copy of ``event`` with its ``id`` and a ``meta`` naming its ledger entry (module
    docstring); ``gateway_root`` is the gateway's public URL without the FHIR base path;
    ``break_glass``: the entry's leaf carries the break-the-glass flag."""
    served = dict(event)
    meta = dict(served.get("meta") or {})
    meta["source"] = f"{gateway_root}/ledger/receipt/{index}"
    tags = [t for t in meta.get("tag") or [] if t.get("system") != LEDGER_INDEX_SYSTEM]
    meta["tag"] = [*tags, {"system": LEDGER_INDEX_SYSTEM, "code": str(index)}]
    if break_glass and BREAK_GLASS_TAG not in meta["tag"]:
        meta["tag"].append(dict(BREAK_GLASS_TAG))
    out: Json = {"resourceType": "AuditEvent", "id": event_id(index, n), "meta": meta}
    out.update((k, v) for k, v in served.items() if k not in ("resourceType", "id", "meta"))
    return out


def searchset(
    events: Sequence[Json], *, base_url: str, self_url: str, next_url: str | None
) -> Json:
    """A ``searchset`` Bundle of served ``events`` (each with its ``id``), ``self`` and, when
    there is a next page, ``next`` links; ``base_url`` is the public FHIR base."""
    links = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [
            {
                "fullUrl": f"{base_url}/AuditEvent/{event['id']}",
                "resource": event,
                "search": {"mode": "match"},
            }
            for event in events
        ],
    }
