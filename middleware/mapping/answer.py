"""An answer the gateway owns, mapped for the client in one walk, in place: identifier systems,
codings and the R4 <-> R5 conversion together.

The stages it fuses, run one after the other on a shared tree, copy what they change:
:func:`~middleware.mapping.map_response` (identifier systems renamed by a walk of every
element, then codings added at the profile's compiled element paths) and
:func:`~middleware.mapping.versions.convert_document` (a copy of the dicts along each type's
rule paths, then the rules). An answer the pipeline has decoded, judged and filtered is
held by nobody else, so :func:`map_answer_in_place` edits it where it is and gives what those
stages give (a property test holds them equal on random Bundles):

- one walk of every element renames identifier systems (an identifier may sit in an
  extension of any element, so no element can be skipped for them);
- the resources the codings and the conversion reach (the root, a Bundle's entries, contained
  resources) are handled when the walk leaves them, children first, in the stages' order:
  entries, then contained resources, then the resource's own codings (its compiled paths
  only), then its own conversion (its compiled rule paths only);
- nothing is copied but the dicts along a compiled coding path that gains a coding.

Consent is not affected: this runs after the filter, on what is released, as the stages did.

Not fused, and run as the stages ran (copy-on-write, then the conversion in place): a profile
whose attribute or element paths step into ``contained``, ``entry`` or ``resource``, or
conversion rules whose paths do: a resource's codings would then read a child the fused
order has already converted.

Contract: ``document`` is owned (nobody else reads it afterwards) and no dict or list is
reachable twice in it (true of a decoded JSON tree). On an error the tree may be half mapped;
the answer is refused then (502).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from middleware.mapping.model import Concept
from middleware.mapping.paths import ElementPath, rewrite
from middleware.mapping.profile import Binding, Profile
from middleware.mapping.resource import CodingWalk, LazyContext, Note, added_coding, map_response
from middleware.mapping.versions import (
    Loss,
    Release,
    Rules,
    convert_own,
    converted,
)

__all__ = ["Answered", "map_answer_in_place"]

#: Steps through which a path would reach a child resource of the resource it starts at.
_CHILD_STEPS: Final = frozenset({"contained", "entry", "resource"})


@dataclass(frozen=True, slots=True)
class Answered:
    """The mapped answer (the same object, edited), whether anything changed, the codings'
    notes and the conversion's losses (as :class:`~middleware.mapping.versions.Converted`
    reports them: each once)."""

    resource: Any
    changed: bool
    notes: tuple[Note, ...]
    losses: tuple[Loss, ...]


def map_answer_in_place(
    document: Any,
    profile: Profile,
    *,
    conversion: tuple[Release, Release] | None = None,
    refuse_on_loss: bool = False,
) -> Answered:
    """``document`` (owned; module docstring) as the client sees it: what
    ``map_response(document, profile)`` then, for a dict, ``convert_document`` from
    ``conversion[0]`` to ``conversion[1]`` with the profile's rules (``status="report"``) give.

    Raises :class:`~middleware.errors.UpstreamError` (a code the profile rejects unmapped) and
    :class:`~middleware.errors.UnprocessableEntity` (``refuse_on_loss`` and a loss) as they do.
    """
    rules = profile.conversion.rules if profile.conversion is not None else None
    converting = conversion is not None and rules is not None and type(document) is dict
    if not fusable(profile):
        return _unfused(document, profile, conversion if converting else None, refuse_on_loss)
    walk = _Pass(profile, conversion if converting else None, rules)
    if type(document) is dict:
        walk.process(document, "doc" if converting else None, "")
    elif type(document) is list and walk.table:
        walk.walk(document)
    losses: tuple[Loss, ...] = ()
    if converting and conversion is not None:
        done = converted(document, walk.losses, conversion[1], refuse_on_loss=refuse_on_loss)
        losses = done.losses
    changed = walk.changed or converting
    return Answered(document, changed, tuple(walk.codings.notes), losses)


def fusable(profile: Profile) -> bool:
    """Whether no path of ``profile`` (codings' elements and attributes, conversion rules)
    reaches into a child resource (module docstring)."""
    for binding in profile.bindings:
        paths = [
            *binding.spec.elements,
            *(p for ps in binding.spec.attributes.values() for p in ps),
        ]
        if any(_CHILD_STEPS.intersection(path.steps) for path in paths):
            return False
    conversion = profile.conversion
    if conversion is not None:
        for type_rules in conversion.rules.types.values():
            if _reaches_child(type_rules.paths, 0):
                return False
    return True


def _reaches_child(trie: Mapping[str, Any], depth: int) -> bool:
    if depth > 32:  # a ``name*`` step's trie loops back on itself
        return False
    return any(
        name in _CHILD_STEPS or _reaches_child(below, depth + 1) for name, below in trie.items()
    )


def _unfused(
    document: Any,
    profile: Profile,
    conversion: tuple[Release, Release] | None,
    refuse_on_loss: bool,
) -> Answered:
    """The stages one after the other, as before (copy-on-write codings, then conversion)."""
    from middleware.mapping.versions import convert_document  # noqa: PLC0415

    mapped = map_response(document, profile)
    out: Any = mapped.resource
    losses: tuple[Loss, ...] = ()
    if conversion is not None and profile.conversion is not None and type(out) is dict:
        done = convert_document(
            out,
            source=conversion[0],
            target=conversion[1],
            rules=profile.conversion.rules,
            refuse_on_loss=refuse_on_loss,
            status="report",
        )
        out, losses = done.resource, done.losses
    return Answered(out, out is not document, mapped.notes, losses)


class _Pass:
    """One walk: identifier systems everywhere; codings and conversion at the resources the
    stages reach. ``conv``: a resource's conversion role, ``"doc"`` (a Bundle: its entries;
    else itself and its contained) or ``"res"`` (itself and its contained), ``None``."""

    def __init__(
        self, profile: Profile, conversion: tuple[Release, Release] | None, rules: Rules | None
    ) -> None:
        self.table: Mapping[str, str] = profile.identifiers.to_client
        self.elements = profile.elements
        self.codings = CodingWalk(profile, "response")
        self.conversion = conversion
        self.rules = rules
        self.losses: list[Loss] = []
        self.changed = False
        #: Codings ``element`` added for a binding, path and codings' shape (templates).
        #: Memo keys of codes whose outcome depends on the resource's attribute values.
        self.conditional: set[tuple[Any, ...]] = set()
        self.added: dict[tuple[Any, ...], tuple[tuple[Concept, str, str], ...]] = {}

    # -- identifier systems (as identifiers._walk, in place) --------------------------------

    def walk(self, node: Any) -> None:
        """Every dict and list below ``node``: aliased ``identifier`` systems renamed."""
        if type(node) is list:
            for item in node:
                if type(item) is dict or type(item) is list:
                    self.walk(item)
            return
        for key, value in node.items():
            kind = type(value)
            if kind is dict or kind is list:
                if key == "identifier":
                    self.rename(value)
                self.walk(value)

    def rename(self, value: Any) -> None:
        if type(value) is list:
            for item in value:
                self.rename(item)
        elif type(value) is dict:
            system = value.get("system")
            if type(system) is str and system in self.table:
                value["system"] = self.table[system]
                self.changed = True

    # -- resources ------------------------------------------------------------------------------

    def process(self, node: dict[str, Any], conv: str | None, at: str) -> None:
        """A resource the codings reach (``conv``: its conversion role), children first."""
        kind = node.get("resourceType")
        bundle = kind == "Bundle"
        if bundle and "entry" in node:
            entries = node["entry"]
            if type(entries) is list:
                for i, entry in enumerate(entries):
                    where = f"{at}Bundle.entry[{i}].resource/" if conv == "doc" else None
                    self.entry(entry, where)
            else:
                self.entry(entries, None)
        if "contained" in node:
            converts = conv is not None and not (bundle and conv == "doc")
            self.contained(node["contained"], converts, f"{at}{kind}")
        if self.table:
            for key, value in node.items():
                if (key == "entry" and bundle) or key == "contained":
                    continue
                if type(value) is dict or type(value) is list:
                    if key == "identifier":
                        self.rename(value)
                    self.walk(value)
        if type(kind) is str:
            self.bindings(node, kind)
        if conv is not None and not (bundle and conv == "doc") and self.conversion is not None:
            assert self.rules is not None  # set with conversion
            source, target = self.conversion
            self.losses += convert_own(
                node, at, source=source, target=target, rules=self.rules, status="report"
            )

    def entry(self, entry: Any, where: str | None) -> None:
        """A Bundle entry (or what stands in its place): its ``resource`` processed (lists
        flattened, as the codings' path walk does), everything else walked."""
        if type(entry) is list:
            for item in entry:
                self.entry(item, None)
            return
        if type(entry) is not dict:
            return
        for key, value in entry.items():
            if key == "resource":
                self.child(value, "doc" if where is not None else None, where or "")
            elif self.table and (type(value) is dict or type(value) is list):
                if key == "identifier":
                    self.rename(value)
                self.walk(value)

    def contained(self, value: Any, convert: bool, at: str) -> None:
        if type(value) is list:
            for i, item in enumerate(value):
                if type(item) is dict:
                    self.process(item, "res" if convert else None, f"{at}.contained[{i}]/")
                elif type(item) is list:
                    self.child(item, None, "")
        elif type(value) is dict:
            self.process(value, None, "")

    def child(self, value: Any, conv: str | None, at: str) -> None:
        """A value the codings treat as a resource: a dict is processed, a list flattened."""
        if type(value) is dict:
            self.process(value, conv, at)
        elif type(value) is list:
            for item in value:
                self.child(item, None, "")

    def bindings(self, node: dict[str, Any], kind: str) -> None:
        """The resource's own codings, at its compiled element paths (as ``CodingWalk.resource``:
        each binding's context reads the resource as it was before them)."""
        bound = self.elements.get(kind)
        if not bound:
            return
        out = node
        contexts: dict[str, LazyContext] = {}
        element = self.element
        for binding, path in bound:
            context = contexts.get(binding.canonical)
            if context is None:
                context = contexts[binding.canonical] = LazyContext(node, binding)
            steps = path.steps
            value = out.get(steps[0]) if len(steps) == 1 else None
            if type(value) is dict:  # ``Observation.code``: rewrite's work, without its calls
                new = element(binding, path, context, value)
                if new is not value:
                    out = dict(out) if out is node else out
                    out[steps[0]] = new
            else:
                out = rewrite(out, steps, partial(element, binding, path, context))
        if out is not node:
            self.changed = True
            for key, value in out.items():
                if node[key] is not value:
                    node[key] = value

    def element(self, binding: Binding, path: ElementPath, context: LazyContext, cc: Any) -> Any:
        """``CodingWalk.element``, its outcome remembered by the (system, code) of each coding: a
        searchset repeats a few codes in every entry. Where a translation read the resource's
        attributes (``dependsOn``), by those values too; outcomes that noted something are not
        remembered (each occurrence notes again). The codings added are fresh dicts each time
        (no object is reachable twice)."""
        codings = cc.get("coding") if type(cc) is dict else None
        if type(codings) is not list:
            return cc
        key: tuple[Any, ...]
        first = codings[0] if len(codings) == 1 else None
        if (
            type(first) is dict
            and type(system := first.get("system")) is str
            and type(code := first.get("code")) is str
        ):
            shape: tuple[Any, ...] = ((system, code),)
            key = (id(binding), id(path), system, code)  # one coding, the common case
        else:
            shape = tuple(_shape(c) for c in codings)
            key = (id(binding), id(path), shape)
        plan = self.added.get(key)
        if plan is None and key in self.conditional:
            key = (*key, context.values_key())
            plan = self.added.get(key)
        if plan is not None:
            if not plan:
                return cc
            return {**cc, "coding": [*codings, *(added_coding(*item) for item in plan)]}
        walk = self.codings
        notes = len(walk.notes)
        out = walk.element(binding, path, context, cc)
        if len(walk.notes) != notes:
            return out
        if any(
            item is not None and (binding.canonical, *item) in walk.conditional for item in shape
        ):
            # A translation read the resource's attributes: the same codes with the same
            # attribute values add the same codings (as CodingWalk caches their translations).
            self.conditional.add(key)
            key = (*key, context.values_key())
        self.added[key] = _plan(out["coding"][len(codings) :]) if out is not cc else ()
        return out


def _shape(coding: Any) -> tuple[str | None, str | None] | None:
    """What ``CodingWalk.element`` reads of a coding: its system and code when they are strings."""
    if type(coding) is not dict:
        return None
    system, code = coding.get("system"), coding.get("code")
    return (system if type(system) is str else None, code if type(code) is str else None)


def _plan(added: list[dict[str, Any]]) -> tuple[tuple[Concept, str, str], ...]:
    """What :func:`~middleware.mapping.resource.added_coding` was called with for ``added``."""
    plan = []
    for coding in added:
        marker = coding["extension"][0]["extension"]
        concept = Concept(
            coding["system"], coding["code"], coding.get("display"), coding.get("version")
        )
        plan.append((concept, marker[0]["valueCanonical"], marker[1]["valueCode"]))
    return tuple(plan)
