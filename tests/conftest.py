"""Fixtures for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _structlog_restored() -> Iterator[None]:
    """Tests (and the CLI commands they run) configure structlog for their own stream, which
    is process-global: put back the configuration a test found, so no later test logs into a
    stream that a finished test captured or closed."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
