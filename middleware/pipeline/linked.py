"""Resources that are not patient data, released only beside the patient data that names them.

The judge releases a resource outside the Patient compartment (Medication, Organization,
Practitioner, Location...) on the caller's scopes alone (:mod:`~middleware.pipeline.judge`):
read on its own, a Medication is nobody's record. In an answer *about a patient* it is not:
``Patient/[id]/$everything`` (R4 patient-operation-everything: the patient's compartment
"and any resource referenced from those") or a search's ``_include`` brings the methadone and
the opioid treatment clinic *because* the patient's records name them. Released beside
withheld records they would disclose what those records say (PHI by association), and an
answer holding only them would say that the withheld records exist.

:func:`keep_linked` keeps such a resource only when a released resource references it: the
anchors are the released resources of the Patient compartment (or of an undeterminable
patient, released by the deployment's choice), and a resource kept for them anchors in turn
what it references (a Medication's manufacturer). For a search's ``_revinclude``, a
resource that references a kept one is kept too (``referring``): it was asked for because it
names a released match. Pure; entries are not copied.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from middleware.fhir.compartment import Kind
from middleware.pipeline.judge import compartment_of

__all__ = ["keep_linked"]

_MAX_DEPTH: Final = 16
#: ``Type/id`` at the end of a reference, without its ``_history`` version.
_LOCAL: Final = re.compile(
    r"([A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?"
)


def keep_linked(
    entries: Sequence[Any],
    *,
    base_urls: Sequence[str],
    keep: Callable[[Any], bool] = lambda entry: False,
    referring: bool = False,
) -> list[Any]:
    """The released ``entries`` of a Bundle without each resource that is not patient data
    and that no kept resource references (module docstring). ``keep`` names entries kept
    whatever they are (a search's matches); the others are kept by reference only, or, with
    ``referring``, also when they reference a kept resource (``_revinclude``: a
    PractitionerRole of a released Practitioner)."""
    kept: set[int] = set()
    names: set[str] = set()  # Type/id of the kept resources
    named: set[str] = set()  # what the kept resources reference
    pending: dict[int, tuple[str | None, frozenset[str]]] = {}
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        targets = frozenset(_targets(resource, base_urls))
        if keep(entry) or (
            compartment_of(resource, base_urls=base_urls).kind is not Kind.NOT_PATIENT_DATA
        ):
            kept.add(index)
            name = _name(resource)
            if name is not None:
                names.add(name)
            named |= targets
        else:
            pending[index] = (_name(resource), targets)
    changed = True
    while changed and pending:
        changed = False
        for index, (name, targets) in list(pending.items()):
            if (name is not None and name in named) or (referring and targets & names):
                del pending[index]
                kept.add(index)
                if name is not None:
                    names.add(name)
                named |= targets
                changed = True
    return [entry for index, entry in enumerate(entries) if index in kept]


def _name(resource: dict[str, Any]) -> str | None:
    rid = resource.get("id")
    return f"{resource.get('resourceType')}/{rid}" if isinstance(rid, str) else None


def _targets(resource: Any, base_urls: Sequence[str]) -> Iterator[str]:
    """``Type/id`` of every local reference in ``resource`` (contained resources included):
    relative, or absolute on one of ``base_urls``."""
    prefixes = tuple(base.rstrip("/") + "/" for base in base_urls)
    for reference in _references(resource, 0):
        local = reference
        for prefix in prefixes:
            if local.startswith(prefix):
                local = local[len(prefix) :]
                break
        match = _LOCAL.fullmatch(local)
        if match is not None:
            yield match.group(1)


def _references(node: Any, depth: int) -> Iterator[str]:
    if depth > _MAX_DEPTH:
        return
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            elif isinstance(value, (dict, list)):
                yield from _references(value, depth + 1)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item, depth + 1)
