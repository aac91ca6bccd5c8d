"""FHIR Consent JSON (R4/R4B or R5) -> :class:`~middleware.consent.model.Policy`.

How each node's effect is settled (the rule the decision function relies on):

**R5.** ``Consent.decision`` is the base: "Action to take - permit or deny - as default". R5
provisions have no ``type``; ``Consent.provision`` is "An exception to the base policy of this
consent. An exception can be an addition or removal of access permissions", and nested ones are
"Provisions which provide exceptions to the base provision or subprovisions". The current build
states the consequence on the ConsentProvisionType binding of ``Consent.decision``: "Sets the base
decision for Consent to be either permit or deny, with provisions assumed to be a negation of the
previous level". So a provision at depth *d* (``Consent.provision[i]`` is depth 1) has the effect
of ``decision`` flipped *d* times: odd depths oppose the decision, even depths agree with it. We
enforce the build's invariant consent-1, "If provision exists, decision must also be provided",
and refuse a Consent with neither, as it states nothing the gateway could enforce.

**R4/R4B.** ``Consent.policyRule`` is the base policy when it is a v3-ActCode opt-in/opt-out code
(``OPTIN``/``OPTINR`` -> permit, ``OPTOUT``/``OPTOUTE`` -> deny); otherwise the consent has no
base and speaks only where its provisions match. The root ``Consent.provision`` is a rule on that
base ("Constraints to the base Consent.policyRule"): its effect is its ``type``, or the base when
``type`` is absent. R4 defines ``type`` as "Not permitted in root rule, required in all nested
rules", yet its examples and the Consent notes put it at the root ("a patient wanting to opt-out
will be recorded with an opt-in policy where the Consent.provision[0].type indicates 'deny'"),
so both forms are accepted. Nested provisions take their own ``type``; one written without it is
read the R5 way, as the negation of its parent. The root provision's ``period`` also bounds the
whole consent (R4 has no ``Consent.period``).

Whatever cannot be enforced faithfully is refused rather than ignored, since ignoring a
condition widens the provision: codings without a code, actors and data that name no matchable
reference, an R5 ``provision.expression`` in a language other than FHIRPath or using what
:mod:`middleware.consent.expression` refuses (a FHIRPath one is compiled here, so a bad one is
a 422 at write time). :class:`InvalidConsent` lists every problem at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from middleware.consent.datatypes import Reader, items
from middleware.consent.expression import (
    CompiledExpression,
    ExpressionBudget,
    compile_expression,
)
from middleware.consent.limits import CEILING, ConsentLimits, limit_problems
from middleware.consent.model import (
    CONFIDENTIALITY_SYSTEMS,
    DENY,
    PERMIT,
    Actor,
    Coding,
    CodingSet,
    DataRef,
    Effect,
    FhirVersion,
    Meaning,
    Policy,
    Provision,
    confidentiality_rank,
    normalize_reference,
)
from middleware.consent.validate import detect_version, structure_problems
from middleware.errors import UnprocessableEntity
from middleware.fhir.limits import HARD_MAX_JSON_DEPTH

__all__ = ["InvalidConsent", "parse_consent"]

_STATUSES: Final[dict[FhirVersion, frozenset[str]]] = {
    "R4": frozenset({"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"}),
    "R5": frozenset({"draft", "active", "inactive", "not-done", "entered-in-error", "unknown"}),
}
_MEANINGS: Final[dict[str, Meaning]] = {
    "instance": "instance",
    "related": "related",
    "dependents": "dependents",
    "authoredby": "authoredby",
}
_ACT_CODE: Final = frozenset({"http://terminology.hl7.org/CodeSystem/v3-ActCode", ""})
#: The R5-in-R4 cross-version extension for provision.expression (FHIR R5 versions.html).
_R5_EXPRESSION_EXTENSION: Final = (
    "http://hl7.org/fhir/5.0/StructureDefinition/extension-Consent.provision.expression"
)
_POLICY_RULE: Final[dict[str, Effect]] = {
    "OPTIN": PERMIT,
    "OPTINR": PERMIT,
    "OPTOUT": DENY,
    "OPTOUTE": DENY,
}


class InvalidConsent(UnprocessableEntity):
    """A Consent that cannot be enforced; ``issues`` names every problem found (422)."""

    def __init__(self, issues: Sequence[str]) -> None:
        self.issues: tuple[str, ...] = tuple(issues)
        count = len(self.issues)
        super().__init__(
            f"Invalid Consent ({count} problem{'s' if count != 1 else ''}): "
            + "; ".join(self.issues)
        )


def parse_consent(
    raw: Mapping[str, Any],
    *,
    version: str | None = None,
    ledger_index: int | None = None,
    limits: ConsentLimits = CEILING,
) -> Policy:
    """Compile one Consent into a :class:`Policy`, or raise :class:`InvalidConsent`.

    ``version`` (``R4``, ``R4B``, ``R5`` or a FHIR version number) overrides detection; an
    unsupported value raises ValueError. ``limits`` bound the provisions (the write-time
    settings; the parser's own :data:`~middleware.consent.limits.CEILING` applies always),
    checked before anything recursive reads them. Pure: no I/O, ``raw`` is not modified.
    """
    if not isinstance(raw, Mapping):
        raise InvalidConsent(["Consent: expected a JSON object"])
    too_big = limit_problems(raw, limits) or limit_problems(raw, CEILING)
    if too_big:
        raise InvalidConsent(too_big)
    problems: list[str] = []
    if raw.get("resourceType") != "Consent":
        problems.append("Consent.resourceType: must be 'Consent'")
    fhir_version = detect_version(raw, problems, version=version)
    if fhir_version is None:
        raise InvalidConsent(problems)
    problems.extend(structure_problems(raw, fhir_version))
    problems.extend(_modifier_extensions(raw, "Consent", 0))
    builder = _Builder(fhir_version)
    policy = builder.policy(raw, ledger_index)
    for problem in builder.problems:
        if problem not in problems:
            problems.append(problem)
    if problems or policy is None:
        raise InvalidConsent(problems)
    return policy


def _modifier_extensions(node: object, path: str, depth: int) -> list[str]:
    """Every ``modifierExtension`` in the Consent: the engine knows none, and FHIR forbids
    ignoring a modifier one does not understand (R4 extensibility.html#modifierExtension): it
    may reverse what the element means, so the Consent is refused rather than misread."""
    if depth > HARD_MAX_JSON_DEPTH:  # deeper than any decoded JSON: refuse rather than not look
        return [f"{path}: nests too deep to check for modifierExtension"]
    found: list[str] = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "modifierExtension":
                found.append(f"{path}.modifierExtension: not understood by this server")
            elif isinstance(value, Mapping | list):
                found += _modifier_extensions(value, f"{path}.{key}", depth + 1)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += _modifier_extensions(item, f"{path}[{i}]", depth + 1)
    return found


def _flip(effect: Effect) -> Effect:
    return DENY if effect == PERMIT else PERMIT


def _as_effect(value: object) -> Effect | None:
    if value == PERMIT:
        return PERMIT
    return DENY if value == DENY else None


class _Builder(Reader):
    """Walks the submitted JSON once, building the policy and collecting semantic problems.

    Type errors are left to :func:`structure_problems`; the builder skips what it cannot read.
    """

    def __init__(self, version: FhirVersion) -> None:
        super().__init__()
        self.version: FhirVersion = version
        # Shared by the consent's expressions: their AST nodes in all (expression.py)
        self.budget = ExpressionBudget()

    def policy(self, raw: Mapping[str, Any], ledger_index: int | None) -> Policy | None:
        consent_id = raw.get("id")
        if not isinstance(consent_id, str) or not consent_id:
            self.fail("Consent.id", "required; consents are kept and traced by id")
        status = raw.get("status")
        if not isinstance(status, str) or status not in _STATUSES[self.version]:
            allowed = " | ".join(sorted(_STATUSES[self.version]))
            self.fail("Consent.status", f"must be one of {allowed}")
        patient = self.patient(raw)
        categories = set(self.concepts(raw.get("category"), "Consent.category", strict=False))
        if self.version == "R5":
            root = self.r5_root(raw)
            period = self.period(raw.get("period"), "Consent.period")
        else:
            categories.update(self.concept(raw.get("scope"), "Consent.scope", strict=False))
            root = self.r4_root(raw)
            period = root.children[0].period if root.children else None
        if self.problems or not isinstance(consent_id, str) or patient is None:
            return None
        return Policy(
            consent_id=consent_id,
            patient=patient,
            status=str(status),
            version=self.version,
            period=period,
            root=root,
            ledger_index=ledger_index,
            categories=frozenset(categories),
        )

    def patient(self, raw: Mapping[str, Any]) -> str | None:
        key = "subject" if self.version == "R5" else "patient"
        ref = raw.get(key)
        literal = ref.get("reference") if isinstance(ref, Mapping) else None
        if isinstance(literal, str) and normalize_reference(literal).startswith("Patient/"):
            return normalize_reference(literal)
        self.fail(f"Consent.{key}", "must be a literal reference to a Patient (Patient/<id>)")
        return None

    def r5_root(self, raw: Mapping[str, Any]) -> Provision:
        decision = raw.get("decision")
        effect = _as_effect(decision)
        if decision is None:
            self.fail("Consent.decision", "required: the base decision provisions are read against")
        elif effect is None:
            self.fail("Consent.decision", "must be 'permit' or 'deny'")
        effect = effect or DENY  # only to finish the walk: a problem has been recorded
        children = tuple(
            self.provision(node, f"Consent.provision[{i}]", _flip(effect), frozenset(), -1)
            for i, node in items(raw.get("provision"))
        )
        return Provision(path="Consent.decision", effect=effect, children=children)

    def r4_root(self, raw: Mapping[str, Any]) -> Provision:
        base = self.policy_rule(raw.get("policyRule"))
        node = raw.get("provision")
        if not isinstance(node, Mapping):
            if base is None and node is None:
                self.fail(
                    "Consent.provision",
                    "absent, and Consent.policyRule is not an opt-in/opt-out code "
                    "(v3-ActCode OPTIN, OPTINR, OPTOUT, OPTOUTE): the consent states no decision",
                )
            return Provision(path="Consent.policyRule", effect=base)
        declared = node.get("type")
        effect = _as_effect(declared) if declared is not None else base
        if declared is not None and effect is None:
            self.fail("Consent.provision.type", "must be 'permit' or 'deny'")
        elif effect is None:
            self.fail(
                "Consent.provision.type",
                "absent, and Consent.policyRule is not an opt-in/opt-out code: no base decision",
            )
        top = self.provision(node, "Consent.provision", effect or DENY, frozenset(), -1)
        return Provision(path="Consent.policyRule", effect=base, children=(top,))

    def policy_rule(self, rule: object) -> Effect | None:
        effects = {
            _POLICY_RULE[code]
            for system, code in self.concept(rule, "Consent.policyRule", strict=False)
            if system in _ACT_CODE and code in _POLICY_RULE
        }
        if len(effects) > 1:
            self.fail("Consent.policyRule", "names both an opt-in and an opt-out policy")
            return None
        return effects.pop() if effects else None

    def provision(
        self,
        node: Mapping[str, Any],
        path: str,
        effect: Effect,
        covers: frozenset[Coding],
        covers_conf: int,
    ) -> Provision:
        if self.version == "R5":
            classes = [
                *self.codings(node.get("resourceType"), f"{path}.resourceType"),
                *self.codings(node.get("documentType"), f"{path}.documentType"),
            ]
            expression = self.expression(node.get("expression"), f"{path}.expression")
        else:
            expression = None
            if any(
                ext.get("url") == _R5_EXPRESSION_EXTENSION
                for _, ext in items(node.get("extension"))
            ):  # ignoring it would widen the provision; R4 defines no expression
                self.fail(f"{path}.extension", "provision.expression is supported in R5 only")
            classes = list(self.codings(node.get("class"), f"{path}.class"))
        labels = frozenset(self.codings(node.get("securityLabel"), f"{path}.securityLabel"))
        own_conf = confidentiality_rank(labels)
        covers = covers | {lab for lab in labels if lab[0] not in CONFIDENTIALITY_SYSTEMS}
        covers_conf = max(covers_conf, -1 if own_conf is None else own_conf)
        children = []
        for i, child in items(node.get("provision")):
            child_path = f"{path}.provision[{i}]"
            children.append(
                self.provision(
                    child,
                    child_path,
                    self.child_effect(child, child_path, effect),
                    covers,
                    covers_conf,
                )
            )
        return Provision(
            path=path,
            effect=effect,
            period=self.period(node.get("period"), f"{path}.period"),
            actors=tuple(self.actor(a, f"{path}.actor[{i}]") for i, a in items(node.get("actor"))),
            actions=CodingSet.of(self.concepts(node.get("action"), f"{path}.action")),
            purposes=CodingSet.of(self.codings(node.get("purpose"), f"{path}.purpose")),
            classes=frozenset(classes),
            codes=CodingSet.of(self.concepts(node.get("code"), f"{path}.code")),
            security_labels=labels,
            data_period=self.period(node.get("dataPeriod"), f"{path}.dataPeriod"),
            data=tuple(
                ref
                for i, item in items(node.get("data"))
                if (ref := self.data_ref(item, f"{path}.data[{i}]")) is not None
            ),
            children=tuple(children),
            covers=covers,
            covers_confidentiality=covers_conf,
            expression=expression,
        )

    def expression(self, node: object, path: str) -> CompiledExpression | None:
        """R5 ``provision.expression``, compiled (:mod:`middleware.consent.expression`)."""
        if node is None:
            return None
        compiled, problems = compile_expression(node, path, self.budget)
        for problem in problems:
            self.problems.append(problem)
        return compiled

    def child_effect(self, node: Mapping[str, Any], path: str, parent: Effect) -> Effect:
        declared = node.get("type") if self.version == "R4" else None
        if declared is None:
            return _flip(parent)
        effect = _as_effect(declared)
        if effect is None:
            self.fail(f"{path}.type", "must be 'permit' or 'deny'")
        return effect or DENY

    def actor(self, node: Mapping[str, Any], path: str) -> Actor:
        ref = node.get("reference")
        # The role is matched only when it stands alone; beside a reference it is descriptive.
        strict = not isinstance(ref, Mapping)
        roles = frozenset(self.concept(node.get("role"), f"{path}.role", strict=strict))
        if not isinstance(ref, Mapping):
            if not roles:
                self.fail(path, "names neither a role nor a reference")
            return Actor(roles=roles)
        literal, identifier = ref.get("reference"), ref.get("identifier")
        if isinstance(literal, str) and literal:
            return Actor(reference=normalize_reference(literal), roles=roles)
        if isinstance(identifier, Mapping):
            system, value = identifier.get("system"), identifier.get("value")
            if isinstance(system, str) and system and isinstance(value, str) and value:
                return Actor(identifier=(system, value), roles=roles)
        self.fail(
            f"{path}.reference", "needs a literal reference or an identifier with system and value"
        )
        return Actor(roles=roles)

    def data_ref(self, node: Mapping[str, Any], path: str) -> DataRef | None:
        ref = node.get("reference")
        literal = ref.get("reference") if isinstance(ref, Mapping) else None
        meaning = node.get("meaning")  # 1..1 in R4 and R5: its absence is a structure error
        if meaning is not None and meaning not in _MEANINGS:
            self.fail(f"{path}.meaning", "must be instance | related | dependents | authoredby")
        if not isinstance(literal, str) or not literal:
            self.fail(f"{path}.reference", "needs a literal reference (Type/id)")
            return None
        if meaning not in _MEANINGS:
            return None
        return DataRef(reference=normalize_reference(literal), meaning=_MEANINGS[meaning])
