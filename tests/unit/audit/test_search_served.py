"""Served AuditEvents (ids from the ledger index, meta naming the entry) and the bulk export's
in-memory jobs: ids round-trip with one spelling each, and the jobs' limits hold."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from middleware.audit.bulk import ExportJob, ExportJobs
from middleware.audit.searchset import (
    LEDGER_INDEX_SYSTEM,
    event_id,
    parse_event_id,
    searchset,
    served_event,
)
from middleware.errors import NotFound, TooManyRequests

# --- ids ------------------------------------------------------------------------------------


@given(st.integers(0, 10**18 - 1), st.integers(0, 9999))
def test_event_ids_round_trip(index: int, n: int) -> None:
    assert parse_event_id(event_id(index, n)) == (index, n)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "1-",
        "-1",
        "01-0",
        "1-01",
        "+1-0",
        "1-0-0",
        "a-0",
        "1.0",
        " 1-0",
        "1-0 ",
        "\u0661-\u0660",
    ],
    ids=[
        "empty",
        "no-n",
        "no-n-after-dash",
        "no-index",
        "leading-zero-index",
        "leading-zero-n",
        "sign",
        "three-parts",
        "letters",
        "dot",
        "leading-space",
        "trailing-space",
        "arabic-digits",
    ],
)
def test_other_spellings_are_no_event_id(text: str) -> None:
    assert parse_event_id(text) is None


def test_served_event_names_its_entry_and_keeps_the_rest() -> None:
    event = {
        "resourceType": "AuditEvent",
        "id": "old",
        "meta": {"profile": ["p"], "tag": [{"system": LEDGER_INDEX_SYSTEM, "code": "9"}]},
        "action": "R",
    }
    served = served_event(event, index=7, n=1, gateway_root="https://gw.example")
    assert served["id"] == "7-1"
    assert served["meta"] == {
        "profile": ["p"],
        "source": "https://gw.example/ledger/receipt/7",
        "tag": [{"system": LEDGER_INDEX_SYSTEM, "code": "7"}],
    }
    assert served["action"] == "R"
    assert event["id"] == "old"  # the rendered event is not changed


def test_searchset_links() -> None:
    bundle = searchset([], base_url="b", self_url="s", next_url=None)
    assert bundle["link"] == [{"relation": "self", "url": "s"}]
    assert "total" not in bundle
    paged = searchset([{"id": "1-0"}], base_url="b", self_url="s", next_url="n")
    assert paged["link"][1] == {"relation": "next", "url": "n"}
    assert paged["entry"][0]["fullUrl"] == "b/AuditEvent/1-0"


# --- bulk jobs --------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _lines(job: ExportJob, count: int) -> None:
    for n in range(count):
        job.add(str(n).encode())


async def _blocked(job: ExportJob) -> None:
    await asyncio.Event().wait()


async def _broken(job: ExportJob) -> None:
    raise RuntimeError("secret detail")


def _start(jobs: ExportJobs, produce: object, owner: str = "a") -> ExportJob:
    return jobs.start(owner=owner, request="r", transaction_time="t", produce=produce)  # type: ignore[arg-type]


async def _settle(job: ExportJob) -> None:
    assert job.task is not None
    await job.task


@pytest.mark.parametrize(
    ("count", "per_file", "files"),
    [(0, 3, []), (1, 3, [1]), (3, 3, [3]), (7, 3, [3, 3, 1])],
    ids=["none", "one", "one-full-file", "three-files"],
)
async def test_lines_fill_files_in_order(count: int, per_file: int, files: list[int]) -> None:
    jobs = ExportJobs(clock=Clock(), events_per_file=per_file)
    job = _start(jobs, lambda j: _lines(j, count))
    await _settle(job)
    assert job.state == "done"
    assert [len(f) for f in job.files] == files
    joined = b"".join(job.ndjson(n) for n in range(len(files)))
    assert joined == b"".join(f"{n}\n".encode() for n in range(count))


async def test_too_many_events_fail_the_job_with_a_plain_reason() -> None:
    jobs = ExportJobs(clock=Clock(), max_events=5)
    job = _start(jobs, lambda j: _lines(j, 6))
    await _settle(job)
    assert job.state == "failed"
    assert job.error is not None
    assert "_since" in job.error
    with pytest.raises(NotFound):
        job.ndjson(0)


async def test_a_broken_producer_fails_without_its_detail() -> None:
    job = _start(ExportJobs(clock=Clock()), _broken)
    await _settle(job)
    assert job.state == "failed"
    assert "secret" not in str(job.error)


async def test_running_jobs_are_bounded_and_cancel_frees_a_place() -> None:
    jobs = ExportJobs(clock=Clock(), max_running=2)
    first = _start(jobs, _blocked)
    _start(jobs, _blocked)
    with pytest.raises(TooManyRequests):
        _start(jobs, _blocked)
    jobs.cancel(first.id, "a")
    _start(jobs, _blocked)
    await jobs.aclose()


async def test_a_job_is_its_owners_only() -> None:
    jobs = ExportJobs(clock=Clock())
    job = _start(jobs, lambda j: _lines(j, 1), owner="a")
    await _settle(job)
    assert jobs.get(job.id, "a") is job
    for owner, job_id in (("b", job.id), ("a", "unknown")):
        with pytest.raises(NotFound):
            jobs.get(job_id, owner)
        with pytest.raises(NotFound):
            jobs.cancel(job_id, owner)


async def test_finished_jobs_are_forgotten_after_keep_seconds() -> None:
    clock = Clock()
    jobs = ExportJobs(clock=clock, keep_seconds=10)
    job = _start(jobs, lambda j: _lines(j, 1))
    await _settle(job)
    clock.now = 10
    _start(jobs, lambda j: _lines(j, 0))  # forgetting happens on the next start
    assert jobs.get(job.id, "a") is job
    clock.now = 10.5
    _start(jobs, lambda j: _lines(j, 0))
    with pytest.raises(NotFound):
        jobs.get(job.id, "a")
    await jobs.aclose()
