"""Purposes of use and the 45 CFR 164.528(a)(1) exemptions they map to. Pure data.

:data:`DEFAULT_EXEMPT` maps HL7 v3 ActReason purpose-of-use codes (``system|code``) to the
exemption category (a key of :data:`EXEMPTIONS`) that leaves a disclosure made for that purpose
out of an accounting; docs/audit.md has the table with the reasons. :func:`parse_exempt` reads
the ``accounting_exempt_purposes`` setting; :func:`purpose_text` gives plain words for a code.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "ACT_REASON",
    "DEFAULT_EXEMPT",
    "EXEMPTIONS",
    "parse_exempt",
    "purpose_text",
]

#: HL7 v3 ActReason, the code system of purpose-of-use values.
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"

#: Why a disclosure is left out: category -> the paragraph of 45 CFR 164.528 and plain words.
EXEMPTIONS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "tpo": ("164.528(a)(1)(i)", "for your treatment, payment or our health care operations"),
        "individual": ("164.528(a)(1)(ii)", "to you or your personal representative"),
        "authorization": ("164.528(a)(1)(iv)", "that you asked for or authorized"),
        "care-notification": (
            "164.528(a)(1)(v)",
            "for a facility directory, to people involved in your care, or for notification",
        ),
        "national-security": ("164.528(a)(1)(vi)", "for national security or intelligence"),
        "custody": ("164.528(a)(1)(vii)", "to correctional institutions or custodial officers"),
        "before-compliance": ("164.528(a)(1)(ix)", "made before the compliance date"),
        # Not an exemption: inside the covered entity data is used, not disclosed (160.103).
        "internal-use": ("45 CFR 160.103", "inside our own organization (uses, not disclosures)"),
    }
)

# HL7 v3 ActReason displays (terminology.hl7.org), for purpose text a patient can read.
_DISPLAY = {
    "TREAT": "treatment", "ETREAT": "emergency treatment", "BTG": "break the glass",
    "ERTREAT": "emergency room treatment", "COC": "coordination of care",
    "CAREMGT": "care management", "POPHLTH": "population health", "CLINTRL": "clinical trial",
    "HPAYMT": "healthcare payment", "CLMATTCH": "claim attachment",
    "COVAUTH": "coverage authorization", "COVERAGE": "coverage under policy or program",
    "ELIGDTRM": "eligibility determination", "ELIGVER": "eligibility verification",
    "ENROLLM": "enrollment", "REMITADV": "remittance advice",
    "HOPERAT": "healthcare operations", "HACCRED": "health accreditation",
    "HCOMPL": "health compliance", "HDM": "healthcare delivery management",
    "HOUTCOMS": "health outcome measure", "HQUALIMP": "health quality improvement",
    "HSYSADMIN": "health system administration", "MEMADMIN": "member administration",
    "METAMGT": "metadata management", "PATADMIN": "patient administration",
    "PATSFTY": "patient safety", "PERFMSR": "performance measure",
    "RECORDMGT": "records management", "SYSDEV": "system development",
    "HTEST": "test health data", "TRAIN": "training", "LABELING": "labeling",
    "PATRQT": "patient requested", "PWATRNY": "power of attorney",
    "FAMRQT": "family requested", "SUPNWK": "support network", "HDIRECT": "directory",
    "DISASTER": "disaster", "PUBHLTH": "public health", "THREAT": "threat",
    "HRESCH": "healthcare research", "CLINTRCH": "clinical trial research",
    "HMARKT": "healthcare marketing", "HLEGAL": "legal", "GOV": "government",
    "FRAUD": "fraud", "HDECD": "decedent", "DONAT": "donation",
    "MILCDM": "military command", "MILDCRG": "military discharge",
    "HPRGRP": "health program reporting",
}  # fmt: skip

# The default exemptions (docs/audit.md has the table with the reasons). Codes of the TREAT,
# HPAYMT and HOPERAT families are exempt only where HIPAA's meaning matches: the 164.512
# disclosures that HL7 files under HOPERAT (HLEGAL, GOV, FRAUD, HDECD, DONAT, MILCDM) and
# MILDCRG under HPAYMT stay accountable, as do research (HRESCH, CLINTRL), public health,
# THREAT and marketing. HL7 has no code for (vi) national security or (vii) custody: add local
# codes with ``=national-security`` / ``=custody`` (see :func:`parse_exempt`).
_TPO = (
    "TREAT ETREAT BTG ERTREAT COC CAREMGT POPHLTH "
    "HPAYMT CLMATTCH COVAUTH COVERAGE ELIGDTRM ELIGVER ENROLLM REMITADV "
    "HOPERAT HACCRED HCOMPL HDM HOUTCOMS HQUALIMP HSYSADMIN MEMADMIN METAMGT PATADMIN "
    "PATSFTY PERFMSR RECORDMGT SYSDEV HTEST TRAIN LABELING"
)
_DEFAULT = {
    **{f"{ACT_REASON}|{code}": "tpo" for code in _TPO.split()},
    f"{ACT_REASON}|PWATRNY": "individual",  # a personal representative is the individual
    f"{ACT_REASON}|PATRQT": "authorization",
    **{f"{ACT_REASON}|{c}": "care-notification" for c in ("HDIRECT", "FAMRQT", "SUPNWK")},
    f"{ACT_REASON}|DISASTER": "care-notification",  # 164.510(b)(4) disaster relief
}
#: purpose ``system|code`` -> exemption category (a key of :data:`EXEMPTIONS`).
DEFAULT_EXEMPT: Mapping[str, str] = MappingProxyType(_DEFAULT)


def parse_exempt(text: str) -> Mapping[str, str]:
    """The exemption table a setting names: ``""`` -> :data:`DEFAULT_EXEMPT`; ``none`` -> no
    purpose is exempt; else a comma list of ``CODE`` or ``system|code`` (a bare code is v3
    ActReason), each optionally ``=category``. Without a category, a code keeps its default
    category, else ``tpo``. Raises ValueError on an unknown category or an empty code."""
    text = text.strip()
    if not text:
        return DEFAULT_EXEMPT
    if text.lower() == "none":
        return MappingProxyType({})
    table: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        code, _, category = item.partition("=")
        code, category = code.strip(), category.strip()
        if not code or code.endswith("|") or code.startswith("|"):
            raise ValueError(f"empty purpose code in {item!r}")
        key = code if "|" in code else f"{ACT_REASON}|{code}"
        category = category or DEFAULT_EXEMPT.get(key, "tpo")
        if category not in EXEMPTIONS or category in ("before-compliance", "internal-use"):
            raise ValueError(f"unknown exemption category {category!r}")
        table[key] = category
    return MappingProxyType(table)


def purpose_text(purpose: str) -> str:
    """Plain words for a ``system|code`` purpose (the ActReason display, else the code)."""
    system, _, code = purpose.rpartition("|")
    if system == ACT_REASON and code in _DISPLAY:
        return _DISPLAY[code]
    return code or purpose
