"""Counts after filtering, in front of the real upstream with carebundle-10 loaded.

One carebundle patient's own consent denies a practitioner of this module (a practitioner no
other module names, so what other tests consent to does not change its view). The
practitioner's counts, by fhirpy's ``count()`` (``_count=0&_totalMethod=count``),
``_summary=count`` and ``_total=accurate``, are of what it may see: the upstream's own count,
read directly, includes the denied patient's records; the gateway's does not.
"""

from __future__ import annotations

import uuid
from typing import Final

import httpx
import pytest
from fhirpy import AsyncFHIRClient

from tests.integration.enforcing import Caller, Universe, deny_by_own_consent
from tests.integration.sides import Sides
from tests.support import GatewayServer

pytestmark = pytest.mark.integration

PRACTITIONER: Final = f"Practitioner/counter-{uuid.uuid4().hex[:12]}"
#: The carebundle's records carry the purpose-of-use label HTEST (test health data): the
#: practitioner states that purpose, so only the consent decides what it may see.
PURPOSE: Final = ["HTEST"]


@pytest.fixture(scope="module")
def denied(gateway: GatewayServer, http: httpx.Client, carebundle: dict[str, list[str]]) -> str:
    """The third carebundle patient, whose own consent denies :data:`PRACTITIONER`."""
    patient = list(carebundle)[2]
    deny_by_own_consent(gateway, http, patient, PRACTITIONER)
    return patient


@pytest.fixture(scope="module")
def counter(gateway: GatewayServer, http: httpx.Client, denied: str) -> Caller:
    headers = gateway.bearer(
        "counter", "user/*.cruds", fhir_user=PRACTITIONER, purpose_of_use=PURPOSE
    )
    return Caller(http, gateway.base_url, headers)


@pytest.fixture(scope="module")
def universe(sides: Sides, carebundle: dict[str, list[str]]) -> Universe:
    return Universe.read(sides.direct, sides.upstream_base)


def _direct_total(sides: Sides, query: str) -> int:
    answer = sides.direct.get(sides.url(sides.upstream_base, f"{query}&_total=accurate"))
    assert answer.status_code == 200, answer.text
    return int(answer.json()["total"])


def _visible_observations(universe: Universe, denied: str) -> int:
    """Every Observation but the denied patient's and those naming no patient (released to
    nobody by default)."""
    everyone = universe.of_type("Observation") - universe.without_patient("Observation")
    return len(everyone - universe.of(denied, "Observation"))


async def test_fhirpy_count_is_the_count_after_filtering(
    gateway: GatewayServer, counter: Caller, sides: Sides, universe: Universe, denied: str
) -> None:
    """fhirpy's ``count()`` reads ``Bundle.total`` of ``_count=0``: 0 for the denied patient
    (the upstream counts its records), every record for another, and the whole type less the
    denied patient's."""
    client = AsyncFHIRClient(gateway.base_url, authorization=counter.authorization)
    other = next(p for p in universe.owner.values() if p is not None and p != denied)
    hidden = universe.of(denied, "Observation")
    assert _direct_total(sides, f"Observation?subject=Patient/{denied}") == len(hidden) > 0
    observations = client.resources("Observation")
    assert await observations.search(subject=f"Patient/{denied}").count() == 0
    shown = await observations.search(subject=f"Patient/{other}").count()
    assert shown == len(universe.of(other, "Observation")) > 0
    assert await observations.count() == _visible_observations(universe, denied)


def test_total_accurate_gives_the_count_after_filtering(
    counter: Caller, sides: Sides, universe: Universe, denied: str
) -> None:
    """``_total=accurate``: the first page as without it, and ``total`` the number of
    Observations the practitioner may see; ``_summary=count`` the same number alone."""
    expected = _visible_observations(universe, denied)
    assert _direct_total(sides, "Observation?_count=1") > expected  # the upstream's includes them
    page = counter.get("Observation?_count=5&_total=accurate")
    assert page.status_code == 200, page.text
    body = page.json()
    assert body["total"] == expected
    assert len(body["entry"]) == 5
    assert all("_cursor=" in link["url"] for link in body["link"] if link["relation"] == "next")
    alone = counter.get("Observation?_summary=count")
    assert alone.status_code == 200, alone.text
    assert alone.json()["total"] == expected
    assert "entry" not in alone.json()
    hidden = counter.get(f"Observation?subject=Patient/{denied}&_total=accurate")
    assert hidden.json()["total"] == 0
    assert "entry" not in hidden.json()
