"""FHIRPath text to fhirpathpy's AST, in one ANTLR parse, and cheap measures of it. Pure.

Library: ``fhirpathpy`` (its ANTLR grammar and AST builder). Its own ``parse`` ignores syntax
errors, so :func:`parse` collects them and refuses; :func:`brackets` is a linear lexical
measure checked before parsing, since ANTLR's time grows with the square of the nesting.
Used by :mod:`middleware.consent.expression`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from antlr4 import CommonTokenStream, InputStream
from antlr4.error.ErrorListener import ErrorListener
from antlr4.tree.Tree import ParseTreeWalker
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

__all__ = ["brackets", "parse", "size"]


class _Collect(ErrorListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.errors: list[str] = []

    def syntaxError(  # noqa: N802, PLR0917 - the ANTLR listener's signature
        self, recognizer: object, symbol: object, line: int, column: int, msg: str, e: object
    ) -> None:
        self.errors.append(f"at character {column + 1}")


def parse(text: str) -> tuple[dict[str, Any] | None, str]:
    """The fhirpathpy AST of ``text``, or None and why. One ANTLR parse: the whole text must
    match ``entireExpression`` (fhirpathpy's own ``parse`` ignores syntax errors), and the
    tree is walked with the library's AST builder (what ``fhirpathpy.parser.parse`` does)."""
    listener = _Collect()
    lexer = FHIRPathLexer(InputStream(text))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    try:
        tree = parser.entireExpression()  # type: ignore[no-untyped-call]
        if listener.errors:
            return None, listener.errors[0]
        builder = ASTPathListener()  # type: ignore[no-untyped-call]
        ParseTreeWalker().walk(builder, tree.expression())
        ast: dict[str, Any] = builder.parentStack[0]
    except RecursionError:
        return None, "nests too deep"
    except Exception:  # noqa: BLE001 - ANTLR or fhirpathpy on input they cannot take: refused
        return None, "unparseable"
    return ast, ""


def brackets(text: str) -> int:
    """The deepest nesting of ``(``, ``[`` and ``{`` in ``text`` outside quoted strings and
    delimited identifiers (FHIRPath single quotes and backticks, backslash escapes). A lexical
    scan, linear; what it cannot tell apart is left to the parser."""
    deepest = depth = 0
    quote: str | None = None
    escaped = False
    for char in text:
        if quote is not None:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "'`":
            quote = char
        elif char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    return deepest


def size(node: Mapping[str, Any]) -> int:
    """The AST nodes under ``node`` (call it on an AST whose depth is bounded)."""
    return 1 + sum(size(c) for c in node.get("children", ()) if isinstance(c, Mapping))
