"""A gateway replica recording one consent change, to be killed between its two writes.

    python -m tests.crash.consent_changer sqlite PATH SEED_HEX CONSENT_JSON
    python -m tests.crash.consent_changer postgres DSN#SCHEMA SEED_HEX CONSENT_JSON

Opens the log and consent stores of the shared database, builds the consent service the way
the app does (ledger key: ``SigningKey.from_seed(ORIGIN, SEED)``, the tests' replicas' key),
and records ``CONSENT_JSON`` (an update of an existing consent, a revocation when its status
ends the consent's force) with :func:`middleware.consent.changes.commit_change`, the consent
API's own code: the ledger append, then the store write. The store handed to the service is
wrapped so that its ``record`` (the store write) first prints ``appended <ledger index>`` and
then waits forever: the append has committed, the store write has not begun, and the test
SIGKILLs the process there. This hook lives here, not in the gateway.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from middleware.consent.changes import commit_change
from middleware.consent.decide import Defaults
from middleware.consent.parse import parse_consent
from middleware.consent.records import is_revocation
from middleware.consent.service import Call, ConsentService, Trail
from middleware.ledger.leaf import EntryKind
from middleware.ledger.service import LedgerService
from middleware.ledger.signing import SigningKey, derive_box_key
from middleware.storage.consent_base import LOOKUP_PURPOSE, ConsentRecord, ConsentStore
from middleware.storage.consent_postgres import PostgresConsentStore
from middleware.storage.consent_sqlite import SqliteConsentStore
from tests.contract.append_worker import open_store

#: The ledger origin the test's replicas sign for (an injected key's origin is its name).
ORIGIN = "consentry.example/ledger"


class KilledBeforeRecord:
    """The failpoint: a consent store whose ``record`` never starts (see the module
    docstring); every other method is the real store's."""

    def __init__(self, inner: ConsentStore) -> None:
        self._inner = inner
        self.armed = False  # only the change's own store write stops (not a catch-up's)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def record(self, record: ConsentRecord) -> ConsentRecord:
        if not self.armed:
            return await self._inner.record(record)
        sys.stdout.write(f"appended {record.ledger_index}\n")
        sys.stdout.flush()
        await asyncio.Event().wait()  # the kill comes here
        raise AssertionError("unreachable")


async def open_consents(backend: str, target: str, lookup_key: bytes) -> ConsentStore:
    if backend == "sqlite":
        return await SqliteConsentStore.open(Path(target), lookup_key=lookup_key, busy_timeout=30)
    dsn, _, schema = target.partition("#")
    return await PostgresConsentStore.open(dsn, lookup_key=lookup_key, schema=schema, max_size=2)


async def main(backend: str, target: str, seed: bytes, resource: dict[str, Any]) -> None:
    log = await open_store(backend, target)
    key = SigningKey.from_seed(ORIGIN, seed)
    consents = await open_consents(backend, target, derive_box_key(key, LOOKUP_PURPOSE))

    async def opened_log() -> Any:
        return log

    failpoint = KilledBeforeRecord(consents)

    async def opened_consents() -> ConsentStore:
        return failpoint

    ledger = LedgerService(opened_log, key, origin=ORIGIN, origin_stated=False)
    svc = ConsentService(
        ledger,
        opened_consents,
        admin_role="admin",
        defaults=Defaults(),
        base_url="http://gateway.test/fhir",
        receipt_base="http://gateway.test",
    )
    current = await (await svc.store()).current(resource["id"])
    assert current is not None, "the change updates a consent the test created"
    policy = parse_consent(resource)
    revoke = is_revocation(current.status, policy.status)
    failpoint.armed = True
    await commit_change(
        svc,
        EntryKind.CONSENT_REVOKE if revoke else EntryKind.CONSENT,
        resource,
        policy,
        previous=current,
        call=Call(operation="update", consent_id=resource["id"]),
        trail=Trail(consent_id=resource["id"], patient=policy.patient),
    )
    raise AssertionError("the store write returned: the failpoint did not hold")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]), json.loads(sys.argv[4])))
