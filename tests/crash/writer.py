"""A gateway process to be killed in the middle of a write (``test_write_kill9``).

``python -m tests.crash.writer WORK WRITE STALL`` builds the gateway the test's settings
describe (SQLite ledger, audit outbox and keys in ``WORK``) in front of :class:`FileUpstream`,
and sends one write (``create``, ``update`` or ``delete`` of an Observation of Patient/p1).
The upstream stalls forever at ``STALL``: ``before`` it applies the write (printing
``forwarded``) or ``after`` (printing ``applied``): the test SIGKILLs the process there.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from middleware.app import Gateway, create_app
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.settings import load_settings
from tests.app.consenting import AUDIENCE, DEV_ISSUER, auth_settings

UPSTREAM = "http://upstream.test:8103/fhir"
GATEWAY = "http://gateway.test/fhir"
OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"text": "x"},
    "subject": {"reference": "Patient/p1"},
}
CAPABILITY = {"resourceType": "CapabilityStatement", "status": "active", "kind": "instance"}


def gateway(work: Path, upstream: FileUpstream) -> Gateway:
    """The gateway of one side of the test: everything durable lives in ``work``."""
    settings = load_settings(
        overrides={
            "upstream": UPSTREAM,
            "public_url": GATEWAY,
            "store": f"sqlite:{work / 'consentry.db'}",
            "audit_outbox": str(work / "outbox.db"),
            "ledger_key_file": str(work / "ledger.key"),
            "auth": auth_settings(work / "dev-issuer.jwk"),
            "consent_jurisdiction": "opt-out",
            "access_log": False,
        }
    )
    return create_app(settings, upstream=httpx.MockTransport(upstream))


class FileUpstream:
    """A FHIR server of Observations kept in one JSON file, written and fsynced before it
    answers: read, ``_tag`` search, create, update (``If-Match``), delete, ``/metadata``.
    ``stall`` makes it stop for good before or after applying a write."""

    def __init__(self, path: Path, stall: str | None = None) -> None:
        self.path = path
        self.stall = stall

    def load(self) -> dict[str, Any]:
        return dict(json.loads(self.path.read_text())) if self.path.exists() else {}

    def save(self, state: dict[str, Any]) -> None:
        with self.path.open("w") as out:
            json.dump(state, out)
            out.flush()
            os.fsync(out.fileno())

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/fhir/")
        state = self.load()
        if request.method == "GET":
            return self._get(path, request.url.params, state)
        if self.stall == "before":
            await _stop("forwarded")
        answer = self._write(request, path, state)
        self.save(state)
        if self.stall == "after":
            await _stop("applied")
        return answer

    def _get(self, path: str, params: httpx.QueryParams, state: dict[str, Any]) -> httpx.Response:
        if path == "metadata":
            return httpx.Response(200, json=CAPABILITY)
        if path == "Observation":
            system, _, code = params.get("_tag", "").partition("|")
            found = [
                r
                for r in state.values()
                if r and {"system": system, "code": code} in r.get("meta", {}).get("tag", [])
            ]
            entries = [{"resource": r, "search": {"mode": "match"}} for r in found]
            return httpx.Response(
                200, json={"resourceType": "Bundle", "type": "searchset", "entry": entries}
            )
        if path not in state:
            return httpx.Response(404)
        resource = state[path]
        return httpx.Response(410) if resource is None else httpx.Response(200, json=resource)

    def _write(self, request: httpx.Request, path: str, state: dict[str, Any]) -> httpx.Response:
        if request.method == "DELETE":
            state[path] = None
            return httpx.Response(204)
        resource = json.loads(request.content)
        if request.method == "POST":
            path = f"Observation/o{len(state) + 1}"
            version = 1
        else:
            current = state[path]
            version = int(current["meta"]["versionId"]) + 1
            if request.headers.get("if-match") != f'W/"{version - 1}"':
                return httpx.Response(412)
        meta = {**resource.get("meta", {}), "versionId": str(version)}
        state[path] = {**resource, "id": path.split("/")[1], "meta": meta}
        return httpx.Response(201 if version == 1 else 200, json=state[path])


async def _stop(marker: str) -> None:
    print(marker, flush=True)
    await asyncio.sleep(3600)


async def main(work: Path, write: str, stall: str) -> None:
    app = gateway(work, FileUpstream(work / "upstream.json", stall))
    issuer = UnsafeDevelopmentIssuer.from_key_file(
        work / "dev-issuer.jwk", DEV_ISSUER, enabled=True
    )
    token = issuer.issue("ehr-backend", scopes="system/*.cruds", audience=AUDIENCE)
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    headers = {"authorization": f"Bearer {token}", "content-type": "application/fhir+json"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gateway.test", headers=headers, timeout=None
    ) as client:
        if write == "create":
            await client.post("/fhir/Observation", json=OBSERVATION)
        elif write == "update":
            changed = {**OBSERVATION, "id": "o1", "status": "amended"}
            await client.put("/fhir/Observation/o1", json=changed)
        else:
            await client.delete("/fhir/Observation/o1")
    print("finished", flush=True)  # never reached: the upstream stalls until the kill


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))
