"""Remove from an answer every resource the caller may not see (enforcement issue, item 3).

The verdict on a single resource is someone else's job (the consent decision over the
resource's patient compartment, contained resources included); this module applies it to
*every* place a resource can sit in a FHIR answer, so that none escapes:

- a plain resource: released whole or not at all;
- ``Bundle.entry[].resource`` of any Bundle type, recursively through nested Bundles (a
  ``$everything`` or document Bundle inside a searchset);
- ``searchset`` (matches and ``include``s) / ``history`` / ``collection`` entries: a denied
  entry is removed; an entry without a resource (a history ``DELETE``) names a resource only
  by its URL, so it is removed too (FHIR R4 bundle.html: such entries carry
  ``request.url``, which can reveal that a record existed);
- ``batch-response`` / ``transaction-response``: entries map one to one onto the request
  (R4 http.html §3.1.0.11.2), so a denied entry is replaced by a ``404 Not Found`` answer
  carrying a generic OperationOutcome, with no location, etag or resource: the same answer a
  missing resource gets; every other entry's ``response.outcome`` (and an OperationOutcome
  as its resource) keeps only its structured part, never the upstream's free text;
- ``document`` / ``message``: the entries only make sense together (the Composition or
  MessageHeader refers to the rest), so one denied entry withholds the whole Bundle;
- ``Bundle.total`` is removed from every Bundle that went through the filter: a count of the
  unfiltered matches is an oracle (HAPI's consent interceptor had to clear it for this reason).

Paging links are not handled here: the pipeline replaces them with sealed cursors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from middleware.pipeline.exchange import own_outcome

__all__ = ["FilterStats", "Verdict", "filter_answer"]

#: True when the caller may see this resource (contained resources included).
Verdict = Callable[[Mapping[str, Any]], bool]

_ONE_TO_ONE = frozenset({"batch-response", "transaction-response"})
_ALL_OR_NOTHING = frozenset({"document", "message"})
_MAX_DEPTH = 16


@dataclass(slots=True)
class FilterStats:
    """How many resources the filter released and withheld (for audit and metrics)."""

    kept: int = 0
    removed: int = 0


def filter_answer(document: Any, allowed: Verdict) -> tuple[Any | None, FilterStats]:
    """``document`` (decoded JSON, changed in place) with every resource the caller may not
    see removed, and the counts; ``None`` when nothing of it may be released.

    Anything that is not a JSON object with a ``resourceType`` is withheld: an answer the
    filter cannot read is an answer it cannot vouch for.
    """
    stats = FilterStats()
    return _filter(document, allowed, stats, 0), stats


def _filter(node: Any, allowed: Verdict, stats: FilterStats, depth: int) -> Any | None:
    if not isinstance(node, dict) or not isinstance(node.get("resourceType"), str):
        stats.removed += 1
        return None
    if node["resourceType"] != "Bundle":
        if allowed(node):
            stats.kept += 1
            return node
        stats.removed += 1
        return None
    if depth >= _MAX_DEPTH:
        stats.removed += 1
        return None
    return _filter_bundle(node, allowed, stats, depth)


def _filter_bundle(
    bundle: dict[str, Any], allowed: Verdict, stats: FilterStats, depth: int
) -> dict[str, Any] | None:
    bundle.pop("total", None)
    kind = bundle.get("type")
    entries = bundle.get("entry")
    if entries is None:
        return bundle
    if not isinstance(entries, list):
        stats.removed += 1
        return None
    kept: list[Any] = []
    for entry in entries:
        released = _filter_entry(entry, allowed, stats, depth, one_to_one=kind in _ONE_TO_ONE)
        if released is not None:
            kept.append(released)
        elif kind in _ALL_OR_NOTHING:
            return None
        elif kind in _ONE_TO_ONE:
            kept.append({"response": {"status": "404 Not Found", "outcome": _not_found()}})
    if kept:
        bundle["entry"] = kept
    else:
        del bundle["entry"]
    return bundle


def _filter_entry(
    entry: Any, allowed: Verdict, stats: FilterStats, depth: int, *, one_to_one: bool
) -> Any | None:
    if not isinstance(entry, dict):
        stats.removed += 1
        return None
    if one_to_one:
        _own_response(entry)
    resource = entry.get("resource")
    if resource is None:
        # A batch/transaction answer without a resource (Prefer: return=minimal, a delete, an
        # error) answers the caller's own request entry, which the pipeline authorised before
        # forwarding it. Any other resource-less entry is withheld (see the module docstring).
        if one_to_one:
            return entry
        stats.removed += 1
        return None
    released = _filter(resource, allowed, stats, depth + 1)
    if released is None:
        return None
    entry["resource"] = released
    return entry


def _own_response(entry: dict[str, Any]) -> None:
    """Reduce the upstream's ``response.outcome`` of a batch/transaction-response entry to
    its structured part (:func:`~middleware.pipeline.exchange.own_outcome`), in place.

    Its free text is the upstream's own wording and names upstream ids (HAPI answers every
    entry with ``Successfully updated resource "Observation/o-1/_history/2"``), which neither
    the id mapping nor the consent decision ever sees; the gateway releases no upstream free
    text. An outcome that is not an object is dropped."""
    resource = entry.get("resource")
    if isinstance(resource, dict) and resource.get("resourceType") == "OperationOutcome":
        entry["resource"] = own_outcome(resource)  # Prefer: return=OperationOutcome
    response = entry.get("response")
    if not isinstance(response, dict) or "outcome" not in response:
        return
    outcome = response["outcome"]
    issues = outcome.get("issue") if isinstance(outcome, dict) else None
    if isinstance(issues, list) and any(isinstance(issue, dict) for issue in issues):
        response["outcome"] = own_outcome(outcome)
    else:
        del response["outcome"]


def _not_found() -> dict[str, Any]:
    """A fresh generic OperationOutcome, the same one a missing resource gets."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "not-found", "diagnostics": "not found"}],
    }
