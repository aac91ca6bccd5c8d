"""An export for a patient no entry names: it says so, and the verifier does not call it
tampered.

Before, ``consentry audit export --patient P`` for a patient without entries wrote a header
without a chain, and ``verify-export`` reported ``chain-missing`` (what a file with its chain
removed gets). Now the header's chain is ``export.NO_CHAIN`` (``""``): the audit index names no
entry of the patient at the checkpoint. Nothing in a file can prove that (a pseudonym is not
linkable to the patient offline, and there is no chain whose end a tail could prove), so the
verifier says ``chain-none-unproven``, as it says ``chain-tail-unproven`` for a tail it cannot
prove, and nothing else; a file claiming no chain but holding lines is still caught.
"""

from __future__ import annotations

import json

import pytest

from middleware.audit.export import NO_CHAIN
from tests.unit.audit.test_cli import Setup, setup  # noqa: F401

NOBODY = "Patient/nobody"


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
@pytest.mark.parametrize("report", ["accounting", "access-report"])
def test_a_patient_without_entries_gets_an_export_that_says_so(
    setup: Setup,  # noqa: F811
    report: str,
    fmt: str,
) -> None:
    args = ("--report", report, "--patient", NOBODY, "--format", fmt)
    path = setup.export(f"nobody.{fmt}", *args)
    first = path.read_text().splitlines()[0]
    header = json.loads(first.removeprefix("#"))
    assert (header["patient"], header["chain"]) == (NOBODY, NO_CHAIN.hex())
    assert len(path.read_text().splitlines()) == (1 if fmt == "ndjson" else 2)  # no lines
    status, verdict = setup.verify(path)
    assert status == 1  # not verified complete: nothing proves it
    assert [f["code"] for f in verdict["findings"]] == ["chain-none-unproven"]
    assert (verdict["scope"]["chain"], verdict["scope"]["tail"]) == ("", "unproven")
    assert verdict["rows"] == 0


def test_a_no_chain_header_over_a_patients_lines_is_caught(setup: Setup) -> None:  # noqa: F811
    """The claim cannot hide entries: a's export with its header's chain set to "none" has
    every line foreign to it."""
    path = setup.export("a.ndjson", "--report", "access-report", "--patient", "Patient/a")
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    header["chain"] = NO_CHAIN.hex()
    path.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    status, verdict = setup.verify(path)
    assert status == 1
    found = {f["code"] for f in verdict["findings"]}
    assert "chain-foreign" in found
    assert "chain-none-unproven" not in found


def test_a_header_without_its_chain_is_still_chain_missing(setup: Setup) -> None:  # noqa: F811
    """``null`` (the chain removed) stays what it was: chain-missing."""
    path = setup.export("nobody.ndjson", "--report", "accounting", "--patient", NOBODY)
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    header["chain"] = None
    path.write_text(json.dumps(header) + "\n")
    assert "chain-missing" in {f["code"] for f in setup.verify(path)[1]["findings"]}
