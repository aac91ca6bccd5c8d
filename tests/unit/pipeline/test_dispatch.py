"""The pipeline's entry hands each interaction to the half that enforces it, refuses (403) one
whose half is not given, and the read half refuses a write handed to it (fail closed); the
trail records what its methods say."""

from __future__ import annotations

from typing import Any, cast

import pytest

from middleware.errors import Forbidden
from middleware.fhir.request import FhirRequest, Interaction, Level
from middleware.pipeline.bundles import Bundles
from middleware.pipeline.dispatch import Pipeline
from middleware.pipeline.exchange import Answer, Ask
from middleware.pipeline.flow import Flow
from middleware.pipeline.judge import Trail
from middleware.pipeline.writes import Writes


class _Half:
    """A stand-in half that answers with its own name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.asked: list[Ask] = []

    async def run(self, ask: Ask) -> Answer:
        self.asked.append(ask)
        return Answer(200, [("x-half", self.name)])

    async def __call__(self, ask: Ask) -> Answer:
        return await self.run(ask)


def _ask(interaction: Interaction) -> Ask:
    request = FhirRequest(
        interaction=interaction, method="GET", level=Level.TYPE, path="Observation"
    )
    return Ask(
        request=request,
        body=b"",
        headers={},
        caller=cast(Any, None),
        forward=cast(Any, None),
        self_url="http://gateway.test/fhir/Observation",
        request_id="rid",
        raw_request=b"GET /fhir/Observation",
        client_address=None,
    )


def _pipeline(*, writes: bool = True, bundles: bool = True) -> Pipeline:
    return Pipeline(
        cast(Flow, _Half("reads")),
        cast(Writes, _Half("writes")) if writes else None,
        cast(Bundles, _Half("bundles")) if bundles else None,
    )


@pytest.mark.parametrize(
    ("interaction", "half"),
    [
        # reads
        (Interaction.READ, "reads"),
        (Interaction.VREAD, "reads"),
        (Interaction.SEARCH_TYPE, "reads"),
        (Interaction.HISTORY_INSTANCE, "reads"),
        (Interaction.OPERATION, "reads"),
        # writes
        (Interaction.CREATE, "writes"),
        (Interaction.UPDATE, "writes"),
        (Interaction.PATCH, "writes"),
        (Interaction.DELETE, "writes"),
        # Bundles
        (Interaction.BATCH, "bundles"),
        (Interaction.TRANSACTION, "bundles"),
    ],
    ids=lambda v: v if isinstance(v, str) else v.value,
)
async def test_each_interaction_goes_to_its_half(interaction: Interaction, half: str) -> None:
    answer = await _pipeline().run(_ask(interaction))
    assert answer.headers == [("x-half", half)]


@pytest.mark.parametrize(
    ("interaction", "writes", "bundles"),
    [
        (Interaction.CREATE, False, True),
        (Interaction.BATCH, False, True),
        (Interaction.TRANSACTION, True, False),
    ],
    ids=["create-without-writes", "batch-without-writes", "transaction-without-bundles"],
)
async def test_a_missing_half_refuses(
    interaction: Interaction, writes: bool, bundles: bool
) -> None:
    with pytest.raises(Forbidden):
        await _pipeline(writes=writes, bundles=bundles).run(_ask(interaction))


@pytest.mark.parametrize(
    "interaction",
    [Interaction.CREATE, Interaction.DELETE, Interaction.BATCH],
    ids=lambda v: v.value,
)
async def test_the_read_half_refuses_a_write(interaction: Interaction) -> None:
    flow = Flow.__new__(Flow)  # run() refuses before it reads any part
    with pytest.raises(Forbidden):
        await flow.run(_ask(interaction))


def test_trail_methods_record_what_the_audit_reads() -> None:
    trail = Trail(emergency=True)
    trail.withhold()
    trail.redact()
    trail.release(frozenset({"Patient/a"}), "Observation/1")
    trail.release(frozenset({"Patient/b"}), None)
    trail.override("Patient/c")
    trail.mapped("profile sha256:00")
    trail.decision_committed()
    trail.intent_kept("intent")
    assert (trail.withheld, trail.redacted, trail.narrowed) == (1, 1, True)
    assert trail.released == {"Patient/a", "Patient/b"}
    assert trail.refs == ["Observation/1"]
    assert (trail.break_glass, trail.overridden) == (True, {"Patient/c"})
    assert (trail.mapping, trail.decision_recorded, trail.intent) == (
        "profile sha256:00",
        True,
        "intent",
    )
    trail.intent_closed()
    assert trail.intent is None
    assert trail.emergency


def test_narrow_alone_narrows() -> None:
    trail = Trail()
    trail.narrow()
    assert (trail.narrowed, trail.withheld, trail.redacted) == (True, 0, 0)
