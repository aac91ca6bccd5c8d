"""Load and validate the R4 <-> R5 conversion rules (``mappings/versions/``) once, at start.

The manifest names one file per resource type and one of datatype steps::

    {"description": "...", "datatypes": "versions/r4-r5/datatypes.json",
     "types": {"Encounter": "versions/r4-r5/Encounter.json", ...}}

A type file holds ``resourceType``, ``steps`` (see :mod:`middleware.mapping.versions.ops` for
the operations), ``statuses`` (status elements and each release's value set), ``required``
(top-level elements a release requires) and ``datatypes`` (where the datatype steps apply).
The format is documented in ``mappings/README.md``. Every problem in every file is collected
and raised as one :class:`~middleware.errors.SettingsError` naming the file and the place.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

from middleware.errors import SettingsError
from middleware.mapping.paths import ElementPath, check
from middleware.mapping.versions.build import COMMON, PARAMS, build
from middleware.mapping.versions.carry import DATATYPES, Release, Spec, parse_spec
from middleware.mapping.versions.consent import Consent
from middleware.mapping.versions.engine import Rules, StatusRule, Step, TypeRules
from middleware.mapping.versions.ops import Carry

__all__ = ["RELEASES", "load_rules"]

RELEASES: Final[tuple[Release, Release]] = ("R4", "R5")
_STEP: Final = re.compile(r"^[a-z][A-Za-z0-9]*\*?$")
_TYPE_KEYS: Final = frozenset(
    {"resourceType", "description", "sources", "steps", "statuses", "required", "datatypes"}
)

#: Reads a path relative to the mappings folder and returns its decoded JSON.
Reader = Callable[[str], Any]


def load_rules(manifest: str, read: Reader) -> Rules:
    """Every rule file ``manifest`` names, validated; one SettingsError lists every problem."""
    problems: list[str] = []
    raw = _read(read, manifest, problems)
    types: dict[str, TypeRules] = {}
    if raw is not None and not _is_object(raw, {"description", "datatypes", "types"}):
        problems.append(f"{manifest}: an object with 'types' and optionally 'datatypes'")
    elif raw is not None:
        datatypes = _datatypes(read, raw.get("datatypes"), problems)
        files = raw.get("types")
        if not isinstance(files, Mapping) or not files:
            problems.append(f"{manifest}: types: {{resourceType: file}} with at least one type")
            files = {}
        for name, path in files.items():
            found = _read(read, path, problems) if isinstance(path, str) else None
            if found is None:
                problems += [] if isinstance(path, str) else [f"{manifest}: types.{name}: a path"]
                continue
            rules = _type_rules(name, path, found, datatypes, problems)
            if rules is not None:
                types[name] = rules
    if problems:
        raise SettingsError(f"invalid conversion rules {manifest}:\n  " + "\n  ".join(problems))
    return Rules(source=manifest, types=types)


def _read(read: Reader, path: str, problems: list[str]) -> Any:
    from middleware.mapping.profile import ReadFailed  # noqa: PLC0415 (profile imports us)

    try:
        return read(path)
    except ReadFailed as exc:
        problems.append(f"{path}: {exc}")
        return None


def _is_object(raw: Any, allowed: set[str] | frozenset[str]) -> bool:
    return isinstance(raw, Mapping) and not set(raw) - set(allowed)


def _datatypes(read: Reader, path: Any, problems: list[str]) -> Mapping[str, list[Any]]:
    if path is None:
        return {}
    raw = _read(read, path, problems) if isinstance(path, str) else None
    if isinstance(path, str) and raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(isinstance(v, list) for v in raw.values()):
        problems.append(f"{path}: {{Datatype: [step, ...]}}")
        return {}
    return {name: [(path, i, step) for i, step in enumerate(steps)] for name, steps in raw.items()}


def _type_rules(
    name: str, file: str, raw: Any, datatypes: Mapping[str, list[Any]], problems: list[str]
) -> TypeRules | None:
    before = len(problems)
    if not _is_object(raw, _TYPE_KEYS) or raw.get("resourceType") != name:
        problems.append(f"{file}: an object for resourceType {name!r} (and nothing unknown)")
        return None
    steps: list[Step] = []
    raw_steps = raw.get("steps", [])
    for i, item in enumerate(raw_steps if isinstance(raw_steps, list) else []):
        step = _step(name, f"{file}: steps[{i}]", item, None, problems)
        if step is not None:
            steps.append(step)
    if not isinstance(raw_steps, list):
        problems.append(f"{file}: steps: a list")
    places = raw.get("datatypes", {})
    for kind, at_list in places.items() if isinstance(places, Mapping) else ():
        if kind not in datatypes or not isinstance(at_list, list):
            problems.append(f"{file}: datatypes.{kind}: not a datatype with steps, or not a list")
            continue
        for at in at_list:
            for dt_file, j, item in datatypes[kind]:
                where = f"{file}: datatypes.{kind} at {at}: {dt_file}: {kind}[{j}]"
                step = _step(name, where, item, at, problems)
                if step is not None:
                    steps.append(step)
    if not isinstance(places, Mapping):
        problems.append(f"{file}: datatypes: {{Datatype: [path, ...]}}")
    _check_order(file, steps, problems)
    statuses = _statuses(name, file, raw.get("statuses", []), problems)
    required = _required(name, file, raw.get("required", {}), problems)
    if len(problems) > before:
        return None
    return TypeRules(name, tuple(steps), statuses, required)


def _path(name: str, raw: Any, where: str, problems: list[str]) -> tuple[str, ...] | None:
    parts = raw.split(".") if isinstance(raw, str) else []
    if not parts or parts[0] != name or not all(_STEP.match(p) for p in parts[1:]):
        problems.append(f"{where}: {raw!r} is not a path starting with {name}")
        return None
    return tuple(parts[1:])


def _step(name: str, where: str, raw: Any, base: Any, problems: list[str]) -> Step | None:
    op_name = raw.get("op") if isinstance(raw, Mapping) else None
    if not isinstance(op_name, str) or op_name not in PARAMS:
        problems.append(f"{where}: op must be one of {', '.join(sorted(PARAMS))}")
        return None
    unknown = set(raw) - COMMON - PARAMS[op_name]
    if unknown:
        problems.append(f"{where}: unknown keys {sorted(unknown)}")
        return None
    at = raw.get("at", "")
    pair = at if isinstance(at, list) and len(at) == 2 else [at, at]
    if base is not None:
        bases = base if isinstance(base, list) and len(base) == 2 else [base, base]
        pair = [f"{b}.{a}" if a else b for b, a in zip(bases, pair, strict=True)]
    paths = [_path(name, p, f"{where}: at", problems) for p in pair]
    keys: dict[Release, dict[str, Spec]] = {}
    for release in RELEASES:
        found = raw.get(release.lower(), {})
        if not isinstance(found, Mapping):
            problems.append(f"{where}: {release.lower()}: {{element: type}}")
            found = {}
        specs = {
            k: parse_spec(v, f"{where}: {release.lower()}.{k}", problems) for k, v in found.items()
        }
        keys[release] = {k: s for k, s in specs.items() if s is not None}
    op_problems: list[str] = []
    op = build(op_name, raw, keys, op_problems)
    problems += [f"{where}: {p}" for p in op_problems]
    modifier, choice, note = raw.get("modifier", False), raw.get("choice"), raw.get("note")
    if (
        not isinstance(modifier, bool)
        or not isinstance(choice, str | None)
        or not isinstance(note, str | None)
    ):
        problems.append(f"{where}: modifier is true/false, choice and note are strings")
        return None
    if op is None or paths[0] is None or paths[1] is None:
        return None
    step = Step(
        origin=where,
        resource_type=name,
        where={"R4": paths[0], "R5": paths[1]},
        keys=keys,
        op=op,
        carry=not isinstance(op, Consent),
        modifier=modifier,
        choice=choice,
        note=note,
    )
    _check_elements(step, problems)
    return step


def _check_elements(step: Step, problems: list[str]) -> None:
    """Every element a step names exists in its release with the stated datatype (fhir.resources'
    R4B models stand for R4: identical for the converted types); an element a step carries has
    no element of that name in the other release."""
    for release in RELEASES:
        other: Release = "R5" if release == "R4" else "R4"
        for key, spec in step.keys[release].items():
            path = _element(step, release, key)
            want = spec.type if spec.type in DATATYPES - {"CodeableReference"} else None
            problem = check(path, release, want=want)
            if problem is not None:
                problems.append(f"{step.origin}: {problem}")
            elif (
                isinstance(step.op, Carry)
                and check(_element(step, other, key), other, want=None) is None
            ):
                problems.append(f"{step.origin}: carries {path}, but {other} has it")


def _element(step: Step, release: Release, key: str) -> ElementPath:
    return ElementPath(step.resource_type, (*(s.rstrip("*") for s in step.where[release]), key))


def _check_order(file: str, steps: list[Step], problems: list[str]) -> None:
    """Outer before inner: a step converting an element runs before every step below it (in
    either release); two steps at one node (in both releases) never share an element."""
    for j, inner in enumerate(steps):
        for outer in steps[:j]:
            same_node = all(outer.where[r] == inner.where[r] for r in RELEASES)
            shared = {r: set(outer.keys[r]) & set(inner.keys[r]) for r in RELEASES}
            if same_node and any(shared.values()):
                problems.append(
                    f"{inner.origin}: converts {sorted(set().union(*shared.values()))} again"
                )
        for outer in steps[j + 1 :]:
            if any(_above(outer, inner, r) for r in RELEASES):
                problems.append(
                    f"{inner.origin}: must come after {outer.origin}, which is above it"
                )


def _above(outer: Step, inner: Step, release: Release) -> bool:
    a, b = outer.where[release], inner.where[release]
    return len(a) < len(b) and b[: len(a)] == a and b[len(a)].rstrip("*") in outer.keys[release]


def _statuses(name: str, file: str, raw: Any, problems: list[str]) -> tuple[StatusRule, ...]:
    out: list[StatusRule] = []
    for i, item in enumerate(raw if isinstance(raw, list) else [None]):
        where = f"{file}: statuses[{i}]"
        if not _is_object(item, {"path", "system", "R4", "R5"}) or not {"path", "R4", "R5"} <= set(
            item
        ):
            problems.append(f"{where}: needs path, R4 and R5 (and optionally system)")
            continue
        path = _path(name, item["path"], where, problems)
        codes = {r: item[r] for r in RELEASES}
        if not all(
            isinstance(c, list) and all(isinstance(x, str) for x in c) for c in codes.values()
        ):
            problems.append(f"{where}: R4 and R5 are lists of codes")
            continue
        system = item.get("system")
        if path is None or not isinstance(system, str | None):
            continue
        out.append(StatusRule(path, system, {r: frozenset(c) for r, c in codes.items()}))
    return tuple(out)


def _required(
    name: str, file: str, raw: Any, problems: list[str]
) -> Mapping[Release, tuple[tuple[str, ...], ...]]:
    if not _is_object(raw, set(RELEASES)) or not all(isinstance(v, list) for v in raw.values()):
        problems.append(f"{file}: required: {{'R4': [path, ...], 'R5': [...]}}")
        return {}
    out: dict[Release, tuple[tuple[str, ...], ...]] = {}
    for release in RELEASES:
        found: list[tuple[str, ...]] = []
        for text in raw.get(release, []):
            choice = isinstance(text, str) and text.endswith("[x]")
            path = _path(name, text[:-3] if choice else text, f"{file}: required", problems)
            if path:
                found.append((*path[:-1], path[-1] + "[x]") if choice else path)
        out[release] = tuple(found)
    return out
