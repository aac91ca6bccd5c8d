"""What an R5 provision expression may cost: per consent at compile, per resource at decision.

The attack: a patient (or anyone who may write a consent) writes FHIRPath that is cheap to
send and costly to run. fhirpathpy is pure Python and cannot be interrupted, so before these
bounds eight nested ``children().where(...)`` copies took 8.4 s of event-loop CPU per 20,000-node
resource, 200 such provisions 4.3 s on a 58-node Observation and 8.6 s to compile.
"""

from __future__ import annotations

import time
from typing import Any, Final

import pytest

from middleware.consent import parse_consent
from middleware.consent.expression import (
    MAX_CONSENT_NODES,
    MAX_WORK,
    ExpressionBudget,
    compile_expression,
    holds,
)
from middleware.consent.parse import InvalidConsent
from middleware.consent.records import canonical_consent
from middleware.consent.registry import ConsentRegistry, UnreadableConsent
from middleware.storage.consent_base import ConsentRecord
from middleware.storage.consent_memory import MemoryConsents, MemoryConsentStore
from middleware.storage.ledger_memory import MemoryLog, MemoryLogStore
from tests.unit.consent.builders import PATIENT

UNIT: Final = (
    "children().where(children().where(children().where(children().exists().not())"
    ".exists()).exists()).exists()"
)  # 56 AST nodes, ~1 us per AST node and resource node: the worst shape measured


def fhirpath(text: str) -> dict[str, str]:
    return {"language": "text/fhirpath", "expression": text}


def consent(*texts: str) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": "c1",
        "status": "active",
        "subject": {"reference": PATIENT},
        "decision": "permit",
        "provision": [{"expression": fhirpath(t)} for t in texts],
    }


def balanced(items: list[str]) -> str:
    while len(items) > 1:
        pairs = [f"({a} and {b})" for a, b in zip(items[::2], items[1::2], strict=False)]
        items = pairs + ([items[-1]] if len(items) % 2 else [])
    return items[0]


def response(items: int) -> dict[str, Any]:
    """A QuestionnaireResponse of 7 * items + 7 JSON nodes."""
    answers = [{"valueString": "a"}, {"valueString": "b"}]
    return {
        "resourceType": "QuestionnaireResponse",
        "id": "q",
        "status": "completed",
        "subject": {"reference": PATIENT},
        "item": [{"linkId": str(i), "answer": answers} for i in range(items)],
    }


def issues(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidConsent) as caught:
        parse_consent(raw)
    return list(caught.value.issues)


def test_the_reported_expression_is_refused() -> None:
    """Eight balanced copies (897 characters) are over the length and the node budget."""
    text = balanced([UNIT] * 8)
    assert len(text) == 897
    assert any("longer than 500" in i for i in issues(consent(text)))
    assert any("nodes in all" in i for i in issues(consent(balanced([UNIT] * 4), UNIT)))


def test_the_budget_is_per_consent_and_names_the_element() -> None:
    """Four 56-node expressions fit in 256 nodes; a fifth does not, whichever provision holds
    it, and it is refused once (later expressions are not even parsed)."""
    parse_consent(consent(*[UNIT] * 4))
    found = issues(consent(*[UNIT] * 200))
    assert len(found) == 1
    assert found[0].startswith("Consent.provision[4].expression.expression:")
    assert f"more than {MAX_CONSENT_NODES} nodes in all" in found[0]


def test_compiling_the_worst_consent_is_cheap() -> None:
    """200 provisions of the reported expression: refused in milliseconds, not seconds."""
    start = time.process_time()
    issues(consent(*[balanced([UNIT] * 4)] * 200))
    issues(consent(*["a" + ".exists()" * 55] * 200))
    assert time.process_time() - start < 1.0


@pytest.mark.parametrize(
    "text",
    ["(" * 17 + "true" + ")" * 17, "where(" * 17 + "true" + ")" * 17],
    ids=["parentheses", "calls"],
)
def test_deep_brackets_are_refused_before_parsing(text: str) -> None:
    """ANTLR's time grows with the square of the nesting (4 x 250 parentheses: 0.3 s)."""
    assert any("nests deeper than 16 brackets" in i for i in issues(consent(text)))


def test_brackets_in_strings_do_not_count() -> None:
    parse_consent(consent("status = '" + "(" * 40 + "'"))


def test_a_resource_too_big_for_the_consent_is_unknown() -> None:
    """Each evaluation is bounded by (the consent's AST nodes) x (the resource's JSON nodes)
    <= MAX_WORK; over it the answer is unknown (fail closed), at no cost."""
    policy = parse_consent(consent(*[UNIT] * 4))
    expressions = [p.expression for p in policy.root.children if p.expression is not None]
    weight = expressions[0].budget.nodes
    assert weight == 4 * 56
    fits = (MAX_WORK // weight - 7) // 7
    assert all(holds(e, response(fits)) is True for e in expressions)
    over, huge = response(fits + 1), response(2800)
    start = time.process_time()
    assert all(holds(e, over) is None for e in expressions)
    assert all(holds(e, huge) is None for e in expressions)
    assert time.process_time() - start < 0.05  # the node count stops at the bound


def test_a_lone_expression_has_its_own_budget() -> None:
    compiled, problems = compile_expression(fhirpath(UNIT), "e")
    assert compiled is not None, problems
    assert compiled.budget.nodes == 56
    shared = ExpressionBudget()
    for _ in range(4):
        assert compile_expression(fhirpath(UNIT), "e", shared)[0] is not None
    assert shared.nodes == 224


async def test_a_stored_consent_over_the_budget_fails_closed_at_rebuild() -> None:
    """A consent recorded before the budget (or under an older version) is not compiled into
    a costly policy when the registry reads it: its patient's decisions fail closed."""
    raw = consent(*[UNIT] * 8)  # 448 nodes: accepted before
    store = MemoryConsentStore(MemoryConsents())
    data = canonical_consent(raw)
    await store.record(ConsentRecord(1, "c1", PATIENT, "active", False, 1, data))
    start = time.process_time()
    with pytest.raises(UnreadableConsent):
        await ConsentRegistry(store, MemoryLogStore(MemoryLog())).policies(PATIENT)
    assert time.process_time() - start < 0.2
