"""SEKMET's REST conformance scenario through the gateway, in front of the real upstream.

SEKMET (PyPI ``sekmet-fhir``) is a FHIR test bench; its ``conformance_smoke`` scenario is what
HIS integrators run against a FHIR endpoint. Its runner drives the gateway here as a peer with
the gateway's backend-service token: once in JSON, where the step "Answers FHIR XML when asked
(Accept application/fhir+xml)" must pass (it is skipped unless the CapabilityStatement
advertises XML, so this also proves the statement's ``format`` true), and once with the peer's
wire format set to XML (every body sent as FHIR XML, every answer asked for in XML), where
every step must pass as it does in JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sekmet.config import Peer, PeerAuth, Settings
from sekmet.context import AppContext
from sekmet.scenarios.runner import ScenarioRunner

from tests.integration.sides import Sides
from tests.support import GatewayServer

pytestmark = pytest.mark.integration

XML_STEP = "Answers FHIR XML when asked (Accept application/fhir+xml)"


def _run(tmp_path: Path, gateway: GatewayServer, sides: Sides, wire: str) -> dict[str, Any]:
    token = sides.authorization.removeprefix("Bearer ")
    peer = Peer(
        base_url=gateway.base_url,
        auth=PeerAuth(type="bearer", token=token),
        format=wire,
    )
    settings = Settings(data_dir=str(tmp_path / wire), peers={"gateway": peer})
    (tmp_path / wire).mkdir()
    context = AppContext(settings)
    try:
        result = ScenarioRunner(context, peer="gateway").run("conformance_smoke", record=False)
    finally:
        context.reset_clients()
    return {step.name: step for step in result.steps}


def _detail(step: Any) -> str:
    return f"{step.status}: {step.message} {step.checks}"


def test_sekmet_xml_step_passes_through_the_gateway(
    tmp_path: Path, gateway: GatewayServer, sides: Sides
) -> None:
    """The scenario's XML step: the created Patient read back with ``Accept:
    application/fhir+xml`` is 200, ``Content-Type`` XML, and the identifier the client wrote
    is in it (SEKMET parses the XML with the fhir.resources models and checks it by FHIRPath).
    Skipped by SEKMET, so failed here, when the CapabilityStatement does not claim XML."""
    steps = _run(tmp_path, gateway, sides, "json")
    assert steps[XML_STEP].status == "passed", _detail(steps[XML_STEP])
    failed = {name: _detail(step) for name, step in steps.items() if step.status != "passed"}
    assert not failed


def test_sekmet_scenario_in_xml_passes_through_the_gateway(
    tmp_path: Path, gateway: GatewayServer, sides: Sides
) -> None:
    """The same scenario with every request body in FHIR XML (create, conditional create,
    update, the transaction) and every answer asked in XML: every step passes, as in JSON."""
    steps = _run(tmp_path, gateway, sides, "xml")
    failed = {name: _detail(step) for name, step in steps.items() if step.status != "passed"}
    assert not failed
    assert len(steps) >= 17
