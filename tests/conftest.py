"""Fixtures for every test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import settings

# Property and fuzz tests bound their own example counts (tests/fuzz/). CI runs them
# derandomized (HYPOTHESIS_PROFILE=ci in .ci/run): the same examples on every run, so a red
# build is reproducible and not a lottery, and no per-example deadline makes a loaded machine
# fail; a developer's run draws new ones each time.
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--upstream",
        choices=("mock", "aiohttp", "native"),
        default="mock",
        help="how the app suite's gateways reach their respx upstream: httpx.MockTransport "
        "(mock), or the named upstream client (native, the default, or aiohttp) over real HTTP "
        "to a local server serving the same routes (tests/served_upstream.py). The leak suite "
        "always runs all three.",
    )


@pytest.fixture(autouse=True)
def _structlog_restored() -> Iterator[None]:
    """Tests (and the CLI commands they run) configure structlog for their own stream, which
    is process-global: put back the configuration a test found, so no later test logs into a
    stream that a finished test captured or closed."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
