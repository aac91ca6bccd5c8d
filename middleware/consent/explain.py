"""A :class:`~middleware.consent.decide.Decision` as plain JSON-ready data, for an explain endpoint.

The shape is ours (not a FHIR resource): ``effect``, ``obligations`` (code and labels as FHIR
Codings, sorted) and ``trace`` (one object per step: ``consent``, ``ledgerIndex``,
``provision``, ``reason``, and ``memberships``: which of the principal's memberships the
provisions on the path to the deciding one name, when given the principal and the policies;
absent keys for absent values). Traces may reveal sensitivity labels: the caller decides who
may see them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from middleware.consent.decide import Decision
from middleware.consent.model import Policy, Provision
from middleware.consent.request import Principal

__all__ = ["explain"]


def explain(
    decision: Decision, principal: Principal | None = None, policies: Iterable[Policy] = ()
) -> dict[str, Any]:
    """Return ``decision`` as a dict of str, int, list and dict only. Pure and deterministic.

    With the ``principal`` and the ``policies`` it was decided on, a step that names a
    provision also lists, under ``memberships``, the principal's memberships (organizations,
    care teams, groups, roles it acts for) that an actor of that provision or of one of its
    ancestors names: the reason a consent about a team applied to one of its members.
    """
    named = _named_memberships(principal, policies)
    steps: list[dict[str, Any]] = []
    for step in decision.trace:
        item: dict[str, Any] = {"reason": step.reason}
        if step.consent_id is not None:
            item["consent"] = step.consent_id
        if step.ledger_index is not None:
            item["ledgerIndex"] = step.ledger_index
        if step.provision_path is not None:
            item["provision"] = step.provision_path
            matched = named.get((step.consent_id, step.ledger_index, step.provision_path))
            if matched:
                item["memberships"] = matched
        steps.append(item)
    return {
        "effect": decision.effect,
        "obligations": [
            {
                "code": obligation.code,
                "labels": [
                    {"system": system, "code": code} if system else {"code": code}
                    for system, code in sorted(obligation.labels)
                ],
            }
            for obligation in decision.obligations
        ],
        "trace": steps,
    }


def _named_memberships(
    principal: Principal | None, policies: Iterable[Policy]
) -> dict[tuple[str | None, int | None, str], list[str]]:
    """``(consent, ledger index, provision path)`` -> the memberships of ``principal`` named
    by an actor on the path from the consent's root to that provision (sorted)."""
    found: dict[tuple[str | None, int | None, str], list[str]] = {}
    if principal is None or not principal.memberships:
        return found
    for policy in policies:
        for node, named in _walk(policy.root, frozenset()):
            matched = named & principal.memberships
            if matched:
                found[(policy.consent_id, policy.ledger_index, node.path)] = sorted(matched)
    return found


def _walk(node: Provision, above: frozenset[str]) -> Iterator[tuple[Provision, frozenset[str]]]:
    named = above | node.actor_refs
    yield node, named
    for child in node.children:
        yield from _walk(child, named)
