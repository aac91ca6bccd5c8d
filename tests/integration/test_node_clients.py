"""SMART's JS client (npm ``fhirclient``) and fhir.js, driven by node through the gateway in
front of the real upstream: the scripts in ``tests/integration/node/`` run every step they
know (discovery, metadata, create, read, update, JSON Patch, paged search, transaction and
batch to ``[base]/``, conditional update, delete) and exit 1 if any step failed.

The clients are installed from npm at the versions docs/clients.md names, once, under
``$PEERS_DIR/node-clients`` (``/tmp/peers`` by default, beside the upstream server), never
into the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Final

import pytest

from tests.integration.sides import Sides
from tests.support import GatewayServer
from tests.support.peers import repo_root

pytestmark = pytest.mark.integration

#: The versions docs/clients.md lists as verified.
CLIENTS: Final = ("fhirclient@2.6.3", "fhir.js@0.0.22")
SCRIPTS: Final = repo_root() / "tests" / "integration" / "node"


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """The npm prefix holding the two clients (installed on first use)."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.fail("node and npm are needed for the node client checks (node >= 20)")
    # Test tooling beside the upstream server's own install, not a secret.
    prefix = Path(os.environ.get("PEERS_DIR", "/tmp/peers")) / "node-clients"
    marker = prefix / "node_modules" / "fhir.js" / "package.json"
    if not marker.exists() or not (prefix / "node_modules" / "fhirclient").exists():
        prefix.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", *CLIENTS],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, f"npm install failed:\n{done.stderr[-3000:]}"
    return prefix / "node_modules"


@pytest.mark.parametrize("script", ["smartjs.js", "fhirjs.js"])
def test_the_node_client_runs_every_step_through_the_gateway(
    script: str, node_modules: Path, gateway: GatewayServer, sides: Sides
) -> None:
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run(
        [node, str(SCRIPTS / script), gateway.base_url, sides.authorization],
        env={**os.environ, "NODE_PATH": str(node_modules)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    steps = [line for line in done.stdout.splitlines() if line.strip()]
    failed = [line for line in steps if "FAIL" in line]
    assert done.returncode == 0, f"{script} failed steps:\n" + "\n".join(failed or steps[-20:])
    assert len(steps) >= 8, f"{script} ran too few steps:\n{done.stdout}{done.stderr}"
    assert not failed
