"""FHIR R4 <-> R5 conversion of resources, driven by the rules in ``mappings/versions/`` (pure).

:func:`convert` converts one resource and its ``contained`` resources; :func:`convert_document`
also every resource of a Bundle (entries, nested Bundles). Both work on plain JSON as
:mod:`middleware.fhir.jsoncodec` decodes it and return a new tree: the input is never mutated
(the dicts a rule changes are copies; what no rule touches is shared with the input, so treat
both as read-only, as every mapping stage does), leaves are never re-serialised (a decimal
stays the :class:`msgspec.Raw` it was, ``5.40`` keeps its zero) and elements no rule names pass
through untouched. Types without rules pass
unchanged, noted ``unconverted``.

The rules (``load_rules``, once at start) say, per resource type, which elements were renamed,
moved, retyped or re-coded between the releases. An element with no counterpart travels in
FHIR's official cross-version extension (``http://hl7.org/fhir/5.0/StructureDefinition/
extension-<Type>.<element>`` for an R5 element in R4, ``.../4.0/...`` for an R4 element in R5)
and is restored on the way back, as long as the element it stood for was not edited
meanwhile. Each conversion reports what it could not express natively
(:attr:`Converted.losses`: paths and reasons, never values, so never PHI).

Consent keeps its decision (R4 root ``provision.type`` <-> R5 ``decision``, nested provisions
preserved; :mod:`middleware.mapping.versions.consent`). Consent decisions are always taken on
the upstream's native version *before* conversion; converting is for the other side only.

Errors::

    UnprocessableEntity (422)      refuse_on_loss, and the conversion would lose something
    └── StatusNotInValueSet (422)  a status code outside the target release's value set: a
                                   write fails with it; an answer's caller catches it (e.g.
                                   502) or passes ``status="report"`` to get a loss instead
    SettingsError                  a bad rule file or conversion setting, at load
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from middleware.errors import SettingsError, UnprocessableEntity
from middleware.mapping.versions.carry import Release
from middleware.mapping.versions.engine import (
    Loss,
    LossKind,
    Rules,
    TypeRules,
    copy_for_steps,
    run,
)
from middleware.mapping.versions.rules import Reader, load_rules

__all__ = [
    "DEFAULT_RULES",
    "Conversion",
    "Converted",
    "Loss",
    "LossKind",
    "Release",
    "Rules",
    "StatusNotInValueSet",
    "convert",
    "convert_document",
    "convert_own",
    "converted",
    "load_conversion",
    "load_rules",
    "release_of",
]

#: The manifest a profile's ``conversion`` uses unless it names another.
DEFAULT_RULES: Final = "versions/r4-r5.json"
_RELEASES: Final[Mapping[str, Release]] = {"R4": "R4", "R4B": "R4", "R5": "R5"}


@dataclass(frozen=True, slots=True)
class Converted:
    """The converted resource (a new tree) and what it could not carry natively."""

    resource: dict[str, Any]
    losses: tuple[Loss, ...]

    @property
    def lost(self) -> tuple[Loss, ...]:
        """The losses whose information is not in :attr:`resource` at all."""
        return tuple(loss for loss in self.losses if loss.lost)


class StatusNotInValueSet(UnprocessableEntity):
    """A status code the target release's required value set does not hold (422)."""

    def __init__(self, path: str, code: str, release: Release) -> None:
        super().__init__(f"{path}: {code!r} is not in the FHIR {release} value set")
        self.path = path
        self.code = code
        self.release = release


@dataclass(frozen=True, slots=True)
class Conversion:
    """A profile's ``conversion`` settings: the rules, and the operations that refuse a loss
    (a write that would lose data is refused with 422 instead of forwarded)."""

    rules: Rules
    refuse: frozenset[Literal["response", "write"]]

    def refuse_on_loss(self, operation: str) -> bool:
        return operation in self.refuse


def release_of(version: str) -> Release | None:
    """The release a profile version converts as: R4B is treated as R4 (identical for the
    converted types' elements); None for an unknown version."""
    return _RELEASES.get(version)


def convert(
    resource: Mapping[str, Any],
    *,
    source: Release,
    target: Release,
    rules: Rules,
    refuse_on_loss: bool = False,
    status: Literal["raise", "report"] = "raise",
) -> Converted:
    """``resource`` (and its contained resources) in release ``target``.

    Raises :class:`UnprocessableEntity` when ``refuse_on_loss`` and a loss is :attr:`Loss.lost`
    (carried elements are not lost), :class:`StatusNotInValueSet` for a status outside the
    target value set unless ``status="report"``.
    """
    out = _owned(dict(resource), rules, bundle=False, convert=source != target)
    losses = _resource(out, "", source=source, target=target, rules=rules, status=status)
    return _result(out, losses, target, refuse_on_loss)


def convert_document(
    document: Mapping[str, Any],
    *,
    source: Release,
    target: Release,
    rules: Rules,
    refuse_on_loss: bool = False,
    status: Literal["raise", "report"] = "raise",
) -> Converted:
    """Like :func:`convert`, for a Bundle too: every entry's resource (nested Bundles included)
    and their contained resources. Loss paths say where: ``Bundle.entry[2].resource/...``."""
    out = _owned(dict(document), rules, bundle=True, convert=source != target)
    losses = _document(out, "", source=source, target=target, rules=rules, status=status)
    return _result(out, losses, target, refuse_on_loss)


def load_conversion(section: Mapping[str, Any], read: Reader) -> Conversion:
    """A profile's ``conversion`` section: ``{"rules": manifest, "loss": {"response":
    "report"|"refuse", "write": "report"|"refuse"}}``, defaults :data:`DEFAULT_RULES`, answers
    ``report``, writes ``refuse``. Raises :class:`SettingsError` naming every problem."""
    problems: list[str] = []
    if not isinstance(section, Mapping):
        raise SettingsError("conversion: must be an object")
    problems += [f"conversion: unknown key {k!r}" for k in sorted(set(section) - {"rules", "loss"})]
    manifest = section.get("rules", DEFAULT_RULES)
    if not isinstance(manifest, str) or not manifest:
        problems.append("conversion.rules: a path below the mappings folder")
    loss = section.get("loss", {})
    modes = {"response": "report", "write": "refuse"}
    if not isinstance(loss, Mapping) or set(loss) - set(modes):
        problems.append("conversion.loss: may only hold 'response' and 'write'")
    else:
        modes |= dict(loss)
    problems += [
        f"conversion.loss.{op}: {mode!r} is not 'report' or 'refuse'"
        for op, mode in modes.items()
        if mode not in ("report", "refuse")
    ]
    if problems:
        raise SettingsError("invalid conversion settings:\n  " + "\n  ".join(problems))
    refuse = frozenset(
        cast(Literal["response", "write"], op) for op, mode in modes.items() if mode == "refuse"
    )
    return Conversion(load_rules(manifest, read), refuse)


def _result(
    out: dict[str, Any], losses: list[Loss], target: Release, refuse_on_loss: bool
) -> Converted:
    unique = tuple(dict.fromkeys(losses))
    lost = [f"{loss.path} ({loss.reason})" for loss in unique if loss.lost]
    if refuse_on_loss and lost:
        raise UnprocessableEntity(
            f"cannot convert to FHIR {target} without losing data: {'; '.join(lost)}. "
            "Send what the upstream's FHIR version needs, or the resource in that version."
        )
    return Converted(out, unique)


def _owned(node: dict[str, Any], rules: Rules, *, bundle: bool, convert: bool) -> dict[str, Any]:
    """A copy of ``node`` (a fresh dict) of everything :func:`_document` (``bundle``) or
    :func:`_resource` will change: entries and their resources, contained resources, and in
    each resource the dicts along its rules' paths (none when not ``convert``ing)."""
    if bundle and node.get("resourceType") == "Bundle":
        entries = node.get("entry")
        if type(entries) is list:
            node["entry"] = [_owned_entry(entry, rules, convert) for entry in entries]
        return node
    contained = node.get("contained")
    if type(contained) is list:
        node["contained"] = [
            _owned(dict(item), rules, bundle=False, convert=convert) if type(item) is dict else item
            for item in contained
        ]
    kind = node.get("resourceType")
    type_rules = rules.types.get(kind) if convert and isinstance(kind, str) else None
    return node if type_rules is None else copy_for_steps(node, type_rules.paths)


def _owned_entry(entry: Any, rules: Rules, convert: bool) -> Any:
    resource = entry.get("resource") if type(entry) is dict else None
    if type(resource) is not dict:
        return entry
    return {**entry, "resource": _owned(dict(resource), rules, bundle=True, convert=convert)}


def _document(
    node: dict[str, Any], at: str, *, source: Release, target: Release, rules: Rules, status: str
) -> list[Loss]:
    if node.get("resourceType") != "Bundle":
        return _resource(node, at, source=source, target=target, rules=rules, status=status)
    losses: list[Loss] = []
    entries = node.get("entry")
    for i, entry in enumerate(entries if type(entries) is list else []):
        resource = entry.get("resource") if type(entry) is dict else None
        if type(resource) is dict:
            where = f"{at}Bundle.entry[{i}].resource/"
            losses += _document(
                resource, where, source=source, target=target, rules=rules, status=status
            )
    return losses


def _resource(
    node: dict[str, Any], at: str, *, source: Release, target: Release, rules: Rules, status: str
) -> list[Loss]:
    """Convert ``node`` (already a copy) in place, then its contained resources."""
    kind = node.get("resourceType")
    losses: list[Loss] = []
    contained = node.get("contained")
    for i, item in enumerate(contained if type(contained) is list else []):
        if type(item) is dict:
            where = f"{at}{kind}.contained[{i}]/"
            losses += _resource(
                item, where, source=source, target=target, rules=rules, status=status
            )
    if source == target:
        return losses
    return [
        *losses,
        *convert_own(node, at, source=source, target=target, rules=rules, status=status),
    ]


def convert_own(
    node: dict[str, Any], at: str, *, source: Release, target: Release, rules: Rules, status: str
) -> list[Loss]:
    """Convert ``node``'s own elements in place (not its contained resources), ``source`` and
    ``target`` differing; what was not exact, paths prefixed with ``at``. ``node`` must be
    owned (:func:`convert_document` hands it a copy; the one-pass answer mapping, a tree it
    owns: :mod:`middleware.mapping.answer`)."""
    kind = node.get("resourceType")
    type_rules = rules.types.get(kind) if isinstance(kind, str) else None
    if type_rules is None:
        reason = f"not converted: no {source} -> {target} rules for this resource type"
        return [Loss(f"{at}{kind}", reason, "unconverted")]
    found = run(node, type_rules, source, target)
    for path, code in _bad_statuses(node, type_rules, target):
        if status == "raise":
            raise StatusNotInValueSet(f"{at}{path}", code, target)
        found.append(Loss(path, f"not in the {target} value set", "invalid-status"))
    return [Loss(f"{at}{loss.path}", loss.reason, loss.kind) for loss in found]


def converted(
    document: dict[str, Any], losses: list[Loss], target: Release, *, refuse_on_loss: bool
) -> Converted:
    """The :class:`Converted` of ``document`` whose conversion found ``losses`` (duplicates
    once); raises :class:`UnprocessableEntity` as :func:`convert_document` does."""
    return _result(document, losses, target, refuse_on_loss)


def _bad_statuses(
    node: dict[str, Any], rules: TypeRules, release: Release
) -> list[tuple[str, str]]:
    bad: list[tuple[str, str]] = []
    for rule in rules.statuses:
        allowed = rule.codes[release]
        if len(rule.path) == 1 and type(code := node.get(rule.path[0])) is str and code in allowed:
            continue  # a code the release allows, at the root (Observation.status)
        for value in _values(node, rule.path):
            codes = [value] if isinstance(value, str) else _codes(value, rule.system)
            where = ".".join((rules.resource_type, *rule.path))
            bad += [(where, code) for code in codes if code not in allowed]
    return bad


def _values(node: Any, path: tuple[str, ...]) -> list[Any]:
    if not path:
        return node if type(node) is list else [node]
    items = node if type(node) is list else [node]
    return [v for item in items if type(item) is dict for v in _values(item.get(path[0]), path[1:])]


def _codes(concept: Any, system: str | None) -> list[str]:
    found = concept.get("coding") if type(concept) is dict else None
    codings = found if type(found) is list else []
    return [
        c["code"]
        for c in codings
        if type(c) is dict and c.get("system") == system and isinstance(c.get("code"), str)
    ]
