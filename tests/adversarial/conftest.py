"""Fixtures of the attack tests: a fresh log on SQLite, and on PostgreSQL where the attack
plays out differently there (``integration`` marker; fails, never skips, without a server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.adversarial.harness import Target
from tests.contract.backends import POSTGRES, make_backend


@pytest.fixture
async def sqlite_target(tmp_path: Path) -> Target:
    """A log of 12 entries on SQLite."""
    target = Target(await make_backend("sqlite", tmp_path), tmp_path)
    await target.append(12)
    return target


@pytest.fixture(params=["sqlite", POSTGRES])
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    """A log of 12 entries on SQLite and on PostgreSQL."""
    backend = await make_backend(request.param, tmp_path)
    target = Target(backend, tmp_path)
    await target.append(12)
    yield target
    await backend.cleanup()
