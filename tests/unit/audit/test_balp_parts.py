"""The rules of the BALP element builders (``middleware.audit.parts``) at their edges: the
outcome of each HTTP status class boundary, instants in UTC whatever the machine's zone, and the
refusals with their messages. Mutation testing found each boundary and message unasserted."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import pytest

from middleware.audit.balp import exchange_events, interaction_codes
from middleware.audit.parts import (
    AgentInfo,
    coding,
    gateway_agent,
    instant,
    outcome_for_status,
    patient_reference,
    transaction_entity,
)
from middleware.fhir.request import FhirRequest, Interaction, Level

GATEWAY = AgentInfo(base_url="https://gw.example/fhir", name="consentry-gw")
WHEN = datetime(2025, 3, 1, 12, 30, 5, 123000, tzinfo=UTC)
SEARCH = FhirRequest(Interaction.SEARCH_TYPE, "GET", Level.TYPE, "Observation", b"", "Observation")


# R4 audit-event-outcome: 0 success, 4 minor failure, 8 serious failure, 12 major failure.
@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (0, "12"),  # no response was produced
        (99, "12"),
        (100, "0"),
        (399, "0"),
        (400, "4"),
        (499, "4"),
        (500, "8"),
        (599, "8"),
        (600, "12"),
    ],
    ids=str,
)
def test_outcome_of_each_status_class_boundary(status: int, outcome: str) -> None:
    assert outcome_for_status(status) == outcome


class _NoOffset(tzinfo):
    """A zone that does not know its offset: the datetime is naive in all but name."""

    def utcoffset(self, dt: datetime | None) -> timedelta | None:
        return None

    def dst(self, dt: datetime | None) -> timedelta | None:
        return None

    def tzname(self, dt: datetime | None) -> str | None:
        return None


def _vread_own_reference() -> list[str]:
    vread = FhirRequest(
        Interaction.VREAD, "GET", Level.INSTANCE, "Observation/o1/_history/2", b"",
        "Observation", "o1", "2",
    )  # fmt: skip
    (event,) = exchange_events(
        vread,
        identity=None,
        patients=[],
        outcome_status=200,
        recorded=WHEN,
        request_id="rid",
        raw_request=b"GET",
        gateway=GATEWAY,
        client_address=None,
    )
    return [e["what"]["reference"] for e in event["entity"] if "reference" in e.get("what", {})]


def test_a_vread_names_the_version_it_read() -> None:
    assert _vread_own_reference() == ["Observation/o1/_history/2"]


# R4 restful-interaction codes and AuditEvent.action (C R U D E), as BALP pairs them.
@pytest.mark.parametrize(
    ("interaction", "codes"),
    [
        (Interaction.READ, ("read", "R")),
        (Interaction.SEARCH_COMPARTMENT, ("search-type", "E")),  # R4 has no compartment code
        (Interaction.CREATE, ("create", "C")),
        (Interaction.PATCH, ("patch", "U")),
        (Interaction.DELETE, ("delete", "D")),
        (Interaction.GRAPHQL, ("operation", "E")),
        (Interaction.INVALID, (None, "E")),
    ],
    ids=lambda v: getattr(v, "name", None),
)
def test_interaction_codes_the_audit_index_records(
    interaction: Interaction, codes: tuple[str | None, str]
) -> None:
    assert interaction_codes(interaction) == codes


# --- refusals and their messages --------------------------------------------------------


def _query_without_raw() -> object:
    return exchange_events(
        SEARCH,
        identity=None,
        patients=[],
        outcome_status=200,
        recorded=WHEN,
        request_id="rid",
        raw_request=b"",
        gateway=GATEWAY,
        client_address=None,
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: instant(datetime(2025, 1, 1)), "recorded must be an aware datetime"),
        (
            lambda: instant(datetime(2025, 1, 1, tzinfo=_NoOffset())),
            "recorded must be an aware datetime",
        ),
        (lambda: patient_reference("Observation/1"), "patient must be a FHIR id or Patient/<id>"),
        (lambda: transaction_entity(""), "request_id must not be empty"),
        (_query_without_raw, "raw_request is required for a query interaction"),
        (lambda: AgentInfo("", "gw"), "AgentInfo needs a base URL and a name"),
        (lambda: AgentInfo("https://gw.example", ""), "AgentInfo needs a base URL and a name"),
    ],
    ids=[
        "naive-instant",
        "zone-without-offset",
        "not-a-patient",
        "empty-request-id",
        "query-without-raw",
        "gateway-without-url",
        "gateway-without-name",
    ],
)
def test_refusals_say_why(call: Callable[[], Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        call()
    assert str(caught.value) == message


# --- instants are UTC, whatever the machine's zone ----------------------------------------


@pytest.fixture
def machine_in_new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local zone set to one that is never UTC (POSIX TZ, -5 or -4 hours)."""
    monkeypatch.setenv("TZ", "EST+05EDT,M3.2.0,M11.1.0")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("machine_in_new_york")
@pytest.mark.parametrize(
    "recorded",
    [WHEN, WHEN.astimezone(timezone(timedelta(hours=2)))],
    ids=["utc", "plus-two-hours"],
)
def test_an_instant_is_utc_whatever_the_machines_zone(recorded: datetime) -> None:
    assert instant(recorded) == "2025-03-01T12:30:05.123Z"


def test_the_gateway_agent_has_its_network_address_unless_told_not_to() -> None:
    type_ = coding("http://dicom.nema.org/resources/ontology/DCM", "110153", "Source Role ID")
    assert gateway_agent(GATEWAY, type_)["network"] == {
        "address": "https://gw.example/fhir",
        "type": "5",
    }
    assert "network" not in gateway_agent(GATEWAY, type_, network=False)
