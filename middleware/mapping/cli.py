"""``consentry mappings check|explain``: lint the mapping files, and show what a profile does.

    consentry mappings check [--mappings DIR]
    consentry mappings explain --profile ID (--resource FILE [--operation response|write]
                                             | --search 'Type?name=value&...') [--mappings DIR]

``--resource -`` reads the resource from standard input.

``check`` loads every profile of ``DIR/profiles`` (default ``./mappings``) with everything it
names, validates the ``patients`` sections and their id tables, runs every golden case, and
lints what loading accepts but a write-back would get wrong: it prints one line per problem and
exits 1, or prints a summary and exits 0. Problems: any load error (duplicate keys, pins or
mappings; ``other-map`` cycles; a map that does not hold the pinned ``url|version``...), an
``other-map`` not pinned to a version, two profiles for one upstream, a failing golden case, a
golden folder no profile names, and a non-invertible entry *used for write-back* (its reverse
relationship is applied automatically on writes, or its target has several sources that a
non-strict profile's write would not translate). Irreversible entries that writes do not use,
and ConceptMap files no profile pins, are warnings (standard error; they do not fail).

``explain`` runs the profile on a resource (an upstream answer, or a client's write) or on a
search and prints each rule applied, one line each: the element or parameter, the code and
its translation, the relationship, the ConceptMap ``url|version`` and the file and line of the
ConceptMap element (or of the identifier alias); then the notes and the result. Exit 0, or 1
when the profile refuses the input (the HTTP status is printed), 2 when it could not run. The
HTTP dry-run of issue #6 is not implemented: run ``explain`` on a saved request or answer.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO, cast
from urllib.parse import parse_qsl

import msgspec

from middleware.errors import GatewayError, SettingsError
from middleware.fhir import jsoncodec
from middleware.mapping.golden import load_cases, run_golden
from middleware.mapping.ids_table import parse_id_tables
from middleware.mapping.index import Index, Irreversible
from middleware.mapping.loader import folder_reader, load_profile
from middleware.mapping.model import MARKER_URL, Operation, Relationship, Target, inverse
from middleware.mapping.paths import nodes
from middleware.mapping.profile import Binding, Profile
from middleware.mapping.resource import is_added, map_response, prepare_write
from middleware.mapping.search import map_search
from middleware.mapping.tokens import parse_token, split
from middleware.mapping.translate import translate

__all__ = [
    "Rule",
    "check",
    "explain_resource",
    "explain_search",
    "lint",
    "register",
    "run_command",
]

_PREFIX: Final = "invalid mapping profile "
_SUMMARIES: Final = {
    "check": "lint the mapping files and run the golden cases",
    "explain": "show each mapping rule applied to a resource or a search",
}
_DESCRIPTIONS: Final = {
    "check": "Lint the mapping files and run the golden cases; exit 1 on any problem.",
    "explain": "Print each mapping rule applied to a resource or a search, with file and line.",
}


class _Usage(Exception):
    """The command cannot run (exit status 2)."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``mappings`` and its subcommands to ``commands`` (the subparsers of ``consentry``);
    each subcommand sets ``run(args, out) -> status``."""
    about = "Lint the mapping files, or explain what a mapping profile does."
    mappings = commands.add_parser(
        "mappings", help="lint the mapping files, or explain a mapping", description=about
    )
    actions = mappings.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for action, description in _DESCRIPTIONS.items():
        sub = actions.add_parser(action, help=_SUMMARIES[action], description=description)
        _arguments(sub, action)
        sub.set_defaults(run=functools.partial(_run, action))


def run_command(action: str, argv: Sequence[str], *, stdout: TextIO | None = None) -> int:
    """Run ``consentry mappings <action> <argv>``; return the exit status."""
    parser = argparse.ArgumentParser(
        prog=f"consentry mappings {action}", description=_DESCRIPTIONS[action]
    )
    _arguments(parser, action)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse has printed the usage message
        return exc.code if isinstance(exc.code, int) else 2
    return _run(action, args, stdout or sys.stdout)


def _arguments(parser: argparse.ArgumentParser, action: str) -> None:
    parser.add_argument(
        "--mappings",
        type=Path,
        default=Path("mappings"),
        help="the mappings folder, holding profiles/ (default ./mappings)",
    )
    if action == "explain":
        parser.add_argument("--profile", required=True, help="profile id (profiles/ID.json)")
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument(
            "--resource",
            type=Path,
            metavar="FILE",
            help="path of a file holding a JSON resource or Bundle (- reads stdin)",
        )
        source.add_argument("--search", help="'Type?name=value&...' as a client sends it")
        parser.add_argument(
            "--operation",
            choices=("response", "write"),
            default="response",
            help="map --resource as the upstream's answer (response, the default) or as a "
            "client's write",
        )


def _run(action: str, args: argparse.Namespace, out: TextIO) -> int:
    try:
        if action == "check":
            return check(args.mappings, out)
        return _explain(args, out)
    except (_Usage, SettingsError, OSError, ValueError) as exc:
        print(f"consentry mappings {action}: {exc}", file=sys.stderr)
        return 2


# -- check --------------------------------------------------------------------------------------


def check(root: Path, out: TextIO) -> int:
    """Lint ``root`` (see the module docstring); 0 when clean, 1 when a problem was printed."""
    files = sorted((root / "profiles").glob("*.json"))
    problems = [] if files else [f"{root / 'profiles'}: holds no profiles"]
    profiles: list[Profile] = []
    for path in files:
        try:
            profiles.append(load_profile(path, root=root))
        except SettingsError as exc:
            problems += _settings_lines(str(exc))
    found, warnings = lint(profiles, root)
    problems += found
    problems += [
        f"{root}: {p}" for p in parse_id_tables(profiles, folder_reader(root.resolve()))[1]
    ]
    cases = 0
    for profile in profiles:
        try:
            problems += [f"{root / str(profile.golden)}: {f}" for f in run_golden(profile, root)]
            cases += len(load_cases(root / profile.golden)) if profile.golden else 0
        except ValueError as exc:
            problems.append(f"{root / str(profile.golden)}: {exc}")
    named = {(root / p.golden).resolve() for p in profiles if p.golden}
    for folder in sorted(p for p in (root / "golden").glob("*") if p.is_dir()):
        if folder.resolve() not in named and not _failed_profile_named(folder, files):
            problems.append(f"{folder}: no profile names this golden folder")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for problem in problems:
        out.write(problem + "\n")
    if problems:
        return 1
    out.write(f"ok: {len(profiles)} profiles, {cases} golden cases, {len(warnings)} warnings\n")
    return 0


def _failed_profile_named(folder: Path, files: Sequence[Path]) -> bool:
    """True when a profile that failed to load is named like ``folder`` (already reported)."""
    return any(f.stem == folder.name for f in files)


def lint(profiles: Sequence[Profile], root: Path) -> tuple[list[str], list[str]]:
    """``(problems, warnings)`` beyond what loading checks (see the module docstring)."""
    problems: list[str] = []
    warnings: list[str] = []
    by_upstream: dict[str, str] = {}
    pinned: set[Path] = set()
    for profile in profiles:
        where = root / "profiles" / f"{profile.id}.json"
        other = by_upstream.setdefault(profile.upstream, profile.id)
        if other != profile.id:
            problems.append(f"{where}: upstream {profile.upstream} also has profile {other}")
        for binding in profile.bindings:
            pinned.add((root / binding.spec.file).resolve())
            forward = binding.to_client if binding.spec.side == "upstream" else binding.to_upstream
            for fallbacks in forward.fallbacks.values():
                for fallback in fallbacks:
                    ref = fallback.rule.other_map
                    if ref is not None and "|" not in ref:
                        problems.append(
                            f"{root / binding.spec.file}: other-map {ref} is not pinned to a "
                            "version (write url|version)"
                        )
            for item in binding.irreversible:
                if _used_for_write_back(profile, binding, item):
                    problems.append(f"{where}: used for write-back: {item}")
                else:
                    warnings.append(f"{where}: {item}")
    for path in sorted((root / "conceptmaps").glob("*.json")):
        if path.resolve() not in pinned:
            warnings.append(f"{path}: no profile pins this ConceptMap")
    return problems, warnings


def _used_for_write_back(profile: Profile, binding: Binding, item: Irreversible) -> bool:
    """Whether a write translates through this irreversible entry's reverse unattended."""
    index = binding.to_upstream
    if not binding.spec.elements or index.direction != "reverse":
        return False  # not used on writes, or writes use the map forward (faithfully)
    auto = binding.auto("write")
    if item.kind == "not-equivalent":
        return inverse(cast(Relationship, item.relationship)) in auto
    found = translate(index, item.target.system, item.target.code, auto=auto, context={})
    return found.status == "ambiguous" and not profile.strict  # strict writes are refused


def _settings_lines(message: str) -> list[str]:
    head, *rest = message.split("\n")
    if not rest:
        return [message.removeprefix(_PREFIX)]
    name = head.removeprefix(_PREFIX).removesuffix(":")
    return [f"{name}: {line.strip()}" for line in rest]


# -- explain ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule applied: ``where`` (element or parameter), ``source`` -> ``target``."""

    where: str
    source: str
    target: str
    relationship: str
    conceptmap: str
    location: str

    def __str__(self) -> str:
        by = f"by {self.conceptmap} " if self.conceptmap else ""
        rule = f"{self.source} -> {self.target} ({self.relationship})"
        return f"{self.where}: {rule} {by}at {self.location}"


def _explain(args: argparse.Namespace, out: TextIO) -> int:
    root: Path = args.mappings
    path = root / "profiles" / f"{args.profile}.json"
    if not path.is_file():
        raise _Usage(f"no profile {args.profile!r} in {root / 'profiles'}")
    profile = load_profile(path, root=root)
    files = _Files(root)
    result: Any
    try:
        if args.search is not None:
            kind, _, query = str(args.search).partition("?")
            params = parse_qsl(query, keep_blank_values=True)
            rules = explain_search(profile, kind, params, files)
            mapped = map_search(kind, params, profile)
            result, notes = [list(p) for p in mapped.params], list(mapped.notes)
        else:
            source: Path = args.resource
            raw = sys.stdin.buffer.read() if str(source) == "-" else source.read_bytes()
            resource = jsoncodec.decode(raw)
            run = map_response if args.operation == "response" else prepare_write
            done = run(resource, profile)
            rules = explain_resource(profile, args.operation, resource, done.resource, files)
            result = done.resource
            notes = [f"{n.element}: {n.source} {n.status or ''}: {n.detail}" for n in done.notes]
    except GatewayError as exc:
        out.write(f"refused: {exc.status} {exc.diagnostics}\n")
        return 1
    except jsoncodec.DecodeError as exc:
        raise _Usage(f"{args.resource}: not JSON: {exc}") from exc
    for rule in rules:
        out.write(f"{rule}\n")
    if not rules:
        out.write("no rule applied\n")
    for note in notes:
        out.write(f"note: {note}\n")
    out.write("result:\n" + msgspec.json.format(jsoncodec.encode(result), indent=2).decode() + "\n")
    return 0


def explain_resource(
    profile: Profile, operation: Operation, before: Any, after: Any, files: _Files
) -> list[Rule]:
    """The rules that turned ``before`` into ``after``: identifier aliases, then each coding
    the mapping added, traced to the ConceptMap entry (or policy) that produced it."""
    toward = "client" if operation == "response" else "upstream"
    rules = _identifier_rules(profile, _identifier_systems(before), toward, files)
    for resource in _resources(after):
        kind = resource.get("resourceType")
        by_path: dict[str, list[tuple[Binding, tuple[str, ...]]]] = {}
        for binding, path in profile.elements.get(kind, ()) if isinstance(kind, str) else ():
            by_path.setdefault(str(path), []).append((binding, path.steps))
        for where, bound in by_path.items():
            for cc in nodes(resource, bound[0][1]):
                codings = cc.get("coding") if isinstance(cc, dict) else None
                if isinstance(codings, list):
                    rules += _coding_rules(
                        profile, operation, where=where, bound=bound, codings=codings, files=files
                    )
    return rules


def explain_search(
    profile: Profile, resource_type: str, params: Sequence[tuple[str, str]], files: _Files
) -> list[Rule]:
    """The translations :func:`~middleware.mapping.search.map_search` ORs into each bound
    token parameter, and the identifier systems it renames."""
    rules: list[Rule] = []
    bound = profile.search.get(resource_type, {})
    for name, value in params:
        base, _, modifier = name.partition(":")
        if base.rsplit(".", 1)[-1] == "identifier" or modifier.endswith("identifier"):
            systems = {parse_token(p).system or "" for p in split(value, ",")}
            rules += _identifier_rules(profile, systems, "upstream", files, where=name)
        for binding in bound.get(base, ()) if not modifier else ():
            for part in split(value, ","):
                token = parse_token(split(part, "$")[0])
                if not token.system or not token.code:
                    continue
                index = binding.to_upstream
                auto = binding.auto("search")
                found = translate(index, token.system, token.code, auto=auto, context=None)
                source = f"{token.system}|{token.code}"
                rules += [
                    _rule(
                        name, source, t, index=index, binding=binding, profile=profile, files=files
                    )
                    for t in found.targets
                ]
    return rules


def _coding_rules(
    profile: Profile,
    operation: Operation,
    *,
    where: str,
    bound: list[tuple[Binding, tuple[str, ...]]],
    codings: list[Any],
    files: _Files,
) -> list[Rule]:
    originals = [c for c in codings if isinstance(c, dict) and not is_added(c)]
    rules: list[Rule] = []
    for added in (c for c in codings if is_added(c)):
        [marker] = [e for e in added["extension"] if e.get("url") == MARKER_URL]
        parts = {e.get("url"): e for e in marker.get("extension", []) if isinstance(e, dict)}
        conceptmap = parts.get("conceptmap", {}).get("valueCanonical", "")
        key = (added.get("system"), added.get("code"))
        target = f"{key[0]}|{key[1]}"
        for binding, _ in bound:
            index = binding.index(operation)
            hit = next(
                (
                    (f"{o.get('system')}|{o.get('code')}", t)
                    for o in originals
                    for t in index.lookup(str(o.get("system")), str(o.get("code"))).targets
                    if t.concept.key == key and t.conceptmap == conceptmap
                ),
                None,
            )
            if hit is not None:
                rules.append(
                    _rule(
                        where,
                        hit[0],
                        hit[1],
                        index=index,
                        binding=binding,
                        profile=profile,
                        files=files,
                    )
                )
                break
            policy = binding.unmapped(operation)
            if policy.coding is not None and policy.coding.key == key:
                location = files.policy(profile, binding.canonical)
                relationship = str(policy.relationship)
                rules.append(Rule(where, "(unmapped)", target, relationship, conceptmap, location))
                break
    return rules


def _rule(
    where: str,
    source: str,
    target: Target,
    *,
    index: Index,
    binding: Binding,
    profile: Profile,
    files: _Files,
) -> Rule:
    """A rule for ``target`` reached from ``source``, located in the file of its map."""
    system, _, code = source.partition("|")
    file = next((b.spec.file for b in profile.bindings if b.canonical == target.conceptmap), None)
    if file is None:  # pragma: no cover - every map a target names is pinned
        file = binding.spec.file
    forward = index.direction == "forward" or target.conceptmap != index.conceptmap
    pair = ((system, code), target.concept.key) if forward else (target.concept.key, (system, code))
    location = files.conceptmap(file, pair[0], pair[1], target.via)
    return Rule(
        where, source, str(target.concept), target.relationship, target.conceptmap, location
    )


def _identifier_rules(
    profile: Profile, systems: set[str], toward: str, files: _Files, *, where: str = "identifier"
) -> list[Rule]:
    table = profile.identifiers.to_client if toward == "client" else profile.identifiers.to_upstream
    side = "upstream" if toward == "client" else "client"
    rules = []
    for system in sorted(s for s in systems if s in table):
        location = files.alias(profile, side, system)
        rules.append(Rule(where, system, table[system], "identifier alias", "", location))
    return rules


def _identifier_systems(node: Any, under: bool = False) -> set[str]:
    found: set[str] = set()
    if isinstance(node, list):
        for item in node:
            found |= _identifier_systems(item, under)
    elif isinstance(node, dict):
        if under and isinstance(node.get("system"), str):
            found.add(node["system"])
        for key, value in node.items():
            if isinstance(value, dict | list):
                found |= _identifier_systems(value, key == "identifier")
    return found


def _resources(resource: Any) -> Iterator[dict[str, Any]]:
    """``resource``, its contained resources and Bundle entries, as the mapping reaches them."""
    if not isinstance(resource, dict):
        return
    yield resource
    for key, inner in (("contained", None), ("entry", "resource")):
        for item in resource.get(key) or () if isinstance(resource.get(key), list) else ():
            yield from _resources(item if inner is None else (item or {}).get(inner))


def _profile_file(profile: Profile) -> str:
    return f"profiles/{profile.id}.json"


# -- locating elements in files -----------------------------------------------------------------


class _Files:
    """Files of the mappings folder parsed with the line of every object key, cached."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._parsed: dict[str, Any] = {}

    def parsed(self, relative: str) -> Any:
        if relative not in self._parsed:
            text = (self.root / relative).read_text(encoding="utf-8")
            self._parsed[relative] = _LineParser(text).document()
        return self._parsed[relative]

    def at(self, relative: str, line: int | None) -> str:
        return f"{self.root / relative}:{line if line is not None else '?'}"

    def policy(self, profile: Profile, canonical: str) -> str:
        """The line of the ``unmapped`` policy of the profile's binding of ``canonical``."""
        relative = _profile_file(profile)
        for entry in _items(self.parsed(relative).get("conceptmaps")):
            if entry.get("canonical") == canonical:
                return self.at(relative, entry.lines.get("unmapped", entry.lines["canonical"]))
        return self.at(relative, None)  # pragma: no cover - the profile pins it

    def conceptmap(
        self, relative: str, source: tuple[str, str], target: tuple[str, str], via: str
    ) -> str:
        """The line of ``source``'s element (whose target is ``target``), or of the group's
        ``unmapped`` for a target reached through it."""
        for group in _items(self.parsed(relative).get("group")):
            systems = (str(group.get("source")), str(group.get("target")))
            if tuple(s.split("|")[0] for s in systems) != (source[0], target[0]):
                continue
            if via != "element" and "unmapped" in group:
                return self.at(relative, group.lines["unmapped"])
            for element in _items(group.get("element")):
                targets = [t.get("code") for t in _items(element.get("target"))]
                if element.get("code") == source[1] and target[1] in targets:
                    return self.at(relative, element.lines.get("code"))
        return self.at(relative, None)

    def alias(self, profile: Profile, side: str, system: str) -> str:
        relative = _identifiers_file(self.root, profile)
        if relative is None:  # pragma: no cover - aliases come from the file
            return "?"
        for entry in _items(self.parsed(relative).get("aliases")):
            if entry.get(side) == system:
                return self.at(relative, entry.lines.get(side))
        return self.at(relative, None)


def _identifiers_file(root: Path, profile: Profile) -> str | None:
    raw = json.loads((root / _profile_file(profile)).read_text(encoding="utf-8"))
    value = raw.get("identifiers") if isinstance(raw, dict) else None
    return value if isinstance(value, str) else None


def _items(node: Any) -> list[_Object]:
    items = node if isinstance(node, list) else [node]
    return [item for item in items if isinstance(item, _Object)]


class _Object(dict[str, Any]):
    """A JSON object that knows the line of each of its keys."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: dict[str, int] = {}


class _LineParser:
    """A small JSON parser recording key lines (the loader has validated the files)."""

    _SPACE: Final = re.compile(r"[ \t\n\r]*")
    _SCALAR: Final = re.compile(r'"(?:[^"\\]|\\.)*"|-?[0-9][0-9.eE+-]*|true|false|null')

    def __init__(self, text: str) -> None:
        self.text = text

    def document(self) -> Any:
        value, _ = self.value(0)
        return value

    def skip(self, pos: int) -> int:
        match = self._SPACE.match(self.text, pos)
        return match.end() if match else pos

    def value(self, pos: int) -> tuple[Any, int]:
        pos = self.skip(pos)
        char = self.text[pos : pos + 1]
        if char == "{":
            return self.members(pos + 1)
        if char == "[":
            items: list[Any] = []
            pos = self.skip(pos + 1)
            while self.text[pos] != "]":
                item, pos = self.value(pos)
                items.append(item)
                pos = self.skip(pos)
                pos = self.skip(pos + 1) if self.text[pos] == "," else pos
            return items, pos + 1
        match = self._SCALAR.match(self.text, pos)
        if match is None:
            raise ValueError(f"not JSON at character {pos}")
        return json.loads(match.group()), match.end()

    def members(self, pos: int) -> tuple[_Object, int]:
        out = _Object()
        pos = self.skip(pos)
        while self.text[pos] != "}":
            line = self.text.count("\n", 0, pos) + 1
            key, pos = self.value(pos)
            value, pos = self.value(self.skip(pos) + 1)  # past the ':'
            out[str(key)] = value
            out.lines[str(key)] = line
            pos = self.skip(pos)
            pos = self.skip(pos + 1) if self.text[pos] == "," else pos
        return out, pos + 1
