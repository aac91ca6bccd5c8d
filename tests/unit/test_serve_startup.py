"""``consentry serve`` on a store it cannot use stops at once, saying which store and why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_serve_refuses_an_unusable_store_with_path_and_cause(tmp_path: Path) -> None:
    """Was: it started, /healthz answered 200 and every FHIR request 503, and the log said
    "ledger unavailable at startup" with no path or cause."""
    missing = tmp_path / "no-such-dir" / "x.db"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "middleware.cli",
            "serve",
            "--store",
            f"sqlite:{missing}",
            "--upstream",
            "http://127.0.0.1:9/fhir",
            "--port",
            "0",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert f"consentry: cannot start: store sqlite:{missing}" in done.stderr
    assert "unable to open database file" in done.stderr
    assert f"the directory {missing.parent} does not exist" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    # Was: the ledger key file was written before the store was tried, naming the origin of
    # this failed start (127.0.0.1:0/fhir/ledger), which the next, corrected start then kept.
    assert not (tmp_path / "consentry-ledger.key").exists()
