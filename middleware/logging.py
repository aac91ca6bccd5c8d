"""Operational logs: structlog, one JSON object per line, and no PHI.

Operational logs are for operators; the audit trail (on the ledger) is for compliance. So the
log pipeline ends in :class:`ScrubPHI`, an allow-list: only fields named in
:data:`ALLOWED_FIELDS` survive, every other field is dropped and counted in ``scrubbed``. Query
strings, resource ids, bodies and identities are never among the allowed fields. Values of
allowed string fields are cut to a short length.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import msgspec
import structlog

__all__ = ["ALLOWED_FIELDS", "ScrubPHI", "configure_logging", "get_logger"]

#: Fields an operational log event may carry. Adding one here is a privacy decision.
ALLOWED_FIELDS = frozenset(
    {
        "event",
        "level",
        "timestamp",
        "logger",
        "request_id",
        "method",
        "interaction",
        "resource_type",
        "status",
        "duration_ms",
        "upstream_ms",
        "bytes_in",
        "bytes_out",
        "error",
        "error_type",
        "upstream",
        "host",
        "port",
        "base_path",
        "store",
        "client",
        "version",
        "scrubbed",
        "reason",
        "toward",
        "carried",
        "lost",
        "export_job",  # a bulk export job's random id (names no one; the owner's token serves it)
        "count",  # aggregate lines: how many events they stand for
        "seconds",  # ... over how long
    }
)

_MAX_VALUE = 200


class ScrubPHI:
    """structlog processor: keep only :data:`ALLOWED_FIELDS`, count what was dropped."""

    def __call__(self, _logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> Any:
        dropped = [key for key in event_dict if key not in ALLOWED_FIELDS]
        for key in dropped:
            del event_dict[key]
        if dropped:
            event_dict["scrubbed"] = len(dropped)
        for key, value in event_dict.items():
            if isinstance(value, str) and len(value) > _MAX_VALUE:
                event_dict[key] = value[:_MAX_VALUE]
        return event_dict


_encoder = msgspec.json.Encoder()


def _render(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> str:
    return _encoder.encode(dict(event_dict)).decode()


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog for JSON lines on ``stream`` (stdout by default)."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            ScrubPHI(),
            _render,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str = "consentry") -> Any:
    """The gateway's structlog logger."""
    return structlog.get_logger(name)
