"""How deep and how many provisions a Consent may have, checked before anything else reads it.

A Consent's provisions nest (R5 ``Consent.provision.provision``, R4 the same under one root
``Consent.provision``). The structure check (fhir.resources, pydantic) spends several Python
frames per level, and the decision walks every provision on every request, so a Consent
nested ~120 levels deep exhausted the stack wherever it was read: at write time, and on every
later read of the patient's data. Two limits apply:

* **At write time** (create and update in the consent API), the operator's
  ``consent_max_depth`` and ``consent_max_provisions``: a Consent beyond either is refused, 422,
  naming the setting.
* **Whenever a Consent is compiled** (:func:`~middleware.consent.parse.parse_consent`: the
  registry reading stored consents, ``$revoke``), :data:`CEILING`, the most the parser can
  safely take. A stored consent beyond it is never handed to the recursive parts; the registry
  treats it as unreadable (fail closed, :mod:`middleware.consent.registry`).

The walk here is iterative and reads only ``provision`` members, so its cost is linear in the
number of provisions and it cannot itself run out of stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["CEILING", "DEFAULT_LIMITS", "ConsentLimits", "limit_problems"]


@dataclass(frozen=True, slots=True)
class ConsentLimits:
    """``max_depth``: provision nesting (``Consent.provision[i]`` is depth 1);
    ``max_provisions``: provisions in the whole Consent. ``names`` are the settings a refusal
    names, so the caller learns which limit to ask an operator about."""

    max_depth: int
    max_provisions: int
    names: tuple[str, str] = ("consent_max_depth", "consent_max_provisions")

    def __post_init__(self) -> None:
        if self.max_depth < 1 or self.max_provisions < 1:
            raise ValueError("consent limits must be positive")


#: The write-time defaults (the ``consent_max_depth`` and ``consent_max_provisions`` settings):
#: real consents nest two or three levels and hold a handful of provisions.
DEFAULT_LIMITS: Final = ConsentLimits(max_depth=8, max_provisions=200)
#: What the parser takes at all: about five Python frames per level in the structure check
#: keep 32 levels far from the recursion limit; the settings may not exceed it.
CEILING: Final = ConsentLimits(
    max_depth=32, max_provisions=10_000, names=("the parser's depth", "the parser's provisions")
)


def limit_problems(raw: Mapping[str, Any], limits: ConsentLimits) -> list[str]:
    """Problems (``"<path>: <message>"``) when ``raw`` nests provisions deeper than
    ``limits.max_depth`` or holds more than ``limits.max_provisions``; empty otherwise. Pure,
    iterative; values of the wrong JSON type are left to the structure check."""
    depth_name, count_name = limits.names
    count = deepest = 0
    stack: list[tuple[Any, int]] = [(raw.get("provision"), 1)]
    while stack:
        node, level = stack.pop()
        nodes = node if isinstance(node, list) else [node]
        for child in nodes:
            if not isinstance(child, Mapping):
                continue
            count += 1
            deepest = max(deepest, level)
            if level > limits.max_depth or count > limits.max_provisions:
                stack.clear()
                break
            inner = child.get("provision")
            if inner is not None:
                stack.append((inner, level + 1))
    problems = []
    if deepest > limits.max_depth:
        problems.append(
            f"Consent.provision: nests deeper than {limits.max_depth} levels ({depth_name})"
        )
    if count > limits.max_provisions:
        problems.append(
            f"Consent.provision: more than {limits.max_provisions} provisions ({count_name})"
        )
    return problems
