"""The consent decision: pure, deterministic, no I/O.

``decide(principal, action, purposes, resource, policies, *, defaults, now) -> Decision``

1. **Which consents count.** Only ``active`` ones (R4/R5 ConsentState: "The consent is to be
   followed and enforced"); draft, proposed, rejected, inactive, not-done, entered-in-error and
   unknown are skipped with a trace step, as are consents for a patient whose compartment the
   resource is not in and consents outside their ``period``.
2. **One consent's answer.** The deepest matching provision wins, deny among disagreeing
   siblings (:mod:`middleware.consent.match`). A consent whose root states no base decision and
   in which nothing matches does not apply.
3. **Several consents** combine by ``Defaults.combining``: ``deny-overrides`` (default: any deny
   wins, else any permit) or ``permit-overrides`` (any permit wins, else any deny).
4. **No consent applies:** the per-resource-type default if one is set; else, for ``collect``
   (new data) by a caller acting for the record holder (a principal with no launch patient: a
   user or system caller) when ``Defaults.collect`` is ``permit``, permit (HIPAA 45 CFR
   164.506: the holder's own collection for treatment, payment and operations needs no
   consent; a consent that denies ``collect`` still refuses); else the jurisdiction default:
   ``opt-out`` permits, ``opt-in`` denies, so under opt-in only an explicit grant permits
   access and correction.
5. **Sensitive data needs explicit consent.** A permit stands only for the resource's sensitive
   labels (``Defaults.sensitive_labels``, e.g. v3-ActCode HIV, PSY, SUD, ETH) and its
   confidentiality, when at or above ``Defaults.explicit_confidentiality``, that the permitting
   provision *or one of its ancestors* names; defaults never name any. 42 CFR Part 2 labels
   (``Defaults.labels``, :mod:`middleware.consent.labels`) count as sensitive too. Otherwise, per
   ``Defaults.uncovered``: ``deny`` (default), or permit with the obligation ``redact`` carrying the
   uncovered labels: the enforcer must remove every part tagged with them (all of the resource
   when the tag is in ``meta.security``). Redaction applies to reads (``access``) only: any other
   action with uncovered labels is denied in both modes, since a write cannot be redacted.

**Security labels.** v3-Confidentiality is ordered U < L < M < N < R < V and is read as a
high-water mark. The spec says "If the consent specifies a security label of 'R' then it applies
to all resources that are labeled 'R' or lower" (Consent.provision.securityLabel): we apply that
to permits, whose label is a ceiling (a permit naming R reaches U..R, never V). For a deny we
read the label as a floor (a deny naming R reaches R and V): the literal reading would let V data
escape a deny of R and fall back to an enclosing permit. Other labels (sensitivity, compartment)
match exactly (system and code); several labels on one provision are alternatives.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Final, Literal

from middleware.consent.labels import DEFAULT_LABEL_RULES, LabelRules
from middleware.consent.match import Request, resolve
from middleware.consent.model import (
    CONFIDENTIALITY_RANK,
    CONFIDENTIALITY_SYSTEMS,
    DENY,
    PERMIT,
    Coding,
    Effect,
    Policy,
    Provision,
    canonical_labels,
)
from middleware.consent.request import Principal, ResourceSummary

__all__ = [
    "DEFAULT_SENSITIVE_LABELS",
    "Decision",
    "Defaults",
    "Obligation",
    "TraceStep",
    "decide",
]

_ACT_CODE_SYSTEMS: Final = (
    "http://terminology.hl7.org/CodeSystem/v3-ActCode",
    "http://hl7.org/fhir/v3/ActCode",  # the pre-R4 URL, still seen in meta.security
)
#: FHIR consentaction ``collect``: gathering new data (what a create asks).
_COLLECT: Final[Coding] = ("http://terminology.hl7.org/CodeSystem/consentaction", "collect")
#: FHIR consentaction ``access``: reading data (the only action an answer can be redacted for).
_ACCESS: Final[Coding] = ("http://terminology.hl7.org/CodeSystem/consentaction", "access")
DEFAULT_SENSITIVE_LABELS: Final = frozenset(
    (system, code)
    for system in _ACT_CODE_SYSTEMS
    for code in (
        "ETH",  # substance abuse information sensitivity
        "GDIS",  # genetic disease
        "HIV",
        "MST",  # military sexual trauma
        "PSY",  # psychiatry disorder
        "PSYTHPN",  # psychotherapy note
        "SCA",  # sickle cell anemia
        "SDV",  # sexual assault, abuse, or domestic violence
        "SEX",  # sexuality and reproductive health
        "STD",  # sexually transmitted disease
        "SUD",  # substance use disorder
        "TBOO",  # taboo
    )
)
"""v3-ActCode information-sensitivity codes that need a consent naming them."""


@dataclass(frozen=True, slots=True)
class Defaults:
    """Jurisdiction and deployment settings the decision falls back on. Validated on creation."""

    jurisdiction: Literal["opt-in", "opt-out"] = "opt-in"
    category_defaults: Mapping[str, Effect] = field(default_factory=dict, hash=False)
    combining: Literal["deny-overrides", "permit-overrides"] = "deny-overrides"
    sensitive_labels: frozenset[Coding] = DEFAULT_SENSITIVE_LABELS
    explicit_confidentiality: str = "R"
    uncovered: Literal["deny", "redact"] = "deny"
    #: ``collect`` with no applicable consent: ``permit`` (record holder's callers only) or
    #: ``jurisdiction`` (like every other action).
    collect: Literal["permit", "jurisdiction"] = "jurisdiction"
    #: What counts as 42 CFR Part 2 data (sensitive like ``sensitive_labels``) and the notice
    #: its release carries (:mod:`middleware.consent.labels`).
    labels: LabelRules = DEFAULT_LABEL_RULES

    def __post_init__(self) -> None:
        if self.jurisdiction not in ("opt-in", "opt-out"):
            raise ValueError(f"jurisdiction must be opt-in or opt-out, not {self.jurisdiction!r}")
        if self.combining not in ("deny-overrides", "permit-overrides"):
            raise ValueError(f"unknown combining algorithm {self.combining!r}")
        if self.uncovered not in ("deny", "redact"):
            raise ValueError(f"uncovered must be deny or redact, not {self.uncovered!r}")
        if self.collect not in ("permit", "jurisdiction"):
            raise ValueError(f"collect must be permit or jurisdiction, not {self.collect!r}")
        if self.explicit_confidentiality not in CONFIDENTIALITY_RANK:
            raise ValueError(f"unknown confidentiality code {self.explicit_confidentiality!r}")
        bad = {k: v for k, v in self.category_defaults.items() if v not in (PERMIT, DENY)}
        if bad:
            raise ValueError(f"category defaults must be permit or deny: {bad!r}")
        object.__setattr__(
            self, "category_defaults", MappingProxyType(dict(self.category_defaults))
        )
        # Resource labels reach decide() with canonical systems (summary.py); so must these.
        object.__setattr__(self, "sensitive_labels", canonical_labels(self.sensitive_labels))


@dataclass(frozen=True, slots=True)
class Obligation:
    """Something the enforcer must do to release a permitted resource (``redact``: remove
    every part tagged with one of ``labels``)."""

    code: str
    labels: frozenset[Coding] = frozenset()


@dataclass(frozen=True, slots=True)
class TraceStep:
    """One reason in a decision: which consent (id, ledger index), where in it, and why.

    Traces can reveal sensitivity labels of the resource: show them only to those entitled to
    the explanation, never in an answer to the requester.
    """

    consent_id: str | None
    ledger_index: int | None
    provision_path: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Decision:
    """``permit`` (with ``obligations`` to honour, possibly none) or ``deny``, and the trace."""

    effect: Effect
    obligations: tuple[Obligation, ...] = ()
    trace: tuple[TraceStep, ...] = ()

    @property
    def permitted(self) -> bool:
        return self.effect == PERMIT


def decide(
    principal: Principal,
    action: Coding,
    purposes: frozenset[Coding],
    resource: ResourceSummary,
    policies: Iterable[Policy],
    *,
    defaults: Defaults,
    now: datetime,
) -> Decision:
    """Decide whether ``principal`` may perform ``action`` for ``purposes`` on ``resource``.

    ``now`` must be timezone-aware. The effect and obligations do not depend on the order of
    ``policies``; the trace lists consents in the order given.
    """
    request = Request(principal, action, purposes, resource, now)
    trace: list[TraceStep] = []
    permitted_by: list[Provision] = []
    denied = False  # read only as a truth value (mutation testing: None here is equivalent)
    for policy in policies:
        cid, index = policy.consent_id, policy.ledger_index
        if policy.status != "active":
            reason = f"ignored: status {policy.status}; only active consents count"
            trace.append(TraceStep(cid, index, None, reason))
            continue
        if policy.patient not in resource.patients:
            reason = "ignored: resource not in this patient's compartment"
            trace.append(TraceStep(cid, index, None, reason))
            continue
        if policy.period is not None and not policy.period.contains(now):
            trace.append(TraceStep(cid, index, None, "ignored: outside the consent period"))
            continue
        effect, deciders = resolve(policy.root, request)
        first = deciders[0]
        if effect is None:
            reason = "not applicable: no provision matches and there is no base decision"
            trace.append(TraceStep(cid, index, None, reason))
            continue
        why = "base decision" if first is policy.root else "deepest matching provision"
        if first.expression is not None:  # name what it judged by (R5 provision.expression)
            why += f" (expression {first.expression.text})"
        trace.append(TraceStep(cid, index, first.path, f"{effect}: {why}"))
        if effect == DENY:
            denied = True
        else:
            permitted_by.extend(deciders)

    effect = _combine(denied, bool(permitted_by), request, defaults, trace)
    if effect == DENY:
        return Decision(DENY, (), tuple(trace))
    uncovered = _uncovered(resource, permitted_by, defaults)
    if not uncovered:
        return Decision(PERMIT, (), tuple(trace))
    codes = ", ".join(sorted(code for _, code in uncovered))
    # Redaction is an obligation on what is *released*: only a read can honour it. A write
    # (collect, correct) sends the whole body upstream, so labels no permit names refuse it
    # whatever ``uncovered`` says, or sensitive data could be stored without a consent that
    # names it.
    if defaults.uncovered == "deny" or action != _ACCESS:
        trace.append(TraceStep(None, None, None, f"deny: no permit names the labels {codes}"))
        return Decision(DENY, (), tuple(trace))
    trace.append(TraceStep(None, None, None, f"permit with redaction: no permit names {codes}"))
    return Decision(PERMIT, (Obligation("redact", uncovered),), tuple(trace))


def _combine(
    denied: bool,
    permitted: bool,
    request: Request,
    defaults: Defaults,
    trace: list[TraceStep],
) -> Effect:
    resource = request.resource
    if denied and (defaults.combining == "deny-overrides" or not permitted):
        trace.append(TraceStep(None, None, None, f"deny: a consent denies ({defaults.combining})"))
        return DENY
    if permitted:
        trace.append(
            TraceStep(None, None, None, f"permit: a consent permits ({defaults.combining})")
        )
        return PERMIT
    by_type = defaults.category_defaults.get(resource.resource_type)
    if by_type is not None:
        reason = f"{by_type}: no consent applies; default for {resource.resource_type}"
        trace.append(TraceStep(None, None, None, reason))
        return by_type
    if _holder_collects(request, defaults):
        reason = "permit: no consent applies; collection of new data by the record holder"
        trace.append(TraceStep(None, None, None, reason))
        return PERMIT
    effect: Effect = PERMIT if defaults.jurisdiction == "opt-out" else DENY
    reason = f"{effect}: no consent applies; jurisdiction default {defaults.jurisdiction}"
    trace.append(TraceStep(None, None, None, reason))
    return effect


def _holder_collects(request: Request, defaults: Defaults) -> bool:
    """Whether the ``collect`` default permits: new data (consentaction ``collect``) written
    by a caller acting for the record holder, not for a patient. A patient-context caller
    writing into *another* patient's compartment is no such collection."""
    return (
        defaults.collect == "permit"
        and request.action == _COLLECT
        and request.principal.patient is None
    )


def _uncovered(
    resource: ResourceSummary, permitted_by: list[Provision], defaults: Defaults
) -> frozenset[Coding]:
    """The resource's labels that need explicit consent and that no permitting provision names."""
    labels = resource.security_labels
    rules = defaults.labels
    sensitive = labels & (defaults.sensitive_labels | rules.part2)
    if labels:  # a Part 2 code with no system may mean Part 2: treated as it
        sensitive |= {lab for lab in labels if not lab[0] and rules.is_part2(lab)}
    needs_level = (
        resource.confidentiality >= CONFIDENTIALITY_RANK[defaults.explicit_confidentiality]
    )
    if not sensitive and not needs_level:
        return frozenset()
    covered: set[Coding] = set()
    level = -1  # below every rank (U is 0); any negative start is equivalent
    for provision in permitted_by:
        covered |= provision.covers
        level = max(level, provision.covers_confidentiality)
    missing = {lab for lab in sensitive if not _covered(lab, covered)}
    if needs_level and level < resource.confidentiality:
        missing.add(_confidentiality_label(resource))
    return frozenset(missing)


def _covered(label: Coding, covered: set[Coding]) -> bool:
    """Whether a permit names ``label``: itself, its code with no system, or (a label with no
    system) its code in any system."""
    if label in covered or ("", label[1]) in covered:
        return True
    return not label[0] and any(code == label[1] for _, code in covered)


def _confidentiality_label(resource: ResourceSummary) -> Coding:
    """The resource's own confidentiality coding at its level (``N`` if it carries none)."""
    for system, code in resource.security_labels:
        if (
            system in CONFIDENTIALITY_SYSTEMS
            and CONFIDENTIALITY_RANK.get(code) == resource.confidentiality
        ):
            return system, code
    return _CONFIDENTIALITY, _CODE_OF_RANK[resource.confidentiality]


_CONFIDENTIALITY: Final = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
_CODE_OF_RANK: Final = {rank: code for code, rank in CONFIDENTIALITY_RANK.items()}
