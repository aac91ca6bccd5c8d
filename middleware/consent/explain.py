"""A :class:`~middleware.consent.decide.Decision` as plain JSON-ready data, for an explain endpoint.

The shape is ours (not a FHIR resource): ``effect``, ``obligations`` (code and labels as FHIR
Codings, sorted) and ``trace`` (one object per step: ``consent``, ``ledgerIndex``,
``provision``, ``reason``; absent keys for absent values). Traces may reveal sensitivity labels:
the caller decides who may see them.
"""

from __future__ import annotations

from typing import Any

from middleware.consent.decide import Decision

__all__ = ["explain"]


def explain(decision: Decision) -> dict[str, Any]:
    """Return ``decision`` as a dict of str, int, list and dict only. Pure and deterministic."""
    steps: list[dict[str, Any]] = []
    for step in decision.trace:
        item: dict[str, Any] = {"reason": step.reason}
        if step.consent_id is not None:
            item["consent"] = step.consent_id
        if step.ledger_index is not None:
            item["ledgerIndex"] = step.ledger_index
        if step.provision_path is not None:
            item["provision"] = step.provision_path
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
