"""Per-upstream mapping profiles: what is mapped, where, how strictly. Validated once, at start.

:func:`build_profile` is pure: it reads the files a profile names through an injected
``read`` callable. Every fault in the profile, in a ConceptMap it pins or in its identifier table is
collected and raised as one :class:`~middleware.errors.SettingsError` naming the file and the
location, so a bad mapping stops the gateway and never fails a request. The format is
documented in ``mappings/README.md``; :mod:`middleware.mapping.loader` reads the files.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, cast, get_args

from middleware.errors import SettingsError
from middleware.mapping.conceptmap import ConceptMap, InvalidConceptMap, parse_conceptmap
from middleware.mapping.identifiers import AliasTable, parse_aliases
from middleware.mapping.index import Index, InvalidMapSet, Irreversible, build
from middleware.mapping.model import Operation, Relationship
from middleware.mapping.paths import ElementPath
from middleware.mapping.policy import BindingSpec, UnmappedPolicy, parse_binding
from middleware.mapping.versions import Conversion, load_conversion, release_of

__all__ = [
    "Binding",
    "Profile",
    "ReadFailed",
    "Reader",
    "UnmappedPolicy",
    "build_profile",
]

FhirVersion = Literal["R4", "R4B", "R5"]
_VERSIONS: Final = frozenset(get_args(FhirVersion))
_KEYS: Final = frozenset(
    {"id", "description", "upstream", "fhir", "strict", "conceptmaps", "identifiers", "search"}
    | {"conversion", "patients", "golden"}
)
_ID: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


class ReadFailed(Exception):
    """A file a profile names cannot be read or is not JSON; the message says why."""


#: Reads a path relative to the mappings folder and returns its decoded JSON.
Reader = Callable[[str], Any]


@dataclass(frozen=True, slots=True)
class Binding:
    """One pinned ConceptMap and where and how it applies (see :class:`BindingSpec`).

    ``to_client`` translates upstream codes for answers; ``to_upstream`` translates client
    codes for searches and writes. Which of the map's directions each is depends on
    ``spec.side``, the side the map's *source* codes belong to.
    """

    spec: BindingSpec
    to_client: Index
    to_upstream: Index
    irreversible: tuple[Irreversible, ...]

    @property
    def canonical(self) -> str:
        return self.spec.canonical

    def index(self, operation: Operation) -> Index:
        return self.to_client if operation == "response" else self.to_upstream

    def auto(self, operation: Operation) -> frozenset[Relationship]:
        return self.spec.auto[operation]

    def unmapped(self, operation: Operation) -> UnmappedPolicy:
        return self.spec.unmapped[operation]


@dataclass(frozen=True, slots=True)
class Profile:
    """A validated profile with its ConceptMaps indexed; immutable, shared by every request.

    ``conversion`` is the R4 <-> R5 conversion (:mod:`.versions`), present when the client
    and upstream versions differ or the profile configures one; ``patients`` is kept as read
    for the id resolver (:mod:`.ids_table`), which validates it.
    """

    id: str
    upstream: str
    client_version: FhirVersion
    upstream_version: FhirVersion
    strict: bool
    modifiers: Literal["pass", "reject"]
    bindings: tuple[Binding, ...]
    identifiers: AliasTable
    elements: Mapping[str, tuple[tuple[Binding, ElementPath], ...]]
    search: Mapping[str, Mapping[str, tuple[Binding, ...]]]
    conversion: Conversion | None
    patients: Mapping[str, Any]
    golden: str | None
    warnings: tuple[str, ...]


def build_profile(raw: Any, *, name: str, read: Reader) -> Profile:
    """Validate ``raw`` (the profile JSON; ``name`` is its file, for messages) and everything it
    names. Raises one :class:`SettingsError` listing every problem."""
    problems: list[str] = []
    if not isinstance(raw, Mapping):
        raise SettingsError(f"{name}: a mapping profile must be a JSON object")
    problems += [f"unknown key {k!r}" for k in sorted(set(raw) - _KEYS)]
    pid = raw.get("id")
    if not isinstance(pid, str) or not _ID.match(pid):
        problems.append("id: required, lowercase letters, digits and '-'")
    elif Path(name).stem != pid:
        problems.append(f"id: {pid!r} must match the file name ({Path(name).name})")
    if not isinstance(raw.get("upstream"), str) or not raw["upstream"]:
        problems.append("upstream: required, the upstream this profile is for")
    fhir = raw.get("fhir")
    if not (isinstance(fhir, Mapping) and set(fhir) == {"client", "upstream"}):
        problems.append("fhir: required, {'client': version, 'upstream': version}")
        fhir = {"client": "R4", "upstream": "R4"}
    for side in ("client", "upstream"):
        if fhir.get(side) not in _VERSIONS:
            problems.append(f"fhir.{side}: {fhir.get(side)!r} is not R4, R4B or R5")
    strict = raw.get("strict", True)
    if not isinstance(strict, bool):
        problems.append("strict: must be true or false")
    search = raw.get("search", {})
    modifiers = search.get("modifiers", "reject") if isinstance(search, Mapping) else None
    if not isinstance(search, Mapping) or set(search) - {"modifiers"}:
        problems.append("search: may only hold 'modifiers'")
    if modifiers not in ("pass", "reject"):
        problems.append(f"search.modifiers: {modifiers!r} is not 'pass' or 'reject'")
    if not isinstance(raw.get("patients", {}), Mapping):
        problems.append("patients: must be an object (the id resolver settings)")
    conversion: Conversion | None = None
    section = raw.get("conversion", {})
    client, upstream = release_of(str(fhir.get("client"))), release_of(str(fhir.get("upstream")))
    if section or (client and upstream and client != upstream):
        try:
            conversion = load_conversion(section, read)
        except SettingsError as exc:
            problems.append(str(exc))
    for key in ("golden", "identifiers"):
        if not isinstance(raw.get(key, ""), str):
            problems.append(f"{key}: must be a path below the mappings folder")
    versions = tuple(dict.fromkeys(str(fhir.get(s)) for s in ("client", "upstream")))
    specs = _specs(raw.get("conceptmaps", []), versions, problems)
    maps = _conceptmaps(specs, read, problems)
    aliases = AliasTable()
    table = _read(read, raw["identifiers"], problems) if raw.get("identifiers") else None
    if table is not None:
        alias_problems: list[str] = []
        aliases = parse_aliases(table, alias_problems)
        problems += [f"{raw['identifiers']}: {p}" for p in alias_problems]
    bindings: tuple[Binding, ...] = ()
    if not problems:
        bindings = _bindings(specs, maps, problems)
    if problems:
        raise SettingsError(f"invalid mapping profile {name}:\n  " + "\n  ".join(problems))
    return Profile(
        id=cast(str, pid),
        upstream=raw["upstream"],
        client_version=fhir["client"],
        upstream_version=fhir["upstream"],
        strict=strict,
        modifiers=cast(Literal["pass", "reject"], modifiers),
        bindings=bindings,
        identifiers=aliases,
        elements=_by_type(bindings),
        search=_search_by_type(bindings),
        conversion=conversion,
        patients=MappingProxyType(dict(raw.get("patients", {}))),
        golden=raw.get("golden") or None,
        warnings=tuple(f"{name}: {item}" for b in bindings for item in b.irreversible),
    )


def _specs(raw: Any, versions: tuple[str, ...], problems: list[str]) -> list[BindingSpec]:
    if not isinstance(raw, list):
        problems.append("conceptmaps: must be a list")
        return []
    specs = []
    for i, item in enumerate(raw):
        spec = parse_binding(item, f"conceptmaps[{i}]", versions, problems)
        if spec is not None:
            specs.append(spec)
    pinned = [s.canonical for s in specs]
    problems += [
        f"conceptmaps: {c} is pinned twice" for c in sorted(set(pinned)) if pinned.count(c) > 1
    ]
    return specs


def _conceptmaps(specs: list[BindingSpec], read: Reader, problems: list[str]) -> list[ConceptMap]:
    maps = []
    for spec in specs:
        raw = _read(read, spec.file, problems)
        if raw is None:
            continue
        try:
            cm = parse_conceptmap(raw)
        except InvalidConceptMap as exc:
            problems += [f"{spec.file}: {p}" for p in exc.problems]
            continue
        if cm.canonical != spec.canonical:
            problems.append(
                f"{spec.file}: holds {cm.canonical}, but the profile pins {spec.canonical}"
            )
            continue
        maps.append(cm)
    return maps


def _bindings(
    specs: list[BindingSpec], maps: list[ConceptMap], problems: list[str]
) -> tuple[Binding, ...]:
    try:
        indexes = build(maps)
    except InvalidMapSet as exc:
        problems += list(exc.problems)
        return ()
    used = {
        cm.canonical: {a.attribute for e in cm.entries for a in (*e.depends_on, *e.product)}
        for cm in maps
    }
    out = []
    for spec in specs:
        forward, reverse = indexes.forward[spec.canonical], indexes.reverse[spec.canonical]
        to_client, to_upstream = (
            (forward, reverse) if spec.side == "upstream" else (reverse, forward)
        )
        missing = sorted(used[spec.canonical] - set(spec.attributes))
        if spec.elements and missing:
            problems.append(
                f"{spec.canonical}: its dependsOn/product use {', '.join(missing)}; "
                "say in 'attributes' where each is read"
            )
        out.append(Binding(spec, to_client, to_upstream, indexes.irreversible[spec.canonical]))
    _overlaps(out, problems)
    return tuple(out)


def _overlaps(bindings: list[Binding], problems: list[str]) -> None:
    """Two maps translating the same system in the same element would race: refuse."""
    seen: dict[tuple[str, str, str], str] = {}
    for binding in bindings:
        for path in binding.spec.elements:
            for side, index in (("upstream", binding.to_client), ("client", binding.to_upstream)):
                for system in index.source_systems:
                    key = (str(path), side, system)
                    if key in seen and seen[key] != binding.canonical:
                        other = seen[key]
                        problems.append(
                            f"{path}: {system} is translated by {other} and {binding.canonical}"
                        )
                    seen.setdefault(key, binding.canonical)


def _by_type(
    bindings: tuple[Binding, ...],
) -> Mapping[str, tuple[tuple[Binding, ElementPath], ...]]:
    out: dict[str, tuple[tuple[Binding, ElementPath], ...]] = defaultdict(tuple)
    for binding in bindings:
        for path in binding.spec.elements:
            out[path.resource_type] += ((binding, path),)
    return MappingProxyType(dict(out))


def _search_by_type(
    bindings: tuple[Binding, ...],
) -> Mapping[str, Mapping[str, tuple[Binding, ...]]]:
    out: dict[str, dict[str, tuple[Binding, ...]]] = defaultdict(lambda: defaultdict(tuple))
    for binding in bindings:
        for kind, param in binding.spec.search:
            out[kind][param] += (binding,)
    return MappingProxyType({k: MappingProxyType(dict(v)) for k, v in out.items()})


def _read(read: Reader, path: str, problems: list[str]) -> Any:
    try:
        return read(path)
    except ReadFailed as exc:
        problems.append(f"{path}: {exc}")
        return None
