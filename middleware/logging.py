"""Operational logs: structlog, one JSON object per line, and no PHI.

Operational logs are for operators; the audit trail (on the ledger) is for compliance. So the
log pipeline ends in :class:`ScrubPHI`, an allow-list: only fields named in
:data:`ALLOWED_FIELDS` survive, every other field is dropped and counted in ``scrubbed``. Query
strings, resource ids, bodies and identities are never among the allowed fields. Values of
allowed string fields are cut to a short length.

A library that logs through the standard library (OpenTelemetry's SDK and exporter: their
messages can quote a client's header) is routed through :class:`LibraryLog` by
:func:`quiet_library`: one fixed event naming the library's logger, never its message or
arguments, and at most one line a minute per logger.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import MutableMapping
from typing import Any, TextIO

import msgspec
import structlog

__all__ = [
    "ALLOWED_FIELDS",
    "LibraryLog",
    "ScrubPHI",
    "configure_logging",
    "get_logger",
    "quiet_library",
]

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
        "ledger_indexes",  # positions in the audit ledger (name no one): rows to repair
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


class LibraryLog(logging.Handler):
    """Standard-library records (WARNING and above) as the fixed event ``library log`` with
    the record's logger name and level: the message and its arguments are dropped unread, as
    they may quote client input. A logger's records within a minute of its last line are
    counted into the next line (``count``), so a client cannot flood the log."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__(logging.WARNING)
        self._interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        now = time.monotonic()
        name = record.name
        last = self._last.get(name)
        held = self._held.get(name, 0) + 1
        if last is not None and now - last < self._interval:
            self._held[name] = held
            return
        self._last[name], self._held[name] = now, 0
        log = get_logger("consentry.library")
        method = log.error if record.levelno >= logging.ERROR else log.warning
        method("library log", logger=name, count=held)


def quiet_library(name: str) -> None:
    """Route the stdlib logger ``name`` (and its children) through :class:`LibraryLog` only:
    it no longer propagates to the root logger, nor reaches ``logging.lastResort`` (stderr).
    Idempotent."""
    library = logging.getLogger(name)
    library.propagate = False
    if not any(isinstance(h, LibraryLog) for h in library.handlers):
        library.addHandler(LibraryLog())
