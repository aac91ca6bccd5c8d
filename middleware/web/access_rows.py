"""The rows of "who looked at my record": AuditEvents (IHE BALP) in plain words (pure).

The audit API renders each ledger entry as one or more AuditEvents (the consent decision,
then the RESTful event; ids ``<index>-<n>``). :func:`rows` makes one row per entry: when, who
(the requesting agent: "you" for the patient's own requests), what they did (the RESTful
interaction) and to what, why (purposes of use), whether it was allowed, and whether it was a
break-the-glass access (purpose ``BTG``, or a DICOM "Emergency Override" event), which the
page explains in words.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from middleware.audit.searchset import BREAK_GLASS_TAG
from middleware.web.describe import PURPOSES
from middleware.web.text import t

__all__ = ["AccessRow", "rows"]

_INTERACTIONS: Final = {
    "read": "access.did.read",
    "vread": "access.did.read",
    "search-type": "access.did.search",
    "search-system": "access.did.search",
    "search": "access.did.search",
    "history-instance": "access.did.history",
    "create": "access.did.create",
    "update": "access.did.update",
    "patch": "access.did.update",
    "delete": "access.did.delete",
    "operation": "access.did.operation",
}
_OVERRIDE: Final = frozenset({"110127", "110138"})  # DICOM Emergency Override Started/Stopped


@dataclass(frozen=True, slots=True)
class AccessRow:
    """One access, in words; ``index`` is its ledger index (its receipt)."""

    index: int | None
    when: str
    who: str
    did: str
    what: str
    why: str
    allowed: bool
    result: str
    break_glass: bool


def rows(bundle: Any, me: str) -> list[AccessRow]:
    """The rows of a searchset ``bundle`` of AuditEvents, newest first as served; ``me`` is
    the signed-in patient's reference."""
    entries: dict[str, list[Mapping[str, Any]]] = {}
    for entry in bundle.get("entry") or [] if isinstance(bundle, Mapping) else []:
        event = entry.get("resource") if isinstance(entry, Mapping) else None
        if isinstance(event, Mapping) and event.get("resourceType") == "AuditEvent":
            key = str(event.get("id", "")).partition("-")[0]
            entries.setdefault(key, []).append(event)
    return [_row(key, events, me) for key, events in entries.items()]


def _row(key: str, events: list[Mapping[str, Any]], me: str) -> AccessRow:
    main = next((e for e in events if _code(e.get("type")) == "rest"), events[-1])
    agent = _requestor(main)
    who_ref = _who(agent)
    purposes = set(_codes_of(agent.get("purposeOfUse")))
    subtypes = {str(s.get("code", "")) for e in events for s in _list(e.get("subtype"))}
    # The entry's release rested on a break-the-glass override: its decision event says deny,
    # its RESTful event success (audit.searchset.BREAK_GLASS_TAG).
    overridden = any(_tagged(e, BREAK_GLASS_TAG["code"]) for e in events)
    break_glass = "BTG" in purposes or bool(subtypes & _OVERRIDE) or overridden
    decision = next((e for e in events if "AuthZ-Consent" in _subtypes(e)), None)
    denied = decision is not None and decision.get("outcomeDesc") == "deny"
    allowed = str(main.get("outcome", "0")) == "0" and (not denied or overridden)
    interaction = next(iter(_subtypes(main)), "")
    words = [t(PURPOSES[p]) if p in PURPOSES else p for p in sorted(purposes)]
    return AccessRow(
        index=int(key) if key.isdigit() else None,
        when=str(main.get("recorded", ""))[:16].replace("T", " "),
        who=t("access.you") if who_ref == me else who_ref or t("access.unknown"),
        did=t(_INTERACTIONS.get(interaction, "access.did.other")),
        what=", ".join(_whats(main, me)) or t("access.what.record"),
        why=", ".join(words),
        allowed=allowed,
        result=t("access.allowed") if allowed else t("access.refused"),
        break_glass=break_glass,
    )


def _tagged(event: Mapping[str, Any], code: str) -> bool:
    meta = event.get("meta")
    tags = meta.get("tag") if isinstance(meta, Mapping) else None
    return any(
        isinstance(tag, Mapping)
        and tag.get("system") == BREAK_GLASS_TAG["system"]
        and tag.get("code") == code
        for tag in _list(tags)
    )


def _requestor(event: Mapping[str, Any]) -> Mapping[str, Any]:
    agents = [a for a in _list(event.get("agent")) if isinstance(a, Mapping)]
    return next((a for a in agents if a.get("requestor") is True), agents[0] if agents else {})


def _who(agent: Mapping[str, Any]) -> str:
    who = agent.get("who")
    if not isinstance(who, Mapping):
        return ""
    if isinstance(who.get("reference"), str):
        return str(who["reference"])
    identifier = who.get("identifier")
    if isinstance(identifier, Mapping) and isinstance(identifier.get("value"), str):
        return str(identifier["value"])
    return str(who.get("display", ""))


def _whats(event: Mapping[str, Any], me: str) -> list[str]:
    out: list[str] = []
    for entity in _list(event.get("entity")):
        what = entity.get("what") if isinstance(entity, Mapping) else None
        ref = what.get("reference") if isinstance(what, Mapping) else None
        if isinstance(ref, str) and ref != me and ref not in out:
            out.append(ref)
    return out


def _subtypes(event: Mapping[str, Any]) -> list[str]:
    return [str(s.get("code", "")) for s in _list(event.get("subtype")) if isinstance(s, Mapping)]


def _code(coding: Any) -> str:
    return str(coding.get("code", "")) if isinstance(coding, Mapping) else ""


def _codes_of(concepts: Any) -> Iterable[str]:
    for concept in _list(concepts):
        for coding in _list(concept.get("coding") if isinstance(concept, Mapping) else None):
            if isinstance(coding, Mapping) and isinstance(coding.get("code"), str):
                yield str(coding["code"])


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
