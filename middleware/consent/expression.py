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
* Evaluation is further bounded by the resource: one with more than :data:`MAX_NODES` JSON
  nodes is not evaluated (the answer is *unknown*).

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
from antlr4 import CommonTokenStream, InputStream
from antlr4.error.ErrorListener import ErrorListener
from fhirpathpy.models import models
from fhirpathpy.parser import parse as parse_ast
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

__all__ = [
    "ALLOWED_FUNCTIONS",
    "FHIRPATH",
    "MAX_DEPTH",
    "MAX_EXPRESSION_CHARS",
    "MAX_NODES",
    "CompiledExpression",
    "compile_expression",
    "holds",
]

FHIRPATH: Final = "text/fhirpath"
MAX_EXPRESSION_CHARS: Final = 1000
MAX_DEPTH: Final = 64
"""Deepest AST accepted (parentheses and function arguments nest it)."""
MAX_NODES: Final = 20_000
"""Most JSON nodes (objects, arrays, values) of a resource an expression is evaluated on."""

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


@dataclass(frozen=True, slots=True)
class CompiledExpression:
    """A checked FHIRPath expression: its ``text`` (for traces) and the compiled evaluator
    (a plain function of a resource; not compared)."""

    text: str
    evaluate: Callable[[Mapping[str, Any], Mapping[str, Any]], list[Any]] = field(
        compare=False, repr=False
    )


def compile_expression(node: object, path: str) -> tuple[CompiledExpression | None, list[str]]:
    """Check and compile one R5 ``Expression`` at ``path``: the compiled expression, or None
    and the problems (each naming the element). Pure."""
    if not isinstance(node, Mapping):
        return None, [f"{path}: must be an Expression object"]
    language, text = node.get("language"), node.get("expression")
    if language != FHIRPATH:
        return None, [f"{path}.language: only {FHIRPATH} is supported, not {language!r}"]
    if not isinstance(text, str) or not text.strip():
        return None, [f"{path}.expression: required (a reference alone is not supported)"]
    if len(text) > MAX_EXPRESSION_CHARS:
        return None, [f"{path}.expression: longer than {MAX_EXPRESSION_CHARS} characters"]
    syntax = _syntax_errors(text)
    if syntax:
        return None, [f"{path}.expression: not valid FHIRPath ({syntax})"]
    try:
        ast = parse_ast(text)  # type: ignore[no-untyped-call]  # the library's AST builder
    except Exception:  # noqa: BLE001 - fhirpathpy raises bare Exception; a refusal, not a 500
        return None, [f"{path}.expression: not valid FHIRPath"]
    refused = _refused(ast, 0)
    if refused:
        return None, [f"{path}.expression: {refused}"]
    evaluate = fhirpathpy.compile(text, _MODEL)
    return CompiledExpression(text, evaluate), []


def holds(expression: CompiledExpression, resource: Mapping[str, Any] | None) -> bool | None:
    """``True``/``False`` when ``expression`` evaluates to that single boolean on
    ``resource``, else None (unknown: see the module docstring). Never raises."""
    if resource is None or not _within(resource, MAX_NODES):
        return None
    try:
        result = expression.evaluate(resource, {})
    except Exception:  # noqa: BLE001 - fhirpathpy raises bare Exception: unknown, fail closed
        return None
    if isinstance(result, list) and len(result) == 1 and isinstance(result[0], bool):
        return result[0]
    return None


class _Collect(ErrorListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.errors: list[str] = []

    def syntaxError(  # noqa: N802, PLR0917 - the ANTLR listener's signature
        self, recognizer: object, symbol: object, line: int, column: int, msg: str, e: object
    ) -> None:
        self.errors.append(f"at character {column + 1}")


def _syntax_errors(text: str) -> str | None:
    listener = _Collect()
    lexer = FHIRPathLexer(InputStream(text))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    try:
        parser.entireExpression()  # type: ignore[no-untyped-call]
    except RecursionError:
        return "nests too deep"
    except Exception:  # noqa: BLE001 - ANTLR on input it cannot recover from: a refusal
        return "unparseable"
    return listener.errors[0] if listener.errors else None


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
