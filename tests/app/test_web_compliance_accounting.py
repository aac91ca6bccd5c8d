"""The dashboard's reports page offers the accounting of disclosures as NDJSON and streams the
API's bytes through, as for its other downloads."""

from __future__ import annotations

import json

import httpx
import pytest

from middleware.web.api import _decoded
from tests.app import test_web_compliance as base
from tests.app.conftest import WallClock
from tests.app.consenting import Tokens
from tests.app.test_web_compliance_api import tokens, traffic
from tests.app.web_signin import sign_in

__all__ = ["tokens"]
web = base.web  # the same dashboard fixture as the other compliance page tests


async def test_the_dashboard_downloads_the_accounting_as_ndjson(
    web: httpx.AsyncClient, tokens: Tokens, wall: WallClock
) -> None:
    await traffic(web, tokens, wall)
    await sign_in(web, "auditor")
    form = (await web.get("/compliance/reports")).text
    offered = form.split('id="a-format"')[1].split("</select>")[0]
    assert '<option value="ndjson">' in offered
    got = await web.get(
        "/compliance/download", params={"report": "accounting", "patient": "p1", "format": "ndjson"}
    )
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "application/x-ndjson"
    assert got.headers["content-disposition"] == 'attachment; filename="accounting.ndjson"'
    # the verifiable export: its header, then the proven rows of the disclosures
    header, *lines = map(json.loads, got.text.splitlines())
    assert header["format"] == "consentry-audit-export/v1"
    assert header["report"] == "accounting"
    assert {line["columns"]["agent"] for line in lines if line["role"] == "row"} == {
        "Practitioner/dr-b",
        "Practitioner/dr",
    }


@pytest.mark.parametrize("kind", ["application/fhir+ndjson", "application/x-ndjson"])
def test_a_one_line_ndjson_answer_stays_bytes(kind: str) -> None:
    """One disclosure makes a one-line file, which parses as a JSON object by itself: the
    page's API client must still hand the bytes over for the download, not decode them (it
    decoded every media type ending in ``json``, and NDJSON's do)."""
    body = b'{"ledger_index":4}\n'
    answer = httpx.Response(200, content=body, headers={"content-type": kind})
    assert _decoded(answer) == body
    fhir = httpx.Response(200, content=b"{}", headers={"content-type": "application/fhir+json"})
    assert _decoded(fhir) == {}
