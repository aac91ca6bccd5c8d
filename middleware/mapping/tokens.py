"""FHIR search token text: ``[system]|[code]`` values, ``,`` lists and ``$`` composites.

Escaping follows FHIR search (http://hl7.org/fhir/R5/search.html#escaping): ``\\,``, ``\\|``,
``\\$`` and ``\\\\`` stand for the characters themselves. Splitting honours escapes; parts keep
their escapes until :func:`parse_token` removes them, and :func:`format_token` puts them back.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Token", "escape", "format_token", "parse_token", "split", "unescape"]

_SPECIAL = ("\\", ",", "|", "$")


def split(text: str, sep: str) -> list[str]:
    """Split at every ``sep`` not preceded by an escaping backslash; parts stay escaped."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            current.append(char)
            current.append(next(chars, ""))
        elif char == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def escape(text: str) -> str:
    for char in _SPECIAL:
        text = text.replace(char, "\\" + char)
    return text


def unescape(text: str) -> str:
    out: list[str] = []
    chars = iter(text)
    for char in chars:
        out.append(next(chars, "") if char == "\\" else char)
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Token:
    """``system`` None: any system (``code``); ``""``: no system (``|code``). ``code`` ``""``:
    any code of the system (``system|``)."""

    system: str | None
    code: str


def parse_token(text: str) -> Token:
    """Parse one (escaped) token value."""
    parts = split(text, "|")
    if len(parts) == 1:
        return Token(None, unescape(parts[0]))
    return Token(unescape(parts[0]), unescape("|".join(parts[1:])))


def format_token(system: str | None, code: str) -> str:
    """The escaped text of a token; ``system`` None writes the code alone."""
    if system is None:
        return escape(code)
    return f"{escape(system)}|{escape(code)}"
