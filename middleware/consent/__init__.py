"""FHIR Consent (R4/R4B and R5) compiled into frozen policies, and the pure consent decision.

``parse_consent`` turns a Consent into a :class:`Policy` (or raises :class:`InvalidConsent`,
a 422 naming every problem); ``decide`` answers one access request against a patient's
policies; ``explain`` renders the answer's trace. None of them does I/O.

Beside the engine, not imported here: the patient consent API the gateway serves
(``api`` routes, ``service`` records every attempt, ``operations`` and ``changes`` do the work,
``access`` says who may, ``records`` builds what is stored and answered, ``explainio`` reads and
writes ``$explain``), the per-patient policy cache invalidated by ledger position
(``registry``) and the index rebuild from the ledger (``rebuild``). They reach storage and the
ledger only through objects handed to them.
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
