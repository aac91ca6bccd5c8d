"""The answer of a forwarded operation: released only when it carries no patient data.

The ``forward`` rows of the operations table name operations that answer about terminology
or a posted resource (:data:`~middleware.pipeline.operation_table.FORWARDABLE`), never about
stored patient data, so their answers are not judged resource by resource. An answer that
does not fit that promise is not what the table vouched for and is withheld (the generic 404):

- its type must be one those operations answer with
  (:data:`~middleware.pipeline.operation_table.FORWARDED_ANSWERS`: Parameters,
  OperationOutcome, ValueSet, CodeSystem, ConceptMap): a Bundle or a Patient is not;
- it may hold, at any depth (contained, Parameters parts), no resource of the Patient
  compartment, no Patient, none of the gateway's own, and nothing the judge counts as patient
  data (:func:`~middleware.pipeline.judge.compartment_of`: a Device naming a patient);
- every OperationOutcome, whatever its status, keeps only its structured part
  (:func:`~middleware.pipeline.exchange.own_outcome`): free text can quote what the upstream
  found elsewhere ("Reference Patient/x resolved: ...").

Pure apart from the rebasing of upstream URLs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Final

from middleware.errors import UpstreamError
from middleware.fhir.compartment import Kind
from middleware.fhir.compartment_data import PATIENT_COMPARTMENT
from middleware.pipeline.exchange import Answer, Ask, Upstreamed, not_found, own_outcome
from middleware.pipeline.judge import GATEWAY_OWNED, compartment_of
from middleware.pipeline.operation_table import FORWARDED_ANSWERS
from middleware.pipeline.release import read_failure
from middleware.proxy.rewrite import Rebaser

__all__ = ["holds_patient_data", "release_forwarded"]

_FORWARDED_HEADERS: Final = frozenset({"content-type", "etag", "last-modified"})
#: Resource types that are a patient's data (the Patient compartment, R4
#: compartmentdefinition-patient) or the gateway's own.
_PATIENT_TYPES: Final = frozenset(PATIENT_COMPARTMENT) | {"Patient"} | GATEWAY_OWNED
#: Upstream error statuses whose OperationOutcome is about the caller's own request.
_OWN_BODY: Final = frozenset({400, 422})


def release_forwarded(
    ask: Ask, up: Upstreamed, *, rebaser: Rebaser, base_urls: Sequence[str]
) -> Answer:
    """The answer to release for a forwarded operation's upstream answer ``up`` (module
    docstring); raises the generic 404, or the error a failed read is raised as."""
    document = up.document
    if _is_outcome(document) and (up.status < 400 or up.status in _OWN_BODY):
        return Answer(up.status, _headers(up, raw=False), own_outcome(document))
    if up.status >= 400:
        raise read_failure(up, ask)
    if not isinstance(document, dict) or not isinstance(document.get("resourceType"), str):
        raise UpstreamError("the upstream server sent no FHIR resource")
    if document["resourceType"] not in FORWARDED_ANSWERS or holds_patient_data(
        document, base_urls=base_urls
    ):
        ask.trail.withhold()
        raise not_found()
    occurrences = rebaser.occurrences(up.raw)
    if not occurrences:
        return Answer(up.status, _headers(up), raw=up.raw)
    rebaser.rewrite(document, occurrences)
    return Answer(up.status, _headers(up), document)


def holds_patient_data(document: Any, *, base_urls: Sequence[str] = ()) -> bool:
    """True when ``document`` holds, at any depth (contained, Bundle entries, Parameters
    parts), a resource of the Patient compartment, a Patient or one of the gateway's own, or
    a resource the judge counts as patient data (:func:`~middleware.pipeline.judge.
    compartment_of`: a Device naming a patient, a Binary with a security context...)."""
    for resource in _resources(document):
        if resource["resourceType"] in _PATIENT_TYPES:
            return True
        if compartment_of(resource, base_urls=base_urls).kind is not Kind.NOT_PATIENT_DATA:
            return True
    return False


def _resources(node: Any) -> Iterator[dict[str, Any]]:
    """Every object with a string ``resourceType`` in ``node``, at any depth."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("resourceType"), str):
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _is_outcome(document: Any) -> bool:
    return isinstance(document, dict) and document.get("resourceType") == "OperationOutcome"


def _headers(up: Upstreamed, *, raw: bool = True) -> list[tuple[str, str]]:
    """The upstream headers released with a forwarded answer; ``raw=False``: for a body the
    gateway rewrote (the upstream's ``etag`` and ``last-modified`` no longer name it)."""
    names = _FORWARDED_HEADERS if raw else _FORWARDED_HEADERS - {"etag", "last-modified"}
    return [(k, v) for k, v in up.headers if k in names]
