"""The FHIR R4 Patient compartment: the patients a resource, or a request, belongs to.

Membership is the R4 Patient CompartmentDefinition
(http://hl7.org/fhir/R4/compartmentdefinition-patient.html), generated into
:mod:`middleware.fhir.compartment_data`: a resource is in the compartment of each Patient that
one of its type's params references, and a Patient is in its own. Each answer is a
:class:`PatientRefs` of one :class:`Kind`:

* ``patient-data``: the type is in the compartment and at least one patient was found;
* ``unknown``: in the compartment, but no patient could be determined (no reference, a Group,
  an identifier-only reference, an unresolvable or contained ``#`` reference, another server,
  ``urn:``), or a type the definition does not list. Callers with a patient scope treat it as
  configured, by default as denied (:func:`in_patient_scope`);
* ``not-patient-data``: a type the definition lists without params (Practitioner, Medication...).

References (http://hl7.org/fhir/R4/references.html#literal) count as a patient when they are
``Patient/<id>``, ``Patient/<id>/_history/<vid>`` or such a URL under one of ``base_urls``.
References in ``contained`` resources count for the container (a contained resource has no
identity of its own, http://hl7.org/fhir/R4/references.html#contained), read by the contained
type's own params; a contained Patient has no server identity and is unresolved. Bundle and
Parameters hold whole resources: judge their parts with :func:`patients_of_bundle_entries`.

Only the listed element paths (and ``contained``) are read, so the cost does not grow with the
size of the resource. Decimals (``msgspec.Raw``) are never touched.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from middleware.fhir.compartment_data import (
    NOT_IN_COMPARTMENT_TYPES,
    PATIENT_COMPARTMENT,
    PATIENT_ONLY_PARAMS,
    SEARCH_ALIASES,
    UNTRANSLATED,
)
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.fhir.resource_types import RESOURCE_TYPES

__all__ = [
    "Kind",
    "PatientRefs",
    "in_patient_scope",
    "patients_of",
    "patients_of_bundle_entries",
    "request_patients",
]


class Kind(enum.StrEnum):
    """What a resource or request is, for the Patient compartment (see the module docstring)."""

    PATIENT_DATA = "patient-data"
    UNKNOWN = "unknown"
    NOT_PATIENT_DATA = "not-patient-data"


@dataclass(frozen=True, slots=True)
class PatientRefs:
    """The patients (ids, without ``Patient/``) whose compartment holds a resource or request.

    ``ids`` is empty unless ``kind`` is ``patient-data``. ``unresolved`` is True when some
    compartment reference could not be resolved to a local identity, so the resource may belong
    to further patients than ``ids``.
    """

    kind: Kind
    ids: frozenset[str] = frozenset()
    unresolved: bool = False

    @property
    def references(self) -> frozenset[str]:
        """``ids`` as ``Patient/<id>`` references (the form consent policies name)."""
        return frozenset(f"Patient/{pid}" for pid in self.ids)


_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # the R4 id datatype
# _resolve's answers besides a patient id; neither is a valid id.
_OTHER: Final = ""  # resolved, and not to a patient
_UNRESOLVED: Final = "#"  # could be a patient we cannot name
_MAY_BE_PATIENT: Final = frozenset({"Patient", "Group"})  # a Group's members may be patients
_TYPE_URL: Final = "http://hl7.org/fhir/StructureDefinition/"
_CONTAINERS: Final = frozenset({"Bundle", "Parameters"})
_MAX_DEPTH: Final = 16

#: Distinct element paths per type (params sharing a path are read once).
_PATHS: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    rtype: tuple(dict.fromkeys(path for _, path in rows))
    for rtype, rows in PATIENT_COMPARTMENT.items()
}
#: Search params that name patients: the compartment's, and those reading only its paths.
_PARAMS: Final[dict[str, frozenset[str]]] = {
    rtype: frozenset((*(param for param, _ in rows), *SEARCH_ALIASES.get(rtype, ())))
    for rtype, rows in PATIENT_COMPARTMENT.items()
}
_UNTRANSLATED_TYPES: Final = frozenset(rtype for rtype, _, _ in UNTRANSLATED)

_NOT_PATIENT: Final = PatientRefs(Kind.NOT_PATIENT_DATA)
_UNKNOWN: Final = PatientRefs(Kind.UNKNOWN)
_UNKNOWN_UNRESOLVED: Final = PatientRefs(Kind.UNKNOWN, unresolved=True)


def patients_of(resource: Mapping[str, Any], *, base_urls: Sequence[str] = ()) -> PatientRefs:
    """The patients whose compartment holds ``resource`` (decoded FHIR R4 JSON).

    ``base_urls`` are this server's FHIR bases as clients and the upstream write them
    (``http://host/fhir``); absolute references under them are local, others are another
    server's. A Bundle or Parameters is ``patient-data`` only for the patients every part
    belongs to, ``not-patient-data`` if no part is patient data, else ``unknown``.
    """
    return _patients_of(resource, _bases(base_urls), 0)


def patients_of_bundle_entries(
    bundle: Mapping[str, Any], *, base_urls: Sequence[str] = ()
) -> Iterator[tuple[tuple[int, ...], PatientRefs]]:
    """Yield ``(path, refs)`` for every entry resource of ``bundle``, in document order.

    ``path`` holds entry indexes: ``(2,)`` is ``entry[2]``; an entry whose resource is itself
    a Bundle (``$everything``, a document) is not yielded, its entries are: ``(2, 0)`` is
    ``entry[2].resource.entry[0]``. Entries without a resource (history deletes, responses)
    are skipped; a malformed entry is ``unknown``; a malformed ``entry`` list, or nesting deeper
    than 16, yields the enclosing path with ``unknown``, ``()`` meaning the whole Bundle.
    """
    yield from _entries(bundle, (), _bases(base_urls), 0)


def request_patients(
    request: FhirRequest, params: Sequence[tuple[str, str]], *, base_urls: Sequence[str] = ()
) -> PatientRefs:
    """The patients a request names, before anything is forwarded.

    ``Patient/<id>`` at instance level (read, vread, update, patch, delete, history,
    operations) names ``id``; a compartment search ``Patient/<id>/<type>`` names ``id``. For
    type-level searches and conditional writes, ``params`` (decoded query or form pairs) name
    the patients of the type's compartment params (and of params reading only their paths, like
    Observation's ``patient``): ``subject=Patient/1``, ``patient=1`` (a bare
    id only where the param targets Patient alone), ``subject:Patient=1``, absolute URLs under
    ``base_urls``; comma-separated values are ORs (http://hl7.org/fhir/R4/search.html#combining),
    so every one is named. ``_id`` names patients on Patient searches. Chains, ``_has``, other
    modifiers, Groups and escapes are ``unresolved``. Anything else is ``unknown`` for types in
    the compartment and at system level, ``not-patient-data`` for types outside it. A request
    reaches every patient it names: compare with ``every=True`` (:func:`in_patient_scope`).
    Request bodies (create, update) and responses are judged with :func:`patients_of`.
    """
    ids: set[str] = set()
    rtype = request.resource_type
    if request.compartment is not None and request.compartment[0] == "Patient":
        ids.add(request.compartment[1])
    elif request.level is Level.INSTANCE and rtype == "Patient" and request.resource_id:
        ids.add(request.resource_id)
    if request.interaction is Interaction.CAPABILITIES:
        return _NOT_PATIENT
    if rtype is None:
        return _UNKNOWN_UNRESOLVED
    unresolved = False
    if request.level is Level.TYPE and request.interaction not in _NO_CRITERIA:
        unresolved = _search_patients(rtype, params, _bases(base_urls), ids)
    if ids:
        return PatientRefs(Kind.PATIENT_DATA, frozenset(ids), unresolved)
    if unresolved or rtype in _CONTAINERS or rtype not in NOT_IN_COMPARTMENT_TYPES:
        return PatientRefs(Kind.UNKNOWN, unresolved=unresolved)
    return _NOT_PATIENT


def in_patient_scope(
    refs: PatientRefs,
    patients: frozenset[str],
    *,
    allow_unknown: bool = False,
    every: bool = False,
) -> bool:
    """Whether a caller scoped to ``patients`` (ids) may see what ``refs`` describes.

    Not patient data is in scope; ``unknown`` is in scope only with ``allow_unknown`` (the
    configured treatment; the default denies). Patient data is in scope when one of its
    patients is (a resource in any of the caller's compartments, SMART ``patient/`` scopes);
    with ``every`` (for requests) all named patients must be, and ``unresolved`` counts as
    unknown.
    """
    if refs.kind is Kind.NOT_PATIENT_DATA:
        return True
    if refs.kind is Kind.UNKNOWN:
        return allow_unknown
    if every:
        return refs.ids <= patients and (allow_unknown or not refs.unresolved)
    return not refs.ids.isdisjoint(patients)


# -- resources ------------------------------------------------------------------------------


def _bases(base_urls: Sequence[str]) -> tuple[str, ...]:
    """The bases as prefixes (``http://host/fhir/``); made once per tuple of bases, not per
    resource: a judged answer asks once for every resource it holds, always with the same
    bases (a list is converted first, as it is unhashable)."""
    if not base_urls:
        return ()
    return _prefixes(base_urls if type(base_urls) is tuple else tuple(base_urls))


@functools.lru_cache(maxsize=64)
def _prefixes(base_urls: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(base.rstrip("/") + "/" for base in base_urls if base.strip("/"))


def _patients_of(resource: Mapping[str, Any], bases: tuple[str, ...], depth: int) -> PatientRefs:
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return _UNKNOWN_UNRESOLVED
    paths = _PATHS.get(rtype)
    if paths is None:
        if rtype in _CONTAINERS:
            return _container(resource, bases, depth)
        if rtype not in NOT_IN_COMPARTMENT_TYPES:
            return _UNKNOWN_UNRESOLVED  # not an R4 type the definition lists
    ids: set[str] = set()
    unresolved = rtype in _UNTRANSLATED_TYPES
    if paths is not None:
        unresolved |= _collect(resource, paths, resource, bases, ids)
    holds_patient_data = paths is not None
    if rtype == "Patient":
        own = resource.get("id")
        if isinstance(own, str) and _ID.fullmatch(own):
            ids.add(own)  # the compartment's identity is the patient's (compartmentdefinition.html)
    contained = resource.get("contained")
    if contained:
        found, holds = _contained(contained, resource, bases, ids)
        unresolved |= found
        holds_patient_data |= holds
    if ids:
        return _patient_data(frozenset(ids), unresolved)
    if not holds_patient_data:
        return _NOT_PATIENT
    return _UNKNOWN_UNRESOLVED if unresolved else _UNKNOWN


def _collect(
    resource: Mapping[str, Any],
    paths: tuple[tuple[str, ...], ...],
    container: Mapping[str, Any],
    bases: tuple[str, ...],
    ids: set[str],
) -> bool:
    """Add the patient ids on ``paths`` to ``ids``; True if some reference was unresolved."""
    unresolved = False
    for path in paths:
        if len(path) == 1:  # the common case, without the lists
            value = resource.get(path[0])
            nodes = value if type(value) is list else [] if value is None else [value]
        else:
            nodes = _walk(resource, path)
        for node in nodes:
            got = _resolve(node, container, bases)
            if got == _UNRESOLVED:
                unresolved = True
            elif got:
                ids.add(got)
    return unresolved


def _walk(resource: Mapping[str, Any], path: tuple[str, ...]) -> list[Any]:
    """The values at ``path``, through lists; a malformed node is carried to the end as is."""
    nodes: list[Any] = [resource]
    for segment in path:
        found: list[Any] = []
        for node in nodes:
            if type(node) is not dict and not isinstance(node, Mapping):
                found.append(node)  # _resolve finds it unresolved
                continue
            value = node.get(segment)
            if type(value) is list:
                found.extend(value)
            elif value is not None:
                found.append(value)
        nodes = found
    return nodes


@functools.lru_cache(maxsize=4096)
def _patient_data(ids: frozenset[str], unresolved: bool) -> PatientRefs:
    """Shared answers: most resources of a response name the same few patients."""
    return PatientRefs(Kind.PATIENT_DATA, ids, unresolved)


def _contained(
    contained: Any, container: Mapping[str, Any], bases: tuple[str, ...], ids: set[str]
) -> tuple[bool, bool]:
    """Collect from contained resources; returns (unresolved, holds patient data)."""
    if not isinstance(contained, list):
        return True, True
    unresolved = holds = False
    for resource in contained:
        rtype = resource.get("resourceType") if isinstance(resource, Mapping) else None
        paths = _PATHS.get(rtype) if isinstance(rtype, str) else None
        if paths is not None and isinstance(resource, Mapping):
            holds = True
            unresolved |= rtype == "Patient" or rtype in _UNTRANSLATED_TYPES
            unresolved |= _collect(resource, paths, container, bases, ids)
        elif (
            not isinstance(rtype, str)  # a list is unhashable: never looked up in a set
            or rtype not in NOT_IN_COMPARTMENT_TYPES
            or rtype in _CONTAINERS
        ):
            unresolved = holds = True
    return unresolved, holds


def _resolve(reference: Any, container: Mapping[str, Any] | None, bases: tuple[str, ...]) -> str:
    """A patient id, ``_OTHER`` or ``_UNRESOLVED`` for one Reference value."""
    if type(reference) is not dict and not isinstance(reference, Mapping):
        return _UNRESOLVED
    literal = reference.get("reference")
    if type(literal) is str:
        if ":" in literal or literal[:1] == "#":
            return _literal(literal, reference.get("type"), container, bases)
        return _relative(literal)
    if literal is None:
        return _by_type(reference.get("type"))  # identifier or display only
    return _UNRESOLVED


def _literal(
    ref: str, declared: Any, container: Mapping[str, Any] | None, bases: tuple[str, ...]
) -> str:
    if ref.startswith("#"):
        if ref == "#":
            return _OTHER  # the container itself
        # a contained Patient or Group has no server identity: _by_type leaves it unresolved
        return _by_type(_contained_type(container, ref[1:]))
    if ":" in ref:  # an absolute URL or a URN; ids and relative references hold no ':'
        for base in bases:
            if ref.startswith(base):
                ref = ref[len(base) :]
                break
        else:
            return _foreign(ref, declared)
    return _relative(ref)


@functools.lru_cache(maxsize=65536)
def _relative(ref: str) -> str:
    """``Type/id`` or ``Type/id/_history/vid``; cached, as responses repeat the same few."""
    parts = ref.split("/")
    count = len(parts)
    if count == 2 or (count == 4 and parts[2] == "_history" and _ID.fullmatch(parts[3])):
        rtype, rid = parts[0], parts[1]
        if _ID.fullmatch(rid):
            if rtype == "Patient":
                return rid
            if rtype in RESOURCE_TYPES and rtype != "Group":
                return _OTHER
    return _UNRESOLVED  # a Group, a conditional reference (Patient?identifier=...) or malformed


def _foreign(ref: str, declared: Any) -> str:
    """Another server's URL or a URN: no patient we can name; not one if typed as a non-patient."""
    parts = ref.split("?", 1)[0].split("/")
    if len(parts) > 4 and parts[-2] == "_history":
        del parts[-2:]
    in_url = parts[-2] if "://" in ref and len(parts) > 3 else None
    typed = [name for name in (in_url, declared) if name is not None]
    if typed and all(_by_type(name) == _OTHER for name in typed):
        return _OTHER
    return _UNRESOLVED


def _by_type(declared: Any) -> str:
    """``_OTHER`` for a known type that cannot be a patient, else ``_UNRESOLVED``."""
    if isinstance(declared, str):
        name = declared.removeprefix(_TYPE_URL)  # Reference.type is a URI relative to it
        if name in RESOURCE_TYPES and name not in _MAY_BE_PATIENT:
            return _OTHER
    return _UNRESOLVED


def _contained_type(container: Mapping[str, Any] | None, local_id: str) -> str | None:
    contained = container.get("contained") if container is not None else None
    for resource in contained if isinstance(contained, list) else ():
        if isinstance(resource, Mapping) and resource.get("id") == local_id:
            rtype = resource.get("resourceType")
            return rtype if isinstance(rtype, str) else None
    return None


# -- containers -----------------------------------------------------------------------------


def _container(resource: Mapping[str, Any], bases: tuple[str, ...], depth: int) -> PatientRefs:
    if depth >= _MAX_DEPTH:
        return _UNKNOWN_UNRESOLVED
    shared: frozenset[str] | None = None
    unresolved = False
    for part in _parts(resource, bases, depth + 1):
        if part.kind is Kind.UNKNOWN:
            return _UNKNOWN_UNRESOLVED
        if part.kind is Kind.PATIENT_DATA:
            shared = part.ids if shared is None else shared & part.ids
            unresolved |= part.unresolved
    if shared is None:
        return _NOT_PATIENT
    if not shared:
        return _UNKNOWN_UNRESOLVED  # parts of different patients: judge them one by one
    return PatientRefs(Kind.PATIENT_DATA, shared, unresolved)


def _parts(
    resource: Mapping[str, Any], bases: tuple[str, ...], depth: int
) -> Iterator[PatientRefs]:
    if resource.get("resourceType") == "Bundle":
        for _, refs in _entries(resource, (), bases, depth):
            yield refs
        return
    stack: list[Any] = [resource.get("parameter")]  # Parameters.parameter[].resource / .part
    while stack:
        items = stack.pop()
        if items is None:
            continue
        if not isinstance(items, list):
            yield _UNKNOWN_UNRESOLVED
            continue
        for item in items:
            if not isinstance(item, Mapping):
                yield _UNKNOWN_UNRESOLVED
                continue
            held = item.get("resource")
            if held is not None:
                ok = isinstance(held, Mapping)
                yield _patients_of(held, bases, depth) if ok else _UNKNOWN_UNRESOLVED
            stack.append(item.get("part"))


def _entries(
    bundle: Mapping[str, Any], prefix: tuple[int, ...], bases: tuple[str, ...], depth: int
) -> Iterator[tuple[tuple[int, ...], PatientRefs]]:
    entries = bundle.get("entry")
    if entries is None:
        return
    if not isinstance(entries, list) or depth >= _MAX_DEPTH:
        yield prefix, _UNKNOWN_UNRESOLVED
        return
    for index, entry in enumerate(entries):
        path = (*prefix, index)
        if not isinstance(entry, Mapping):
            yield path, _UNKNOWN_UNRESOLVED
            continue
        held = entry.get("resource")
        if held is None:
            continue
        if not isinstance(held, Mapping):
            yield path, _UNKNOWN_UNRESOLVED
        elif held.get("resourceType") == "Bundle":
            yield from _entries(held, path, bases, depth + 1)
        else:
            yield path, _patients_of(held, bases, depth + 1)


# -- requests -------------------------------------------------------------------------------

#: Type-level interactions whose parameters are not search criteria.
_NO_CRITERIA: Final = frozenset(
    {Interaction.CREATE, Interaction.HISTORY_TYPE, Interaction.OPERATION}
)


def _search_patients(
    rtype: str, params: Sequence[tuple[str, str]], bases: tuple[str, ...], ids: set[str]
) -> bool:
    """Add the patients ``params`` name to ``ids``; True if some could not be resolved."""
    names = _PARAMS.get(rtype, frozenset())
    unresolved = False
    for name, value in params:
        if name.startswith("_has"):
            unresolved = True  # reverse chaining (search.html#has): names no patient we can see
            continue
        head, _, modifier = name.partition(":")
        code, chained, _ = head.partition(".")
        if "\\" in value and (code in names or code == "_id"):
            unresolved = True  # escapes (search.html#escaping): ',' '$' '|' are not in ids
            continue
        if rtype == "Patient" and code == "_id":
            for item in filter(None, value.split(",")):
                if modifier or chained or not _ID.fullmatch(item):
                    unresolved = True
                else:
                    ids.add(item)
            continue
        if code not in names:
            continue
        if chained or "." in modifier:
            unresolved = True  # chaining (search.html#chaining): the patient is behind a join
            continue
        for item in filter(None, value.split(",")):
            got = _search_value(rtype, code, modifier, item, bases)
            if got == _UNRESOLVED:
                unresolved = True
            elif got:
                ids.add(got)
    return unresolved


def _search_value(rtype: str, code: str, modifier: str, item: str, bases: tuple[str, ...]) -> str:
    """One OR-value of a reference search param (http://hl7.org/fhir/R4/search.html#reference)."""
    if modifier:  # ':[type]' narrows a bare id; ':identifier', ':missing' etc. name no one
        if modifier == "Patient":
            return item if _ID.fullmatch(item) else _UNRESOLVED
        return _by_type(modifier)
    if "/" in item:
        return _literal(item, None, None, bases)
    if _ID.fullmatch(item) and (rtype, code) in PATIENT_ONLY_PARAMS:
        return item
    return _UNRESOLVED  # a bare id of a param that can also target Group, Device, ...
