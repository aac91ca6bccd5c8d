"""R5 ``Consent.provision.expression``: FHIRPath, compiled once at write time, judged per resource.

R5 defines ``provision.expression`` (an ``Expression``) as "A computable (FHIRPath or other)
definition of what is controlled by this consent"; the provision applies to a resource when the
expression evaluates to true on it, AND-ed with the provision's other conditions
(http://hl7.org/fhir/R5/consent-definitions.html#Consent.provision.expression).

Library: ``fhirpathpy`` (beda.software's FHIRPath engine, pure Python, MIT) evaluates; its
ANTLR grammar also checks the syntax (``entireExpression``: the whole text must parse; the
library's own ``parse`` ignores syntax errors, so they are collected here and refused).

What is accepted (:func:`compile_expression`, problems become a 422 at consent write):

* ``language`` ``text/fhirpath`` only, an ``expression`` text of at most
  :data:`MAX_EXPRESSION_CHARS` characters; a ``reference`` alone (a Library elsewhere) or any
  other language is refused, never ignored (ignoring it would widen the provision).
* A linear subset of FHIRPath, so an expression cannot make evaluation blow up (fhirpathpy is
  pure Python and cannot be interrupted): only the functions in :data:`ALLOWED_FUNCTIONS`.
  Refused: ``descendants``/``repeat``/``aggregate`` (quadratic or unbounded iteration),
  ``combine`` and ``replace`` (collections and strings that double per call), the set
  functions and the ``|`` union (quadratic de-duplication), ``matches``/``replaceMatches``
  (regular expressions from the consent run against data: catastrophic backtracking),
  ``trace`` (would log data), ``resolve``/``memberOf`` (need I/O), ``power``/``exp`` (huge
  numbers), and every ``%`` environment variable (a criterion that restarts from the root
  would iterate the whole resource per item). Arithmetic: ``*``, ``/``, ``div``, ``mod`` are
  refused and ``+``, ``-``, ``&`` need a quantity literal operand (``now() - 2 years``): with
  ``$this`` on both sides, nested or chained ``select``/``where`` would double a string or
  square a number per step (2^50 after 50 steps). Nesting is bounded by :data:`MAX_DEPTH`.
* **Cost.** fhirpathpy is pure Python and cannot be interrupted, so the cost is bounded before
  evaluation. Within the subset above no collection holds anything but nodes of the resource
  and literals, and each AST node visits each resource node at most once per item it is
  evaluated for, so one evaluation costs about (AST nodes) x (resource JSON nodes) x a
  constant; the worst constant measured is ~1 us (``children().where(children().where(...))``
  nested, CPython 3.11). Hence two budgets:

  - **per consent** (write time and whenever a stored consent is compiled): at most
    :data:`MAX_CONSENT_NODES` AST nodes over all its expressions (an
    :class:`ExpressionBudget` shared by them); more is a 422 naming the element that crossed
    it, and a stored consent over it does not compile (the registry fails closed);
  - **per resource**: every expression of a consent is evaluated only when that consent's
    AST nodes x the resource's JSON nodes is at most :data:`MAX_WORK` (so all of them
    together cost at most ~50 ms on one resource); otherwise the answer is *unknown*.

  A consent with one 30-node expression judges resources of up to ~1,600 JSON nodes; one at
  the full budget, of up to ~190 (an Observation has 30 to 150).

Outcome of :func:`holds`: ``True`` when the result is the single boolean ``true``, ``False``
when it is the single boolean ``false``, ``None`` (unknown) otherwise: an empty or
multi-item or non-boolean result, an evaluation error, a resource over the node bound. The
matcher fails closed on unknown: a deny provision applies, a permit does not (the same rule
as an unknown clinical date under ``dataPeriod``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import fhirpathpy
from fhirpathpy.models import models

from middleware.consent.fhirpath_syntax import brackets, parse, size

__all__ = [
    "ALLOWED_FUNCTIONS",
    "FHIRPATH",
    "MAX_DEPTH",
    "MAX_CONSENT_CHARS",
    "MAX_CONSENT_NODES",
    "MAX_EXPRESSION_CHARS",
    "MAX_WORK",
    "CompiledExpression",
    "ExpressionBudget",
    "compile_expression",
    "holds",
]

FHIRPATH: Final = "text/fhirpath"
MAX_EXPRESSION_CHARS: Final = 500
MAX_DEPTH: Final = 64
"""Deepest AST accepted (parentheses and function arguments nest it)."""
MAX_BRACKETS: Final = 16
"""Deepest nesting of brackets accepted, checked before parsing."""
MAX_CONSENT_NODES: Final = 256
"""Most FHIRPath AST nodes over all the expressions of one consent (see the module docstring)."""
MAX_CONSENT_CHARS: Final = 1000
"""Most characters over all the expressions of one consent (bounds what is parsed)."""
MAX_WORK: Final = 50_000
"""Most (consent's AST nodes) x (resource's JSON nodes: objects, arrays, values) evaluated:
~50 ms of CPU at the worst measured ~1 us per unit."""

ALLOWED_FUNCTIONS: Final = frozenset(
    {
        # existence and filtering: one pass over the input collection each
        "empty", "not", "exists", "all", "allTrue", "anyTrue", "allFalse", "anyFalse", "count",
        "where", "select", "ofType", "extension", "children", "iif", "coalesce",
        # subsetting
        "single", "first", "last", "tail", "take", "skip",
        # types and conversions
        "type", "is", "as", "toInteger", "toBoolean", "toDecimal", "toString", "toDate",
        "toDateTime", "toTime", "toQuantity", "convertsToBoolean", "convertsToInteger",
        "convertsToDecimal", "convertsToString", "convertsToDate", "convertsToDateTime",
        "convertsToTime", "convertsToQuantity",
        # strings (no regular expressions, nothing that grows a string)
        "indexOf", "substring", "startsWith", "endsWith", "contains", "upper", "lower",
        "length", "trim",
        # numbers and aggregates over one collection
        "abs", "ceiling", "floor", "round", "truncate", "sum", "min", "max", "avg",
        # the clock
        "now", "today", "timeOfDay",
    }
)  # fmt: skip
_REFUSED_NODES: Final = {
    "UnionExpression": "the '|' union is not supported",
    "ExternalConstantTerm": "environment variables (%name) are not supported",
    "MultiplicativeExpression": "*, /, div and mod are not supported",
}
_MODEL: Final = models["r5"]


class ExpressionBudget:
    """The characters and AST nodes of every expression of one consent, counted as they are compiled
    (:func:`compile_expression` adds to it; it is shared by them all and not changed once the
    consent is compiled). Its ``nodes`` weigh each evaluation (:func:`holds`)."""

    __slots__ = ("chars", "nodes")

    def __init__(self) -> None:
        self.nodes = self.chars = 0


@dataclass(frozen=True, slots=True)
class CompiledExpression:
    """A checked FHIRPath expression: its ``text`` (for traces), the compiled evaluator (a
    plain function of a resource) and the budget of its consent (neither compared)."""

    text: str
    evaluate: Callable[[Mapping[str, Any], Mapping[str, Any]], list[Any]] = field(
        compare=False, repr=False
    )
    budget: ExpressionBudget = field(default_factory=ExpressionBudget, compare=False, repr=False)


def compile_expression(
    node: object, path: str, budget: ExpressionBudget | None = None
) -> tuple[CompiledExpression | None, list[str]]:
    """Check and compile one R5 ``Expression`` at ``path``: the compiled expression, or None
    and the problems (each naming the element). ``budget`` is the consent's (a new one when
    None): over :data:`MAX_CONSENT_NODES` is a problem. Pure but for ``budget``."""
    if not isinstance(node, Mapping):
        return None, [f"{path}: must be an Expression object"]
    language, text = node.get("language"), node.get("expression")
    if language != FHIRPATH:
        return None, [f"{path}.language: only {FHIRPATH} is supported, not {language!r}"]
    if not isinstance(text, str) or not text.strip():
        return None, [f"{path}.expression: required (a reference alone is not supported)"]
    if len(text) > MAX_EXPRESSION_CHARS:
        return None, [f"{path}.expression: longer than {MAX_EXPRESSION_CHARS} characters"]
    budget = ExpressionBudget() if budget is None else budget
    if budget.nodes > MAX_CONSENT_NODES or budget.chars > MAX_CONSENT_CHARS:
        return None, []  # over the consent's budget already: refused once, not parsed again
    budget.chars += len(text)
    if budget.chars > MAX_CONSENT_CHARS:
        return None, [
            f"{path}.expression: the consent's FHIRPath expressions are longer than "
            f"{MAX_CONSENT_CHARS} characters in all"
        ]
    if brackets(text) > MAX_BRACKETS:  # ANTLR's time grows with the square of the nesting
        return None, [f"{path}.expression: nests deeper than {MAX_BRACKETS} brackets"]
    ast, syntax = parse(text)
    if ast is None:
        return None, [f"{path}.expression: not valid FHIRPath ({syntax})"]
    refused = _refused(ast, 0)
    if refused:
        return None, [f"{path}.expression: {refused}"]
    budget.nodes += size(ast)
    if budget.nodes > MAX_CONSENT_NODES:
        return None, [
            f"{path}.expression: the consent's FHIRPath expressions have more than "
            f"{MAX_CONSENT_NODES} nodes in all ({budget.nodes} with this one)"
        ]

    def evaluate(resource: Mapping[str, Any], context: Mapping[str, Any]) -> list[Any]:
        # fhirpathpy.compile() without parsing the text a second time
        found: list[Any] = fhirpathpy.apply_parsed_path(resource, ast, context, _MODEL)  # type: ignore[no-untyped-call]
        return found

    return CompiledExpression(text, evaluate, budget), []


def holds(expression: CompiledExpression, resource: Mapping[str, Any] | None) -> bool | None:
    """``True``/``False`` when ``expression`` evaluates to that single boolean on
    ``resource``, else None (unknown: see the module docstring). Never raises."""
    if resource is None or not _within(resource, MAX_WORK // max(1, expression.budget.nodes)):
        return None
    try:
        result = expression.evaluate(resource, {})
    except Exception:  # noqa: BLE001 - fhirpathpy raises bare Exception: unknown, fail closed
        return None
    if isinstance(result, list) and len(result) == 1 and isinstance(result[0], bool):
        return result[0]
    return None


def _refused(node: Mapping[str, Any], depth: int) -> str | None:
    if depth > MAX_DEPTH:
        return f"nests deeper than {MAX_DEPTH}"
    kind = node.get("type")
    if kind in _REFUSED_NODES:
        return _REFUSED_NODES[str(kind)]
    if kind == "AdditiveExpression" and not any(map(_quantity_literal, node.get("children", ()))):
        return "+, - and & are supported only with a quantity literal (now() - 2 years)"
    if kind == "Functn":
        name = next(
            (c.get("text") for c in node.get("children", ()) if c.get("type") == "Identifier"), None
        )
        if name not in ALLOWED_FUNCTIONS:
            return f"the function {name}() is not supported"
    for child in node.get("children", ()):
        if isinstance(child, Mapping):
            found = _refused(child, depth + 1)
            if found:
                return found
    return None


def _quantity_literal(node: Mapping[str, Any]) -> bool:
    """Whether ``node`` is a quantity literal term (``2 years``, ``5 'mg'``)."""
    while node.get("type") in ("TermExpression", "LiteralTerm"):
        children = node.get("children") or [{}]
        node = children[0]
    return node.get("type") == "QuantityLiteral"


def _within(value: object, budget: int) -> bool:
    """Whether ``value`` has at most ``budget`` JSON nodes (stops counting past it)."""
    stack = [value]
    while stack:
        budget -= 1
        if budget < 0:
            return False
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True
