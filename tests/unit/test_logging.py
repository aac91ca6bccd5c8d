"""The PHI scrubber is an allow-list: unknown fields never reach the log."""

from __future__ import annotations

import io
import json
import logging

from middleware.logging import ScrubPHI, configure_logging, get_logger, quiet_library


def test_scrubber_drops_unknown_fields_and_counts_them() -> None:
    event = {"event": "request", "status": 200, "query": "name=Smith", "patient": "Patient/1"}
    out = ScrubPHI()(None, "info", event)
    assert out == {"event": "request", "status": 200, "scrubbed": 2}


def test_long_values_are_cut() -> None:
    out = ScrubPHI()(None, "info", {"event": "x" * 1000})
    assert len(out["event"]) == 200


def test_configured_logger_writes_json_lines() -> None:
    stream = io.StringIO()
    configure_logging("info", stream)
    get_logger("t").info("hello", status=1, body="{secret}")
    line = json.loads(stream.getvalue())
    assert line["event"] == "hello"
    assert line["level"] == "info"
    assert "body" not in line


def test_a_quieted_librarys_records_are_one_fixed_line_without_their_message() -> None:
    """A library's message may quote a client's header: only its logger name and level are
    written, once a minute, and nothing reaches the root logger (stderr)."""
    stream = io.StringIO()
    configure_logging("info", stream)
    name = "test_logging.chatty"
    quiet_library(name)
    quiet_library(name)  # idempotent: one handler
    chatty = logging.getLogger(f"{name}.child")
    for _ in range(3):
        chatty.warning("Member %s", "Patient/123 John Smith")
    chatty.info("below the handler's level")
    assert "John Smith" not in stream.getvalue()
    (line,) = (json.loads(text) for text in stream.getvalue().splitlines())
    assert {k: v for k, v in line.items() if k != "timestamp"} == {
        "event": "library log",
        "level": "warning",
        "logger": f"{name}.child",
        "count": 1,
    }
    assert not logging.getLogger(name).propagate
    assert len(logging.getLogger(name).handlers) == 1
