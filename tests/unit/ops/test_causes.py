"""Failure causes for the log: the root cause by class and errno text, never a URL or query."""

from __future__ import annotations

import errno
import sqlite3

import pytest

from middleware.errors import ServiceUnavailable, UpstreamError
from middleware.ops.causes import describe, scrub, store_label


def _chained(outer: Exception, cause: BaseException) -> Exception:
    try:
        raise outer from cause
    except Exception as exc:  # noqa: BLE001 - the test builds a chain as raise...from does
        return exc


def test_the_root_cause_follows_our_message() -> None:
    inner = _chained(
        ServiceUnavailable("ledger store unavailable"),
        sqlite3.OperationalError("unable to open database file"),
    )
    cause = describe(_chained(ServiceUnavailable("ledger unavailable"), inner))
    assert cause.error_type == "OperationalError"
    assert cause.error == "ledger unavailable: unable to open database file"


def test_an_os_error_is_named_by_its_errno_and_text() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('10.0.0.9', 8103)")
    cause = describe(_chained(UpstreamError("upstream server unreachable"), refused))
    assert cause.error_type == "ConnectionRefusedError"
    assert (
        cause.error
        == f"upstream server unreachable: [Errno {errno.ECONNREFUSED}] Connect call failed ('10.0.0.9', 8103)"
    )


def test_an_error_of_ours_alone_is_its_own_cause() -> None:
    cause = describe(ServiceUnavailable("ledger queue is full"))
    assert (cause.error_type, cause.error) == ("ServiceUnavailable", "ledger queue is full")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Cannot connect to http://up:8103/fhir/Patient/p-4711?name=Smith",
            "Cannot connect to <url>",
        ),
        ("bad target /Patient?identifier=123-45-6789 sent", "bad target /Patient?<query> sent"),
        ("Connection refused", "Connection refused"),
    ],
    ids=["url", "query", "plain"],
)
def test_urls_and_queries_are_cut_out(text: str, expected: str) -> None:
    assert scrub(text) == expected


@pytest.mark.parametrize(
    ("url", "label"),
    [
        (
            "postgresql://app:hunter2@db:5432/consentry?sslmode=require",
            "postgresql://app@db:5432/consentry",
        ),
        ("postgres://db/consentry", "postgres://db/consentry"),
        ("sqlite:/var/lib/consentry/x.db", "sqlite:/var/lib/consentry/x.db"),
        ("memory:", "memory:"),
    ],
    ids=["password-and-query", "no-user", "sqlite", "memory"],
)
def test_a_store_is_named_without_its_password(url: str, label: str) -> None:
    assert store_label(url) == label
