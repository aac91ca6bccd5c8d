"""FHIR Consent (R4/R4B and R5) compiled into frozen policies, and the pure consent decision.

``parse_consent`` turns a Consent into a :class:`Policy` (or raises :class:`InvalidConsent`,
a 422 naming every problem); ``decide`` answers one access request against a patient's
policies; ``explain`` renders the answer's trace. None of them does I/O.
"""

from middleware.consent.decide import (
    DEFAULT_SENSITIVE_LABELS,
    Decision,
    Defaults,
    Obligation,
    TraceStep,
    decide,
)
from middleware.consent.explain import explain
from middleware.consent.model import Coding, Effect, Period, Policy, Provision
from middleware.consent.parse import InvalidConsent, parse_consent
from middleware.consent.request import Principal, ResourceSummary
from middleware.consent.summary import summarize

__all__ = [
    "DEFAULT_SENSITIVE_LABELS",
    "Coding",
    "Decision",
    "Defaults",
    "Effect",
    "InvalidConsent",
    "Obligation",
    "Period",
    "Policy",
    "Principal",
    "Provision",
    "ResourceSummary",
    "TraceStep",
    "decide",
    "explain",
    "parse_consent",
    "summarize",
]
