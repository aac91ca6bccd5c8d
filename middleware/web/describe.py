"""A Consent in plain words: :func:`describe` turns any Consent (R4/R4B or R5) into sentences.

The sentences come from the Consent itself, read by the same parser the enforcement uses
(:func:`middleware.consent.parse.parse_consent`), so the portal says what the gateway will
enforce: each rule's effect is already resolved (R4's ``provision.type``, R5's flips from
``decision``), and nested rules are told as exceptions to the rule above them. Codes become
words through the text catalog (purposes, sensitivity labels, kinds of records); a code the
catalog does not know is shown as the code. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Final

from middleware.consent.model import Actor, Coding, Period, Provision
from middleware.consent.parse import InvalidConsent, parse_consent
from middleware.web.text import t

__all__ = ["KINDS", "LABELS", "PURPOSES", "describe", "plain_period", "who_words"]

#: v3 ActReason purposes of use -> catalog key.
PURPOSES: Final = {
    "TREAT": "purpose.treat",
    "ETREAT": "purpose.etreat",
    "HPAYMT": "purpose.hpaymt",
    "HOPERAT": "purpose.hoperat",
    "HRESCH": "purpose.hresch",
    "PUBHLTH": "purpose.pubhlth",
    "HMARKT": "purpose.hmarkt",
    "PATRQT": "purpose.patrqt",
    "CAREMGT": "purpose.caremgt",
    "BTG": "purpose.btg",
}
#: Sensitivity labels (v3 ActCode, v3 Confidentiality) -> catalog key.
LABELS: Final = {
    "PSY": "label.psy",
    "PSYTHPN": "label.psythpn",
    "MH": "label.mh",
    "BH": "label.bh",
    "ETH": "label.eth",
    "ETHUD": "label.ethud",
    "SUD": "label.sud",
    "HIV": "label.hiv",
    "STD": "label.std",
    "SDV": "label.sdv",
    "SEX": "label.sex",
    "GDIS": "label.gdis",
    "R": "label.r",
    "V": "label.v",
}
#: Kinds of records (FHIR resource types) -> catalog key.
KINDS: Final = {
    "Observation": "kind.observation",
    "Condition": "kind.condition",
    "MedicationRequest": "kind.medicationrequest",
    "Immunization": "kind.immunization",
    "AllergyIntolerance": "kind.allergyintolerance",
    "DiagnosticReport": "kind.diagnosticreport",
    "DocumentReference": "kind.documentreference",
    "Encounter": "kind.encounter",
    "Procedure": "kind.procedure",
}
#: What an actor reference's type is called.
_ACTOR_TYPES: Final = {
    "Practitioner": "who.practitioner",
    "Organization": "who.organization",
    "CareTeam": "who.careteam",
    "Group": "who.group",
    "PractitionerRole": "who.practitionerrole",
    "RelatedPerson": "who.relatedperson",
    "Patient": "who.patient",
    "Device": "who.device",
}
_ACTIONS: Final = {
    "access": "action.access",
    "use": "action.use",
    "collect": "action.collect",
    "disclose": "action.disclose",
    "correct": "action.correct",
}


def describe(consent: Mapping[str, Any]) -> list[str]:
    """Plain-language sentences saying what ``consent`` allows and refuses (module
    docstring); one sentence when it cannot be read."""
    raw = dict(consent)
    raw.setdefault("id", "unsaved")  # a consent not yet created is described the same
    try:
        policy = parse_consent(raw)
    except (InvalidConsent, ValueError):
        return [t("describe.unreadable")]
    out: list[str] = []
    if policy.status != "active":
        out.append(t("describe.not_active", status=policy.status))
    if policy.period is not None and policy.version == "R5":
        out.append(t("describe.in_force", period=plain_period(policy.period)))
    root = policy.root
    if root.effect == "permit":
        out.append(t("describe.base.permit"))
    elif root.effect == "deny":
        out.append(t("describe.base.deny"))
    else:
        out.append(t("describe.base.none"))
    for child in root.children:
        _rules(child, out, depth=1)
    return out


def _rules(node: Provision, out: list[str], depth: int) -> None:
    out.append(_sentence(node, depth))
    for child in node.children:
        _rules(child, out, depth + 1)


def _sentence(node: Provision, depth: int) -> str:
    who = who_words(node.actors)
    verbs = _join(_words(_ACTIONS, (c for c in node.actions.pairs), "")) or t("action.access")
    key = "describe.rule.permit" if node.effect == "permit" else "describe.rule.deny"
    if key == "describe.rule.deny" and not node.actors:  # "anyone may not" reads badly
        key = "describe.rule.nobody"
    parts = [_capital(t(key, who=who, verbs=verbs, what=_what(node)))]
    purposes = _join(_words(PURPOSES, node.purposes.pairs, t("describe.code")))
    if purposes:
        parts.append(t("describe.for", purposes=purposes))
    if node.period is not None:
        parts.append(t("describe.during", period=plain_period(node.period)))
    if node.data_period is not None:
        parts.append(t("describe.data_period", period=plain_period(node.data_period)))
    if node.expression is not None:
        parts.append(t("describe.expression"))
    sentence = " ".join(parts) + "."
    if depth >= 2:
        return t("describe.exception", rule=sentence)
    return sentence


def who_words(actors: Iterable[Actor]) -> str:
    """Who the actors are, in words ("anyone" when there are none)."""
    names: list[str] = []
    for actor in actors:
        if actor.reference is not None:
            kind, _, ident = actor.reference.partition("/")
            key = _ACTOR_TYPES.get(kind)
            names.append(t(key, id=ident) if key else actor.reference)
        elif actor.identifier is not None:
            names.append(t("who.identifier", value=actor.identifier[1]))
        elif actor.roles:
            roles = ", ".join(sorted(code for _system, code in actor.roles))
            names.append(t("who.role", roles=roles))
    return _join(names) or t("who.anyone")


def _what(node: Provision) -> str:
    kinds = _join(_words(KINDS, node.classes, t("describe.code")))
    labels = _join(_words(LABELS, node.security_labels, t("describe.code")))
    codes = sorted(code for _system, code in node.codes.pairs) + sorted(node.codes.bare)
    if node.data and not (kinds or labels or codes):
        return t("what.data", refs=", ".join(ref.reference for ref in node.data))
    if not (kinds or labels or codes):
        return t("what.all")
    parts = [t("what.your", noun=kinds or t("what.records"))]
    if codes:
        parts.append(t("what.codes", codes=", ".join(codes)))
    if labels:
        parts.append(t("what.labelled", labels=labels))
    if node.data:
        parts.append(t("what.within", refs=", ".join(ref.reference for ref in node.data)))
    return " ".join(parts)


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _words(table: Mapping[str, str], codings: Iterable[Coding], unknown: str) -> list[str]:
    out: list[str] = []
    for _system, code in sorted(codings):
        key = table.get(code)
        word = t(key) if key else (f"{unknown} {code}".strip() if unknown else code)
        if word not in out:
            out.append(word)
    return out


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return words[0] if words else ""
    return t("describe.or", first=", ".join(words[:-1]), last=words[-1])


def plain_period(period: Period) -> str:
    """``from <start> until <end>`` in days (an end at midnight is the day before: FHIR's end
    includes its whole day, the parser keeps it exclusive)."""
    start = _day(period.start) if period.start else None
    end = _day(period.end - timedelta(microseconds=1)) if period.end else None
    if start and end:
        return t("period.between", start=start, end=end)
    if end:
        return t("period.until", end=end)
    if start:
        return t("period.from", start=start)
    return t("period.always")


def _day(instant: datetime) -> str:
    if (instant.hour, instant.minute, instant.second) in {(0, 0, 0), (23, 59, 59)}:
        return instant.date().isoformat()
    return instant.strftime("%Y-%m-%d %H:%M UTC")
