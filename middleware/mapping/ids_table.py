"""Configured id cross-references, and the resolver a set of profiles asks for.

A profile's ``patients`` section chooses how the ids of its upstream reach clients::

    "patients": {}                                      # the default: the upstream's own ids
    "patients": {"resolver": "opaque"}                  # (or the section left out)
    "patients": {"resolver": "table", "file": "identifiers/hospital-a-ids.json",
                 "unlisted": "opaque"}                  # or "reject"

A table file lists pairs, per resource type, of the upstream's local id and the client's id::

    {"ids": [{"type": "Patient", "upstream": "12345", "client": "alice",
              "description": "optional"}]}

The table is a bijection, checked at load over every profile together: each ``(type, client
id)`` appears once (client ids share one space across upstreams) and each ``(upstream, type,
local id)`` once; both ids are FHIR ids (a local id may be longer than the opaque format's
bound: that is what tables are for). Listed ids resolve through the table; other ids of the
upstream go to the opaque resolver (``unlisted: "opaque"``, the default) or have no client id
(``"reject"``: :class:`~middleware.mapping.ids.UntranslatableId` toward the client, "not found"
from it). An opaque id of a listed resource is refused, so each resource has one client id.

:func:`build_resolver` is pure: table files are read through the injected ``read``, like
:func:`~middleware.mapping.profile.build_profile`; every fault is collected into one
:class:`~middleware.errors.SettingsError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from middleware.errors import SettingsError
from middleware.mapping.ids import (
    FHIR_ID,
    RESOURCE_TYPE,
    IdResolver,
    OpaqueResolver,
    UntranslatableId,
    not_ours,
)
from middleware.mapping.profile import Profile, Reader, ReadFailed

__all__ = [
    "IdTables",
    "PatientsSettings",
    "TableResolver",
    "build_resolver",
    "parse_id_tables",
    "parse_settings",
]

_SETTINGS_KEYS: Final = frozenset({"resolver", "file", "unlisted"})
_ENTRY_KEYS: Final = frozenset({"type", "upstream", "client", "description"})


@dataclass(frozen=True, slots=True)
class PatientsSettings:
    """One profile's validated ``patients`` section."""

    resolver: Literal["opaque", "table"] = "opaque"
    file: str | None = None
    unlisted: Literal["opaque", "reject"] = "opaque"


@dataclass(frozen=True, slots=True)
class IdTables:
    """Every configured pair: ``(upstream, type, local id) -> client id``, its inverse, and the
    upstreams whose unlisted ids are refused."""

    to_client: Mapping[tuple[str, str, str], str] = field(default_factory=dict)
    to_upstream: Mapping[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    exhaustive: frozenset[str] = frozenset()


class TableResolver:
    """An :class:`~middleware.mapping.ids.IdResolver` over configured pairs, with ``fallback``
    (the opaque resolver) for the ids the tables do not list (see the module docstring)."""

    __slots__ = ("_fallback", "_tables")

    def __init__(self, tables: IdTables, fallback: IdResolver | None) -> None:
        self._tables = tables
        self._fallback = fallback

    def to_client(self, upstream: str, resource_type: str, local_id: str) -> str:
        listed = self._tables.to_client.get((upstream, resource_type, local_id))
        if listed is not None:
            return listed
        if self._fallback is None or upstream in self._tables.exhaustive:
            raise UntranslatableId(
                f"a {resource_type} id of upstream {upstream} is not in its id table; "
                "it cannot be given to clients"
            )
        return self._fallback.to_client(upstream, resource_type, local_id)

    def to_upstream(self, resource_type: str, client_id: str) -> tuple[str, str]:
        listed = self._tables.to_upstream.get((resource_type, client_id))
        if listed is not None:
            return listed
        if self._fallback is None:
            raise not_ours()
        upstream, local = self._fallback.to_upstream(resource_type, client_id)
        if (
            upstream in self._tables.exhaustive
            or (upstream, resource_type, local) in self._tables.to_client
        ):
            raise not_ours()
        return upstream, local


def build_resolver(
    profiles: Iterable[Profile], key: bytes, read: Reader, *, upstreams: Iterable[str] = ()
) -> IdResolver:
    """The resolver for every upstream of ``profiles`` (and ``upstreams`` without a profile).

    ``key`` is the 32-byte id key (``derive_box_key(ledger key, "ids")``). Raises
    :class:`SettingsError` listing every fault of the ``patients`` sections and their tables.
    """
    chosen = list(profiles)
    tables, problems = parse_id_tables(chosen, read)
    if problems:
        raise SettingsError("invalid patients settings:\n  " + "\n  ".join(problems))
    names = [*(p.upstream for p in chosen), *upstreams]
    if not names:
        raise SettingsError("the id resolver needs at least one upstream")
    opaque = OpaqueResolver(key, names)
    if not tables.to_client and not tables.exhaustive:
        return opaque
    return TableResolver(tables, opaque)


def parse_id_tables(profiles: Iterable[Profile], read: Reader) -> tuple[IdTables, list[str]]:
    """Validate every profile's ``patients`` section and read its table; ``(tables, problems)``,
    each problem prefixed with the profile or file it is about."""
    problems: list[str] = []
    to_client: dict[tuple[str, str, str], str] = {}
    to_upstream: dict[tuple[str, str], tuple[str, str]] = {}
    exhaustive: set[str] = set()
    seen: dict[str, tuple[str, PatientsSettings]] = {}
    for profile in profiles:
        settings = parse_settings(profile.patients, f"{profile.id}: patients", problems)
        if settings is None:
            continue
        earlier = seen.setdefault(profile.upstream, (profile.id, settings))
        if earlier[1] != settings:
            problems.append(
                f"{profile.id}: patients: upstream {profile.upstream} is also configured by "
                f"profile {earlier[0]}, differently"
            )
            continue
        if settings.file is None or earlier[0] != profile.id:
            continue
        if settings.unlisted == "reject":
            exhaustive.add(profile.upstream)
        try:
            raw = read(settings.file)
        except ReadFailed as exc:
            problems.append(f"{settings.file}: {exc}")
            continue
        for resource_type, local, client, where in _entries(raw, settings.file, problems):
            key = (profile.upstream, resource_type, local)
            if key in to_client:
                problems.append(f"{where}: {resource_type}/{local} is listed twice")
            elif (resource_type, client) in to_upstream:
                problems.append(f"{where}: client id {resource_type}/{client} is listed twice")
            else:
                to_client[key] = client
                to_upstream[(resource_type, client)] = (profile.upstream, local)
    return IdTables(to_client, to_upstream, frozenset(exhaustive)), problems


def parse_settings(raw: Any, where: str, problems: list[str]) -> PatientsSettings | None:
    """One ``patients`` section; ``None`` (and a problem) when it is invalid."""
    before = len(problems)
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be an object")
        return None
    problems += [f"{where}: unknown key {k!r}" for k in sorted(set(raw) - _SETTINGS_KEYS)]
    resolver = raw.get("resolver", "opaque")
    file = raw.get("file")
    unlisted = raw.get("unlisted", "opaque")
    if resolver == "opaque":
        if "file" in raw or "unlisted" in raw:
            problems.append(f"{where}: 'file' and 'unlisted' belong to the table resolver")
        return PatientsSettings() if len(problems) == before else None
    if resolver != "table":
        problems.append(f"{where}.resolver: {resolver!r} is not 'opaque' or 'table'")
    if not isinstance(file, str) or not file:
        problems.append(f"{where}.file: required, the table's path in the mappings folder")
    if unlisted not in ("opaque", "reject"):
        problems.append(f"{where}.unlisted: {unlisted!r} is not 'opaque' or 'reject'")
    if len(problems) > before:
        return None
    return PatientsSettings("table", file, unlisted)


def _entries(raw: Any, name: str, problems: list[str]) -> Iterable[tuple[str, str, str, str]]:
    entries = raw.get("ids") if isinstance(raw, Mapping) else None
    if not isinstance(entries, list) or (isinstance(raw, Mapping) and set(raw) - {"ids"}):
        problems.append(f"{name}: needs exactly one key, 'ids', holding a list")
        return
    for i, entry in enumerate(entries):
        where = f"{name}: ids[{i}]"
        if not isinstance(entry, Mapping) or set(entry) - _ENTRY_KEYS:
            problems.append(f"{where}: needs 'type', 'upstream' and 'client' (and 'description')")
            continue
        kind, local, client = entry.get("type"), entry.get("upstream"), entry.get("client")
        if not isinstance(kind, str) or not RESOURCE_TYPE.fullmatch(kind):
            problems.append(f"{where}.type: required, a resource type")
        elif not isinstance(local, str) or not FHIR_ID.fullmatch(local):
            problems.append(f"{where}.upstream: required, the upstream's id (a FHIR id)")
        elif not isinstance(client, str) or not FHIR_ID.fullmatch(client):
            problems.append(f"{where}.client: required, the client's id (a FHIR id)")
        else:
            yield kind, local, client, where
