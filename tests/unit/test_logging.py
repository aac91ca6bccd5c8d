"""The PHI scrubber is an allow-list: unknown fields never reach the log."""

from __future__ import annotations

import io
import json

from middleware.logging import ScrubPHI, configure_logging, get_logger


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
