"""(Before its speed work; the rule data classes are today's.) The conversion engine: run a resource type's steps over one resource, in place, on a copy.

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
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from middleware.mapping.versions.carry import Release, decode, encode, value_key, xver_url
from middleware.mapping.versions.engine import Rules, StatusRule, Step, TypeRules

__all__ = ["Loss", "LossKind", "Rules", "StatusRule", "Step", "TypeRules", "copy_tree", "run"]

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


@dataclass(frozen=True, slots=True)
class _Pass:
    """One conversion pass: the steps, the direction, and what it could not express."""

    steps: tuple[Step, ...]
    source: Release
    target: Release
    losses: list[Loss]


def run(resource: dict[str, Any], rules: TypeRules, source: Release, target: Release) -> list[Loss]:
    """Convert ``resource`` (a copy the caller owns) in place; return what was not exact."""
    conversion = _Pass(rules.steps, source, target, [])
    _run_steps(conversion, resource, ())
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
    for step in conversion.steps:
        where = step.where[conversion.target]
        if where[: len(base)] != base:
            continue
        for node in list(_nodes(root, where[len(base) :], base[-1] if base else None)):
            _apply(conversion, step, node)


def _nodes(node: Any, path: tuple[str, ...], star: str | None = None) -> Iterator[dict[str, Any]]:
    """The dicts at ``path`` below ``node``, parents first; a step ``name*`` also matches
    ``name`` nested at any depth (``Consent.provision*``). ``star``: the step ``node`` sits at."""
    if type(node) is not dict:
        return
    if not path:
        yield node
    else:
        head, rest = path[0], path[1:]
        for child in _children(node, head.rstrip("*")):
            yield from _nodes(child, rest, head if head.endswith("*") else None)
    if star is not None and star.endswith("*") and path[:1] != (star,):
        for child in _children(node, star[:-1]):
            yield from _nodes(child, path, star)


def _children(node: dict[str, Any], key: str) -> list[Any]:
    value = node.get(key)
    return list(value) if type(value) is list else [value]


def _apply(conversion: _Pass, step: Step, node: dict[str, Any]) -> None:
    source, target = conversion.source, conversion.target
    skeys = step.keys[source]
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
        node.setdefault("modifierExtension" if step.modifier else "extension", []).extend(carried)


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
    if type(node) is _Done:
        return _unwrap(node.value)
    if type(node) is dict:
        for key, value in node.items():
            if type(value) in (dict, list, _Done):
                node[key] = _unwrap(value)
    elif type(node) is list:
        for i, value in enumerate(node):
            if type(value) in (dict, list, _Done):
                node[i] = _unwrap(value)
    return node
