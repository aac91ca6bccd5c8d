"""Search guards: refuse the searches that can infer hidden values (enforcement issue).

The answer filter removes every resource the caller may not see, but a search's *criteria* are
evaluated upstream over everything: a match on a hidden value is still a signal. These
parameter families (FHIR R4 search.html) test values the caller may not see:

=============  ==============================================================================
family         what it is, and why it leaks
=============  ==============================================================================
``_has``       reverse chaining (``_has:Observation:patient:code=X``): filters by resources
               that are never returned
``chain``      chained parameters (``subject.name``, ``subject:Patient.name``): filters by the
               referenced resource, which may be hidden
``_filter``    the filter expression language: chains and ``_has`` in another syntax
``_text``      narrative search: matches text the filter never shows
``_content``   whole-resource text search, likewise
``:missing``   the ``:missing`` modifier: tests whether an element has a value
``_list``      membership of a List the caller may not be allowed to read
``_query``     named queries: semantics defined by the upstream, so unknown to us
``_sort``      sorting by a param in :attr:`GuardPolicy.sensitive_sort` (ordering reveals it)
``count``      ``_summary=count`` or ``_count=0``: the number of matches, hidden ones included
``_total``     ``_total=accurate`` / ``estimate``: likewise
=============  ==============================================================================

By default patient-context callers are refused every inference family and user and system
callers none (:class:`GuardPolicy`). ``count`` and ``_total`` are not forwarded to anyone who
does not see everything: a search the gateway answers itself (``check_search(counted=True)``)
answers them by counting what the caller may see (:mod:`~middleware.pipeline.counting`, bounded
by the ``count_*`` fields of :class:`GuardPolicy`); where the
query would reach the upstream as sent (a search inside a forwarded transaction) they are
refused. ``_sort`` is refused only by a param listed as sensitive; the list is empty by
default, so ``_sort`` is allowed until an operator names sensitive params.
Refusals are :class:`~middleware.errors.Forbidden` naming the family, never the value.

:func:`pin_patient` narrows a patient-context type search to the caller's own compartment.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from middleware.errors import Forbidden
from middleware.fhir.compartment import Kind, request_patients
from middleware.fhir.compartment_data import PATIENT_COMPARTMENT, PATIENT_ONLY_PARAMS
from middleware.fhir.request import FhirRequest, Interaction, Level

__all__ = [
    "DEFAULT_PATIENT_REFUSED",
    "Family",
    "GuardPolicy",
    "check_search",
    "count_family",
    "families_of",
    "pin_patient",
]


class Family(enum.StrEnum):
    """A family of search parameters that can reveal hidden values (module docstring)."""

    HAS = "_has"
    CHAIN = "chain"
    FILTER = "_filter"
    TEXT = "_text"
    CONTENT = "_content"
    MISSING = ":missing"
    LIST = "_list"
    QUERY = "_query"
    SORT = "_sort"
    COUNT = "count"
    TOTAL = "_total"


#: What patient-context callers are refused by default: every inference family.
DEFAULT_PATIENT_REFUSED: Final = frozenset(
    {
        Family.HAS,
        Family.CHAIN,
        Family.FILTER,
        Family.TEXT,
        Family.CONTENT,
        Family.MISSING,
        Family.LIST,
        Family.QUERY,
        Family.SORT,
    }
)

_NAMED: Final = {
    "_has": Family.HAS,
    "_filter": Family.FILTER,
    "_text": Family.TEXT,
    "_content": Family.CONTENT,
    "_list": Family.LIST,
    "_query": Family.QUERY,
}
_COUNTS: Final = frozenset({Family.COUNT, Family.TOTAL})
_COUNT_NAMES: Final = frozenset({"_summary", "_count", "_total"})
_FHIR_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    """Which families each caller kind is refused (``patient``, ``user``, ``system``).

    A caller of any other kind (``none``, or one this module does not know) gets the union of
    all three: unknown means most restricted. :attr:`Family.SORT` in a set refuses ``_sort`` by
    a param of ``sensitive_sort`` (e.g. ``{"birthdate"}``), in either direction. With
    ``refuse_counts`` (the default) ``count`` and ``_total`` are refused to every caller that
    does not see everything, whatever its kind, unless the gateway counts them itself
    (``counted``); a set that names them refuses them even then, and even to callers that see
    everything.

    A count the gateway makes releases at most ``count_max_resources`` matches (the caller's
    cap: 422 ``too-costly`` beyond); its upstream work is bounded apart, by hard limits the
    caller cannot tune: ``count_max_walked`` upstream matches (hidden ones included) over
    ``count_max_pages`` upstream pages of ``count_page_size`` (also the bound of refilling a
    page), within ``count_deadline_seconds``, and at most ``count_max_concurrent`` counts at
    once in a process (:mod:`~middleware.pipeline.counting`).
    """

    patient: frozenset[Family] = DEFAULT_PATIENT_REFUSED
    user: frozenset[Family] = frozenset()
    system: frozenset[Family] = frozenset()
    sensitive_sort: frozenset[str] = frozenset()
    refuse_counts: bool = True
    count_max_resources: int = 10_000
    count_max_walked: int = 100_000
    count_max_pages: int = 1_000
    count_page_size: int = 1_000
    count_deadline_seconds: float = 20.0
    count_max_concurrent: int = 4

    def refused(
        self, caller_kind: str, *, sees_everything: bool, counted: bool = False
    ) -> frozenset[Family]:
        """The families refused to a caller of ``caller_kind`` (``counted``: the gateway
        answers ``count`` and ``_total`` itself)."""
        by_kind = {"patient": self.patient, "user": self.user, "system": self.system}
        families = by_kind.get(caller_kind, self.patient | self.user | self.system)
        if self.refuse_counts and not sees_everything and not counted:
            return families | _COUNTS
        return families


def families_of(name: str, value: str, sensitive_sort: frozenset[str]) -> set[Family]:
    """The families one ``name=value`` search parameter belongs to (possibly none).

    Reserved names are matched case-insensitively and values trimmed and lower-cased: an
    upstream that reads them loosely must not slip past a guard that reads them strictly.
    """
    found: set[Family] = set()
    head, _, modifier = name.strip().partition(":")
    code = head.lower()
    if code in _NAMED:
        found.add(_NAMED[code])
        if code == "_has":
            return found
    if "." in head or "." in modifier:
        found.add(Family.CHAIN)
    if "missing" in {m.strip().lower() for m in re.split(r"[:.]", modifier)}:
        found.add(Family.MISSING)
    items = {item.strip().lower() for item in value.split(",")}
    if code == "_summary" and "count" in items:
        found.add(Family.COUNT)
    if code == "_count" and value.strip().lstrip("0") == "" and value.strip():
        found.add(Family.COUNT)  # a page of nothing: only its total or next link would answer
    if code == "_total" and items & {"accurate", "estimate"}:
        found.add(Family.TOTAL)
    if code == "_sort":
        keys = {item.lstrip("-").partition(":")[0] for item in items}
        if keys & {s.lower() for s in sensitive_sort}:
            found.add(Family.SORT)
    return found


def check_search(
    params: Sequence[tuple[str, str]],
    *,
    caller_kind: str,
    sees_everything: bool,
    policy: GuardPolicy,
    counted: bool = False,
) -> None:
    """Raise :class:`Forbidden` when a search parameter (decoded ``(name, value)`` pairs) is in
    a family ``policy`` refuses to this caller; the message names the family, never a value.
    ``counted``: the caller answers ``count`` and ``_total`` by counting what may be released
    (:mod:`~middleware.pipeline.counting`), so they are not refused for being counts.
    Returns ``None`` when the search may go on."""
    refused = policy.refused(caller_kind, sees_everything=sees_everything, counted=counted)
    if not refused:
        return
    for name, value in params:
        hit = families_of(name, value, policy.sensitive_sort) & refused
        if hit:
            family = min(hit)  # deterministic when one parameter is in several families
            raise Forbidden(f"search parameters of the {family} family are not allowed here")


def count_family(params: Sequence[tuple[str, str]]) -> Family | None:
    """What a search asks to be counted: :attr:`Family.COUNT` (``_summary=count`` or
    ``_count=0``: the number alone), :attr:`Family.TOTAL` (``_total=accurate|estimate``: a
    page and the number), or None. Read as :func:`families_of` reads them (loosely), so that
    whatever the guard sees as a count is counted rather than forwarded."""
    found: set[Family] = set()
    for name, value in params:
        # The names families_of reads counts from, read as it reads them (5 -> 1 us a search).
        if name.strip().partition(":")[0].lower() in _COUNT_NAMES:
            found |= families_of(name, value, frozenset()) & _COUNTS
    if Family.COUNT in found:
        return Family.COUNT
    return Family.TOTAL if found else None


def _pin_param(resource_type: str) -> str:
    """The param that names the patient of ``resource_type``: one targeting Patient alone
    when there is one (``patient`` first), else the first compartment param."""
    only = sorted(p for t, p in PATIENT_ONLY_PARAMS if t == resource_type)
    if "patient" in only:
        return "patient"
    if only:
        return only[0]
    return PATIENT_COMPARTMENT[resource_type][0][0]


def pin_patient(
    resource_type: str | None,
    params: Sequence[tuple[str, str]],
    patient_id: str,
    *,
    base_urls: Sequence[str] = (),
) -> list[tuple[str, str]]:
    """``params`` with one more criterion that keeps a type search inside ``patient_id``'s
    compartment: ``_id=<id>`` on Patient, else ``<param>=Patient/<id>`` with the param chosen
    by :func:`_pin_param` (``Observation`` → ``patient``, ``AdverseEvent`` → ``subject``).

    Criteria are ANDed (FHIR R4 search.html#combining), so the answer is a subset of that
    patient's compartment (resources naming the patient only in a secondary param, such as a
    Condition's ``asserter``, are not matched). Raises :class:`Forbidden` for a system search
    (``None``) or a type outside the Patient compartment (Medication, Practitioner...: decide
    those before pinning), and when the query already names another patient or names patients
    in a way that cannot be checked (chains, ``_has``, ``:identifier``, escapes; see
    :func:`middleware.fhir.compartment.request_patients`): an upstream that reads only the
    first or last of repeated parameters must not be given the choice.
    """
    if not _FHIR_ID.fullmatch(patient_id):
        raise ValueError("patient_id must be a FHIR id")
    if resource_type is None or resource_type not in PATIENT_COMPARTMENT:
        raise Forbidden("this resource type cannot be searched in a patient context")
    request = FhirRequest(
        interaction=Interaction.SEARCH_TYPE,
        method="GET",
        level=Level.TYPE,
        path=resource_type,
        resource_type=resource_type,
    )
    refs = request_patients(request, params, base_urls=base_urls)
    if refs.unresolved or (refs.kind is Kind.PATIENT_DATA and refs.ids - {patient_id}):
        raise Forbidden("a patient-context search may name only the caller's patient")
    if resource_type == "Patient":
        return [*params, ("_id", patient_id)]
    return [*params, (_pin_param(resource_type), f"Patient/{patient_id}")]
