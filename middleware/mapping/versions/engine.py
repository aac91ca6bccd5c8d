"""The conversion engine: run a resource type's steps over one resource, in place, on a copy
of what the steps can change (:func:`copy_for_steps`).

Steps run in file order in both directions, outer before inner (the loader checks that a step
comes after every step above it), so a step always finds its node where the *target* release
has it (its ancestors are converted) and its own elements still in the *source* release. At
each node a step:

1. looks for a value of its target-side elements carried earlier in a cross-version extension
   (a previous conversion the other way). The carried value is restored, and the extension
   removed, only if converting it back gives exactly what the node now holds; otherwise the
   node was edited since, and the stale extension is dropped (``superseded``).
2. converts its source-side elements (:mod:`middleware.mapping.versions.ops`) and converts the
   result back: whatever does not survive that round trip is carried in cross-version
   extensions (:mod:`middleware.mapping.versions.carry`) next to the result (``carried``), or,
   for a step that carries nothing, reported (``dropped``).

Restored values are wrapped so that later steps do not convert them again. Leaves are never
touched: decimals stay :class:`msgspec.Raw`, unknown elements stay as they were.

A step changes only the dicts at its ``where`` path (replacing their entries, never editing a
list or dict it finds inside them), so a resource's steps need a copy of the dicts along their
paths only (:func:`copy_for_steps`); everything else may be shared with the caller's tree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from middleware.mapping.versions.carry import Release, Spec, decode, encode, value_key, xver_url
from middleware.mapping.versions.ops import Op

__all__ = [
    "Loss",
    "LossKind",
    "Rules",
    "StatusRule",
    "Step",
    "TypeRules",
    "copy_for_steps",
    "copy_tree",
    "run",
]

#: ``carried``: kept in a cross-version extension, restored on the way back; ``dropped``: gone;
#: ``missing``: an element the target requires has no source; ``superseded``: a carried value
#: no longer matched the element it came from (which was edited) and was discarded;
#: ``unconverted``: a resource type without rules, passed unchanged; ``invalid-status``: a
#: status code outside the target value set (only when the caller asked for a report).
LossKind = Literal["carried", "dropped", "missing", "superseded", "unconverted", "invalid-status"]


@dataclass(frozen=True, slots=True)
class Loss:
    """What a conversion could not express natively: an element path and why (never a value)."""

    path: str
    reason: str
    kind: LossKind

    @property
    def lost(self) -> bool:
        """True when the information is not in the converted resource at all."""
        return self.kind in ("dropped", "missing")


@dataclass(frozen=True, slots=True)
class Step:
    """One operation on the elements ``keys`` of the nodes at ``where`` (per release)."""

    origin: str
    resource_type: str
    where: Mapping[Release, tuple[str, ...]]
    keys: Mapping[Release, Mapping[str, Spec]]
    op: Op
    carry: bool = True
    modifier: bool = False
    choice: str | None = None
    note: str | None = None

    def path(self, release: Release, key: str) -> str:
        steps = [s.rstrip("*") for s in self.where[release]]
        return ".".join([self.resource_type, *steps, self.choice or key])


@dataclass(frozen=True, slots=True)
class StatusRule:
    """A status element and the codes each release's (required) value set allows; for a
    CodeableConcept, the codings of ``system``."""

    path: tuple[str, ...]
    system: str | None
    codes: Mapping[Release, frozenset[str]]


#: The element names below a node that lead to a node some step changes (a trie; a ``name*``
#: step's node is its own child under ``name``, as nesting may go on).
_Trie = dict[str, "_Trie"]


@dataclass(frozen=True, slots=True)
class TypeRules:
    resource_type: str
    steps: tuple[Step, ...]
    statuses: tuple[StatusRule, ...]
    #: Elements (paths below the type) a release requires that a conversion may leave absent.
    required: Mapping[Release, tuple[tuple[str, ...], ...]]
    #: Every step's path, in both releases' names (:func:`copy_for_steps`).
    paths: _Trie = field(init=False, repr=False, compare=False)

    #: Per (source, target): what :meth:`idle` checks (built on first use).
    _idle: dict[tuple[Release, Release], tuple[frozenset[str], frozenset[str], bool]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", _paths_of(self.steps))
        object.__setattr__(self, "_idle", {})

    def idle(self, resource: dict[str, Any], source: Release, target: Release) -> bool:
        """True when no step can do anything to ``resource``: every step below the root finds
        nothing at its first element, and every step at the root has no source element and
        no extension list to restore from (what :func:`_run_steps` and :func:`_apply` check
        first, so running them would change nothing)."""
        plan = self._idle.get((source, target))
        if plan is None:
            roots = [s for s in self.steps if not s.where[target]]
            plan = self._idle[(source, target)] = (
                frozenset(s.where[target][0].rstrip("*") for s in self.steps if s.where[target]),
                frozenset("modifierExtension" if s.modifier else "extension" for s in roots),
                any(s.keys[source] for s in roots),
            )
        firsts, fields, active = plan
        if active:
            return False
        for name in fields:  # loops, not any()/all(): this runs for every resource
            if type(resource.get(name)) is list:
                return False
        if firsts.isdisjoint(resource):
            return True
        return all(resource.get(name) is None for name in firsts)


def _paths_of(steps: tuple[Step, ...]) -> _Trie:
    root: _Trie = {}
    for step in steps:
        for where in step.where.values():
            node = root
            for name in where:
                plain = name.rstrip("*")
                child = node.setdefault(plain, {})
                if name.endswith("*"):
                    child.setdefault(plain, child)  # provision.provision... to any depth
                node = child
    return root


def copy_for_steps(node: dict[str, Any], paths: _Trie) -> dict[str, Any]:
    """A copy of ``node`` and of every dict (and list of them) along ``paths``: what the steps
    change in place. Other values are shared with ``node``, which is never changed."""
    out = dict(node)
    for name, below in paths.items():
        value = out.get(name)
        if type(value) is dict:
            out[name] = copy_for_steps(value, below)
        elif type(value) is list:
            out[name] = [copy_for_steps(v, below) if type(v) is dict else v for v in value]
    return out


@dataclass(frozen=True, slots=True)
class Rules:
    """Every resource type's rules, validated; ``source`` names the manifest they came from."""

    source: str
    types: Mapping[str, TypeRules]


class _Done:
    """A restored value: later steps must not convert it again."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def copy_tree(node: Any) -> Any:
    """A copy of every dict and list; leaves (str, int, msgspec.Raw, ...) are shared."""
    if type(node) is dict:
        return {k: copy_tree(v) for k, v in node.items()}
    if type(node) is list:
        return [copy_tree(v) for v in node]
    return node


@dataclass(slots=True)
class _Pass:
    """One conversion pass: the steps, the direction, and what it could not express;
    ``restored``: a carried value was put back (wrapped in :class:`_Done`)."""

    steps: tuple[Step, ...]
    source: Release
    target: Release
    losses: list[Loss]
    restored: bool = False


def run(resource: dict[str, Any], rules: TypeRules, source: Release, target: Release) -> list[Loss]:
    """Convert ``resource`` in place (a copy the caller owns of at least the dicts along the
    steps' paths, :func:`copy_for_steps`); return what was not exact."""
    conversion = _Pass(rules.steps, source, target, [])
    if not rules.idle(resource, source, target):
        _run_steps(conversion, resource, ())
        if conversion.restored:
            _unwrap(resource)
    missing = [
        Loss(".".join((rules.resource_type, *(s.rstrip("*") for s in path))), reason, "missing")
        for path in rules.required.get(target, ())
        if not all(_has(node, path[-1]) for node in _nodes(resource, path[:-1]))
        for reason in (f"required in {target}; the {source} resource has no counterpart",)
    ]
    return [*conversion.losses, *missing]


def _has(node: dict[str, Any], key: str) -> bool:
    """``key`` is in ``node``; ``name[x]``: any of the choice's ``nameType`` elements is."""
    if not key.endswith("[x]"):
        return key in node
    stem = key[:-3]
    return any(k.startswith(stem) and k[len(stem) : len(stem) + 1].isupper() for k in node)


def _run_steps(conversion: _Pass, root: dict[str, Any], base: tuple[str, ...]) -> None:
    """Apply every step at or below ``base`` (the path ``root`` sits at) to ``root``."""
    depth = len(base)
    star = base[-1] if base else None
    for step in conversion.steps:
        where = step.where[conversion.target]
        if where[:depth] != base:
            continue
        if star is None:
            if len(where) == depth:  # the root itself: nothing to search
                _apply(conversion, step, root)
                continue
            if root.get(where[depth].rstrip("*")) is None:  # nothing there (most steps)
                continue
        for node in _nodes(root, where[depth:], star):
            _apply(conversion, step, node)


def _nodes(node: Any, path: tuple[str, ...], star: str | None = None) -> list[dict[str, Any]]:
    """The dicts at ``path`` below ``node``, parents first; a step ``name*`` also matches
    ``name`` nested at any depth (``Consent.provision*``). ``star``: the step ``node`` sits at.
    A list, gathered before any step changes the tree."""
    found: list[dict[str, Any]] = []
    _gather(node, path, star, found)
    return found


def _gather(
    node: Any, path: tuple[str, ...], star: str | None, found: list[dict[str, Any]]
) -> None:
    if type(node) is not dict:
        return
    if not path:
        found.append(node)
    else:
        head, rest = path[0], path[1:]
        inner = head if head.endswith("*") else None
        for child in _children(node, head.rstrip("*")):
            _gather(child, rest, inner, found)
    if star is not None and star.endswith("*") and path[:1] != (star,):
        for child in _children(node, star[:-1]):
            _gather(child, path, star, found)


def _children(node: dict[str, Any], key: str) -> list[Any] | tuple[Any, ...]:
    value = node.get(key)
    if type(value) is list:
        return value
    return () if value is None else (value,)


def _apply(conversion: _Pass, step: Step, node: dict[str, Any]) -> None:
    source, target = conversion.source, conversion.target
    skeys = step.keys[source]
    if (
        not skeys
        and type(node.get("modifierExtension" if step.modifier else "extension")) is not list
    ):
        return  # nothing to convert, nor a carried value to restore (as _restore would find)
    values = {k: node[k] for k in skeys if k in node}
    metas = {k: node["_" + k] for k in skeys if "_" + k in node}
    if _restore(conversion, step, node, values, metas):
        return
    if not values and not metas:
        return
    out = step.op.apply(values, target)
    exact = step.op.apply(out, source) == values and (not metas or step.op.keeps_meta)
    if step.op.keeps_meta:
        renamed = dict(zip(skeys, step.keys[target], strict=True))
        out |= {"_" + renamed[k]: m for k, m in metas.items()}
    carried: list[dict[str, Any]] = []
    if not exact:
        paths = ", ".join(step.path(source, k) for k in (values or metas))
        encoded = _carry(step, source, target, values, metas) if step.carry else None
        if encoded is not None:
            carried = encoded
            reason = step.note or f"no exact {target} counterpart; carried in an extension"
            conversion.losses.append(Loss(paths, reason, "carried"))
        else:
            reason = step.note or f"no exact {target} counterpart"
            conversion.losses.append(Loss(paths, reason, "dropped"))
    _swap(conversion, step, node, out)
    if carried:
        element = "modifierExtension" if step.modifier else "extension"
        present = node.setdefault(element, [])
        if type(present) is list:  # a new list: the one found may be shared with the input
            node[element] = [*present, *carried]
        else:
            present.extend(carried)


def _swap(conversion: _Pass, step: Step, node: dict[str, Any], add: Mapping[str, Any]) -> None:
    """Replace the step's source elements of ``node`` (and their ``_element``) by ``add``."""
    keys = step.keys[conversion.source]
    for key in _replace(node, [*keys, *("_" + k for k in keys)], add):
        path = step.path(conversion.target, key)
        conversion.losses.append(Loss(path, "already present; replaced", "dropped"))


def _carry(
    step: Step,
    source: Release,
    target: Release,
    values: Mapping[str, Any],
    metas: Mapping[str, Any],
) -> list[dict[str, Any]] | None:
    out: list[dict[str, Any]] = []
    for key in dict.fromkeys([*values, *metas]):
        url = xver_url(source, step.path(source, key))
        encoded = encode(values.get(key), metas.get(key), step.keys[source][key], url, target)
        if encoded is None:
            return None
        out += encoded
    return out


def _restore(
    conversion: _Pass,
    step: Step,
    node: dict[str, Any],
    values: Mapping[str, Any],
    metas: Mapping[str, Any],
) -> bool:
    """Restore the target-side values carried on ``node``, if they still match ``values``."""
    source, target = conversion.source, conversion.target
    field = "modifierExtension" if step.modifier else "extension"
    exts = node.get(field)
    if type(exts) is not list or not step.keys[target]:
        return False
    found: dict[str, tuple[Any, Any]] = {}
    used: set[int] = set()
    for key, spec in step.keys[target].items():
        url, vkey = xver_url(target, step.path(target, key)), value_key(spec, source)
        hits = [
            i
            for i, e in enumerate(exts)
            if type(e) is dict and e.get("url") == url and (vkey is None or vkey in e)
        ]
        if not hits:
            continue
        try:
            found[key] = decode([exts[i] for i in hits], spec, source)
        except ValueError:
            continue
        used.update(hits)
    if not found:
        return False
    kept = [e for i, e in enumerate(exts) if i not in used]
    if kept:
        node[field] = kept
    else:
        del node[field]
    restored = {k: v for k, (v, _) in found.items()}
    restored_meta = {"_" + k: m for k, (_, m) in found.items() if m is not None}
    # Convert the carried value back the way it came; it must give what the node holds now.
    probe = copy_tree({**restored, **restored_meta})
    base = step.where[source]
    below = tuple(s for s in conversion.steps if s.where[source][: len(base)] == base)
    _run_steps(_Pass(below, target, source, []), probe, base)
    _unwrap(probe)
    back = {k: probe[k] for k in step.keys[source] if k in probe}
    back_meta = {k: probe["_" + k] for k in step.keys[source] if "_" + k in probe}
    if back == values and back_meta == metas:
        _swap(conversion, step, node, {k: _Done(v) for k, v in restored.items()} | restored_meta)
        conversion.restored = True
        return True
    paths = ", ".join(step.path(target, k) for k in found)
    reason = f"the carried value no longer matches the {source} element, which was edited"
    conversion.losses.append(Loss(paths, reason, "superseded"))
    return False


def _replace(node: dict[str, Any], remove: list[str], add: Mapping[str, Any]) -> list[str]:
    """Swap ``remove`` for ``add`` in place, where the first removed element was; return the
    elements ``add`` overwrote that were not being removed (the source held both forms)."""
    gone = set(remove)
    clash = [k for k in add if k in node and k not in gone]
    items = [(k, v) for k, v in node.items() if k not in add or k in gone]
    node.clear()
    placed = False
    for key, value in items:
        if key in gone:
            if not placed:
                node.update(add)
                placed = True
            continue
        node[key] = value
    if not placed:
        node.update(add)
    return clash


def _unwrap(node: Any) -> Any:
    """``node`` with every :class:`_Done` replaced by its value; only those are assigned (a
    shared dict or list below is walked, never written)."""
    if type(node) is _Done:
        return _unwrap(node.value)
    if type(node) is dict:
        for key, value in node.items():
            if type(value) is _Done:
                node[key] = _unwrap(value)
            elif type(value) is dict or type(value) is list:
                _unwrap(value)
    elif type(node) is list:
        for i, value in enumerate(node):
            if type(value) is _Done:
                node[i] = _unwrap(value)
            elif type(value) is dict or type(value) is list:
                _unwrap(value)
    return node
