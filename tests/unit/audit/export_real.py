"""Exports made by ``consentry audit export`` of a real log (sealed facts, real entry keys),
for the tests that run the verifier with the real opener (``cli_reports.facts_opener``).

:func:`real_exports` fills a SQLite log once (60 disclosures an hour apart from :data:`T0`,
patients a, b, c in turn, practitioners pr-0 to pr-3 in turn, so every patient meets every
practitioner) and exports it in both formats with several scopes: the texts, by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import tempfile
from pathlib import Path

from middleware.cli import main
from middleware.ledger.keyfile import LedgerKey, write_ledger_key
from middleware.ledger.signing import SigningKey
from middleware.ledger.trust import TrustedKey, TrustPolicy
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.support.audit_fill import fill_audit_log

__all__ = ["HOUR", "PERIOD", "REAL_POLICY", "SCOPES", "T0", "real_exports"]

ORIGIN = "gw.example/fhir/ledger"
KEY = SigningKey.from_seed(ORIGIN, bytes(range(32)))
REAL_POLICY = TrustPolicy(ORIGIN, (TrustedKey(KEY.vkey()),))
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000_000
#: The period of the bounded exports: entries 6 to 29.
PERIOD = ("--since", "2026-01-01T06:00:00Z", "--until", "2026-01-02T05:59:59Z")
#: Each export's name and its ``consentry audit export`` arguments.
SCOPES: dict[str, tuple[str, ...]] = {
    "access-a-period": ("--report", "access-report", "--patient", "Patient/a", *PERIOD),
    "access-a": ("--report", "access-report", "--patient", "Patient/a"),
    "access-b": ("--report", "access-report", "--patient", "Patient/b"),
    "date-a-period": ("--report", "date-range", "--patient", "Patient/a", *PERIOD),
    "date-a": ("--report", "date-range", "--patient", "Patient/a"),
    "date-b": ("--report", "date-range", "--patient", "Patient/b"),
    "date-period": ("--report", "date-range", *PERIOD),
    "user-1-period": ("--report", "user-report", "--agent", "Practitioner/pr-1", *PERIOD),
    "user-1": ("--report", "user-report", "--agent", "Practitioner/pr-1"),
    "user-2": ("--report", "user-report", "--agent", "Practitioner/pr-2"),
    "accounting-a": ("--report", "accounting", "--patient", "Patient/a"),
    "accounting-a-period": ("--report", "accounting", "--patient", "Patient/a", *PERIOD),
    "accounting-b": ("--report", "accounting", "--patient", "Patient/b"),
}


@functools.cache
def real_exports() -> dict[tuple[str, str], str]:
    """Every export of :data:`SCOPES` in both formats, by (name, format)."""
    with tempfile.TemporaryDirectory(prefix="consentry-exports-") as name:
        folder = Path(name)
        write_ledger_key(folder / "ledger.key", LedgerKey(KEY, ORIGIN))
        asyncio.run(_fill(folder / "audit.db"))
        made = {}
        for scope, argv in SCOPES.items():
            for fmt in ("ndjson", "csv"):
                out = folder / f"{scope}.{fmt}"
                with contextlib.redirect_stdout(io.StringIO()):
                    status = main(
                        [
                            "audit", "export", "--store", f"sqlite:{folder / 'audit.db'}",
                            "--key-file", str(folder / "ledger.key"), *argv,
                            "--format", fmt, "--out", str(out),
                        ]
                    )  # fmt: skip
                assert status == 0, (scope, fmt)
                made[scope, fmt] = out.read_text(encoding="utf-8")
        return made


async def _fill(path: Path) -> None:
    store = await SqliteLogStore.open(path)
    try:
        patients = ["Patient/a", "Patient/b", "Patient/c"]
        await fill_audit_log(
            store, KEY, ORIGIN, count=60, patients=patients, start_us=T0, step_us=HOUR
        )
    finally:
        await store.close()
