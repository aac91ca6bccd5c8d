"""A role with only the board's DML grants opens a PostgreSQL board already upgraded (review
R7c-4). Was: every pool open ran ``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``, which needs
the table's owner (and takes an ACCESS EXCLUSIVE lock each time): such a role could not open
the board at all, every session check answered "none" and every claim 503."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped,unused-ignore]  # typed by asyncpg-stubs

from middleware.storage.breakglass_postgres import PostgresSessionBoard
from tests.contract.backends import PostgresBackend

KEY = bytes(range(32))
P1 = "Patient/p1"
TABLES = ("consentry_breakglass_sessions", "consentry_breakglass_stops")


def _as(dsn: str, user: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


async def test_a_dml_role_opens_an_upgraded_board() -> None:
    backend = await PostgresBackend.create()
    role = f"consentry_t_glass_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(backend.dsn)
    boards: list[PostgresSessionBoard] = []

    async def named() -> str:
        return backend.schema

    try:
        owner = PostgresSessionBoard(backend.dsn, KEY, schema=named)
        boards.append(owner)
        assert await owner.active("dr", [P1], 101.0) == frozenset()  # tables made, upgraded
        await admin.execute(f"CREATE ROLE {role} LOGIN")
        await admin.execute(f'GRANT USAGE ON SCHEMA "{backend.schema}" TO {role}')
        for table in TABLES:
            await admin.execute(
                f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{backend.schema}".{table} TO {role}'
            )
        dml = PostgresSessionBoard(_as(backend.dsn, role), KEY, schema=named)
        boards.append(dml)
        assert await dml.claim("dr", P1, ends=700.0, now=100.0)  # was: must be owner
        await dml.confirm("dr", P1, ends=700.0)
        assert await owner.active("dr", [P1], 101.0) == {P1}
        assert await dml.active("dr", [P1], 101.0) == {P1}
    finally:
        for board in boards:
            await board.aclose()
        await backend.cleanup()
        await admin.execute(f"DROP OWNED BY {role}")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
