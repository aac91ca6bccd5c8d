"""bench.stacks, the aggregation behind bench.edge_profile's CPU tables, and bench.cpu_sampler's
stack labels: a wrong table would send the speed work after the wrong code."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cpu_sampler import _stack, _where
from bench.stacks import load, parse_raw, stages

RAW = """\
thread (main);Runner.run (asyncio/runners.py:86);send (aiohttp/client.py:10) 30
thread (main);Runner.run (asyncio/runners.py:86);send (uvicorn/protocols/http/httptools_impl.py:461) 20
thread (main);Runner.run (asyncio/runners.py:86);plan (middleware/audit/plan.py:95);__init__ (<string>:2) 10
thread (main);Runner.run (asyncio/runners.py:86) 5
thread (7): other;work (middleware/ledger/writer.py:1) 99
"""


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    path = tmp_path / "stacks.raw"
    path.write_text(RAW, encoding="utf-8")
    return path


def test_parse_raw_splits_thread_frames_and_count() -> None:
    thread, frames, count = next(parse_raw(["thread (1): a;f (x.py:1);g (y.py:2) 7"]))
    assert (thread, frames, count) == ("thread (1): a", ["f (x.py:1)", "g (y.py:2)"], 7)


def test_layers_charge_the_innermost_frame_and_generated_code_to_its_caller(raw: Path) -> None:
    profile = load(raw, "thread (main)")
    assert profile.samples == 65
    assert profile.layers["aiohttp upstream client (aiohttp, yarl, multidict)"] == 30
    assert profile.layers["uvicorn server edge (httptools protocol, ASGI cycle)"] == 20
    assert profile.layers["audit record and ledger writer"] == 10  # the dataclass __init__
    assert profile.layers["event loop itself (uvloop, C)"] == 5
    assert profile.self_time["__init__ (<string>:2)"] == 10
    assert profile.inclusive["Runner.run (asyncio/runners.py:86)"] == 65


def test_main_is_the_thread_with_most_samples(raw: Path) -> None:
    assert load(raw, "main").samples == 99  # the other thread here
    assert load(raw, "all").samples == 164


def test_sampler_labels_frames_as_py_spy_does() -> None:
    assert _where("/x/lib/python3.11/site-packages/aiohttp/client.py") == "aiohttp/client.py"
    assert _where("/x/lib/python3.11/asyncio/runners.py") == "asyncio/runners.py"
    assert _where("/work/main/middleware/proxy/handler.py") == "middleware/proxy/handler.py"

    def inner() -> str:
        import sys  # noqa: PLC0415

        return _stack(sys._getframe())

    stack = inner()
    assert stack.startswith("thread (main);")
    innermost = stack.rsplit(";", 1)[1]
    assert innermost.startswith("test_sampler_labels_frames_as_py_spy_does.<locals>.inner (")
    assert innermost.endswith("test_bench_stacks.py:55)")  # the function's first line


def test_stages_count_every_sample_whose_stack_holds_the_stage(raw: Path) -> None:
    profile = load(raw, "all")
    counts = stages(profile)
    assert counts["whole loop thread"] == 65  # the other thread's samples are outside it
    assert counts["      audit record (ExchangeAudit.record)"] == 0
    assert sum(counts.values()) == 65
