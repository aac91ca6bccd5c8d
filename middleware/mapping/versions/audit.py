"""AuditEvent's operations: outcome, agent network and agent name between R4 and R5.

R5 reshaped AuditEvent (http://hl7.org/fhir/R5/auditevent.html, "Changes from R4"); these three
changes need more than a rename. Like every operation (:mod:`middleware.mapping.versions.ops`)
they are pure and approximate where R4 and R5 differ; the engine carries what is lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from middleware.mapping.versions.carry import Release

__all__ = ["Display", "Network", "Outcome"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """R4 AuditEvent ``outcome`` (0|4|8|12) + ``outcomeDesc`` <-> R5 ``outcome`` {code: Coding,
    detail: [CodeableConcept]}: the code through ``to5``/``to4`` in ``system`` (as HL7's
    AuditEvent4to5 map), the description as the text of a single detail."""

    system: str
    to5: Mapping[str, str]
    to4: Mapping[str, str]
    keeps_meta: ClassVar[bool] = False

    def apply(self, values: Mapping[str, Any], target: Release) -> dict[str, Any]:
        if target == "R5":
            outcome: dict[str, Any] = {}
            code = values.get("outcome")
            if isinstance(code, str) and code in self.to5:
                outcome["code"] = {"system": self.system, "code": self.to5[code]}
            if outcome and isinstance(values.get("outcomeDesc"), str):
                # R5 outcome.code is 1..1: a description alone has no R5 place (it is carried).
                outcome["detail"] = [{"text": values["outcomeDesc"]}]
            return {"outcome": outcome} if outcome else {}
        found = values.get("outcome")
        result: dict[str, Any] = {}
        coding = found.get("code") if type(found) is dict else None
        code = coding.get("code") if type(coding) is dict else None
        if type(coding) is dict and coding.get("system") == self.system and code in self.to4:
            result["outcome"] = self.to4[str(code)]
        details = found.get("detail") if type(found) is dict else None
        detail = details[0] if type(details) is list and len(details) == 1 else None
        if type(detail) is dict and isinstance(detail.get("text"), str):
            result["outcomeDesc"] = detail["text"]
        return result


@dataclass(frozen=True, slots=True)
class Network:
    """R4 AuditEvent.agent.network {address, type} <-> R5 network[x]: a URI-typed address
    (``uri_type``) is ``networkUri``, any other ``networkString``; R5 ``networkReference`` has
    no R4 form."""

    uri_type: str
    keeps_meta: ClassVar[bool] = False

    def apply(self, values: Mapping[str, Any], target: Release) -> dict[str, Any]:
        if target == "R5":
            network = values.get("network")
            if type(network) is not dict or not isinstance(network.get("address"), str):
                return {}
            address, is_uri = network["address"], network.get("type") == self.uri_type
            return {"networkUri" if is_uri else "networkString": address}
        if isinstance(values.get("networkUri"), str):
            return {"network": {"address": values["networkUri"], "type": self.uri_type}}
        if isinstance(values.get("networkString"), str):
            return {"network": {"address": values["networkString"]}}
        return {}


@dataclass(frozen=True, slots=True)
class Display:
    """R4 ``who`` + ``name`` <-> R5 ``who`` (1..1): the name becomes the Reference's display
    when it has none (R5 dropped AuditEvent.agent.name)."""

    reference: str
    name: str
    keeps_meta: ClassVar[bool] = False

    def apply(self, values: Mapping[str, Any], target: Release) -> dict[str, Any]:
        ref = values.get(self.reference)
        if target == "R4":
            return {self.reference: ref} if ref is not None else {}
        who = dict(ref) if type(ref) is dict else {}
        name = values.get(self.name)
        if isinstance(name, str) and "display" not in who:
            who["display"] = name
        return {self.reference: who} if who else {}
