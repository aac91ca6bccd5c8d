"""Fixtures of the log-store contract suite: every test runs on memory, SQLite and PostgreSQL.

PostgreSQL cases carry the ``integration`` marker (a real PostgreSQL) and run in the normal
``pytest`` run; if the server is unreachable they fail (the fixture raises), never skip.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from middleware.storage.ledger_base import LogStore
from tests.contract.backends import POSTGRES, Backend, make_backend


@pytest.fixture(params=["memory", "sqlite", POSTGRES])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """A fresh, empty log on each backend."""
    made = await make_backend(request.param, tmp_path)
    yield made
    await made.cleanup()


@pytest.fixture(params=["sqlite", POSTGRES])
async def sql_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """A fresh, empty log on each SQL backend (where a DBA can type SQL)."""
    made = await make_backend(request.param, tmp_path)
    yield made
    await made.cleanup()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[LogStore]:
    opened = await backend.open()
    yield opened
    await opened.close()
