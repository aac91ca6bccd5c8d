"""A serving process collects cycles less often than CPython's default (middleware.serving
.GC_THRESHOLDS): at 700 the collector ran every ~25 reads on requests still in flight."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from middleware.serving import GC_THRESHOLDS, collect_less


@pytest.fixture
def thresholds() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


@pytest.mark.usefixtures("thresholds")
def test_serving_sets_the_measured_thresholds_and_still_collects() -> None:
    gc.set_threshold(700, 10, 10)
    collect_less()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # fewer collections of the first generation
    assert all(threshold > 0 for threshold in GC_THRESHOLDS)  # 0 would turn collection off
