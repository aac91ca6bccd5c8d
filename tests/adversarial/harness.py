"""A ledger under attack, and the three witnesses the attacks are judged by.

:class:`Target` holds a log on SQLite or PostgreSQL (``tests.contract.backends``), the key that
signs it and a trust policy file. Each attack test changes the log (or an export of it) the way
an attacker would, then asks:

- the **pure verifier** (``verify_snapshot`` on an export or on the rows, via
  :meth:`Target.verify_export`),
- the **CLI** (``consentry ledger verify``: exit status and JSON report, :meth:`Target.cli`),
- the **running gateway** (:meth:`Target.gateway_refuses`: opening the log through the app's
  ``LedgerService``, which replays it, must fail closed with 503; :meth:`Target.readyz`).

A careful attacker who edits an export also rewrites its manifest (:func:`reseal`), so the
tests show that the signatures, not the manifest's checksums, catch the edit.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx

from middleware.app import create_app
from middleware.cli import main
from middleware.errors import ServiceUnavailable
from middleware.ledger.entry import NewEntry
from middleware.ledger.export import read_export, write_export
from middleware.ledger.leaf import EntryKind
from middleware.ledger.service import LedgerService
from middleware.ledger.signing import SigningKey
from middleware.ledger.tree import MerkleLevels
from middleware.ledger.trust import TrustedKey, TrustPolicy, format_policy, parse_policy
from middleware.ledger.verify import VerificationReport, verify_snapshot
from middleware.ledger.writer import LedgerWriter
from middleware.settings import load_settings
from middleware.storage.ledger_dump import dump_log
from tests.contract.backends import Backend, PostgresBackend, SqliteBackend
from tests.contract.helpers import PSEUDONYMS

ORIGIN = "gw.test/fhir/ledger"
KEY = SigningKey.from_seed(ORIGIN, bytes([5]) * 32)


class Target:
    """One log, its signing key and its trust policy file."""

    def __init__(self, backend: Backend, tmp: Path) -> None:
        self.backend = backend
        self.tmp = tmp
        self.trust = tmp / "trust.toml"
        self.trust.write_text(format_policy(TrustPolicy(ORIGIN, (TrustedKey(KEY.vkey()),))))

    @property
    def store_args(self) -> list[str]:
        """``--store`` (and ``--schema``) naming this log for the CLI."""
        if isinstance(self.backend, SqliteBackend):
            return ["--store", f"sqlite:{self.backend.path}"]
        assert isinstance(self.backend, PostgresBackend)
        return ["--store", self.backend.dsn, "--schema", self.backend.schema]

    async def append(self, count: int, *, start: int = 0, key: SigningKey = KEY) -> None:
        """What a gateway does: ``count`` entries through the group-commit writer."""
        store = await self.backend.open()
        writer = LedgerWriter(store, key, origin=ORIGIN, max_batch=4)
        await writer.start()
        entries = [
            NewEntry.create(
                EntryKind.ACCESS_OUTCOME if n % 3 else EntryKind.CONSENT,
                f"evidence {n}".encode(),
                recorded_us=n,
                pseudonym=PSEUDONYMS[n % 3],
            )
            for n in range(start, start + count)
        ]
        await asyncio.gather(*(writer.append(e) for e in entries))
        await writer.stop()
        await store.close()

    async def latest_note(self) -> Path:
        """The latest checkpoint, saved the way a client or auditor remembers it."""
        store = await self.backend.open()
        latest = await store.checkpoint()
        await store.close()
        assert latest is not None
        path = self.tmp / f"remembered-{latest.size}.note"
        path.write_text(latest.note)
        return path

    async def cli(self, *argv: str | Path) -> tuple[int, dict[str, Any]]:
        """Run ``consentry ...``; return the exit status and the JSON it printed."""
        out = io.StringIO()

        def run() -> int:
            with contextlib.redirect_stdout(out):
                return main([str(a) for a in argv])

        status = await asyncio.to_thread(run)
        return status, json.loads(out.getvalue() or "{}")

    async def verify_store(self, *extra: str | Path) -> tuple[int, set[str]]:
        """``consentry ledger verify --store ...``: exit status and finding codes."""
        status, report = await self.cli(
            "ledger", "verify", *self.store_args, "--trust", self.trust, *extra
        )
        assert status in (0, 1), report
        assert (status == 0) == report["ok"]
        return status, {f["code"] for f in report["findings"]}

    async def export(self, name: str = "export", *, with_evidence: bool = False) -> Path:
        out = self.tmp / name
        url, schema = self._dump_args()
        write_export(await dump_log(url, schema=schema), out, with_evidence=with_evidence)
        return out

    def verify_export(self, directory: Path, remembered: Path | None = None) -> VerificationReport:
        """The pure verifier on an export (what ``ledger verify --export`` runs)."""
        exported = read_export(directory)
        return verify_snapshot(
            exported.snapshot,
            parse_trust(self.trust),
            proofs=exported.proofs,
            remembered=None if remembered is None else remembered.read_text(),
            problems=exported.problems,
        )

    async def gateway_refuses(self, key: SigningKey = KEY) -> bool:
        """True iff the app's ledger service, signing with ``key``, fails closed (503) opening
        this log."""
        service = LedgerService(self.backend.open, key, origin=ORIGIN)
        try:
            await service.store()
        except ServiceUnavailable:
            return True
        finally:
            await service.aclose()
        return False

    async def readyz(self) -> tuple[int, int]:
        """The gateway on this (SQLite) log: statuses of ``/readyz`` and ``/ledger/checkpoint``."""
        assert isinstance(self.backend, SqliteBackend)
        settings = load_settings(
            overrides={"upstream": "http://upstream.test/fhir", "store": self._dump_args()[0]}
        )
        upstream = httpx.MockTransport(lambda _: httpx.Response(200, json={}))
        app = create_app(settings, upstream=upstream, signer=KEY)
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as c:
                ready = (await c.get("/readyz")).status_code
                checkpoint = (await c.get("/ledger/checkpoint")).status_code
        finally:
            await app.aclose()
        return ready, checkpoint

    def sqlite(self, *statements: str) -> None:
        """Run SQL on the SQLite file with the append-only triggers dropped (a superuser's
        edit); the next open of the store creates them again."""
        assert isinstance(self.backend, SqliteBackend)
        conn = sqlite3.connect(self.backend.path, isolation_level=None)
        try:
            triggers = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            for (name,) in triggers.fetchall():
                conn.execute(f"DROP TRIGGER {name}")
            for statement in statements:
                conn.execute(statement)
        finally:
            conn.close()

    def _dump_args(self) -> tuple[str, str]:
        args = self.store_args
        return args[1], args[3] if len(args) > 2 else "public"


def parse_trust(path: Path) -> TrustPolicy:
    return parse_policy(path.read_text())


def codes(report: VerificationReport) -> set[str]:
    return {f.code for f in report.findings}


def reseal(directory: Path) -> None:
    """Rewrite an export's manifest to match its (edited) files, as a careful attacker would."""
    manifest = json.loads((directory / "manifest.json").read_text())
    for name, meta in manifest["files"].items():
        data = (directory / name).read_bytes()
        meta.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    raw = (directory / "leaves.bin").read_bytes()
    tree = MerkleLevels.of_leaves([raw[i : i + 80] for i in range(0, len(raw), 80)])
    manifest.update(size=tree.size, root=base64.b64encode(tree.root()).decode())
    (directory / "manifest.json").write_text(json.dumps(manifest))


def edit_leaves(directory: Path, edit: Any) -> None:
    """Apply ``edit(list_of_leaves) -> list_of_leaves`` to an export's ``leaves.bin``."""
    raw = (directory / "leaves.bin").read_bytes()
    leaves = [raw[i : i + 80] for i in range(0, len(raw), 80)]
    (directory / "leaves.bin").write_bytes(b"".join(edit(leaves)))
    reseal(directory)
