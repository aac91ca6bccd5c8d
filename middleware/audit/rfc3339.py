"""Microseconds since the epoch as RFC 3339 UTC text with six fraction digits.

The one spelling of a recorded time in exports (:mod:`middleware.audit.export`, which
:mod:`middleware.audit.export_read` requires back exactly) and in report CSVs and Bundles
(:mod:`middleware.audit.report_csv`): ``2026-01-02T03:04:05.000006Z`` (RFC 3339 §5.6).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["format_us"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_HOUR_US = 3_600_000_000
#: ``YYYY-MM-DDTHH:`` of recently formatted hours: an export's rows share their hours, and
#: strftime was a fifth of a row's formatting (bounded; cleared when full).
_HOURS: dict[int, str] = {}
#: ``MM:SS.`` of each second of an hour: a lookup instead of formatting two numbers.
_MINUTE_SECOND = tuple(f"{m:02d}:{s:02d}." for m in range(60) for s in range(60))


def format_us(us: int) -> str:
    """Microseconds since the epoch as RFC 3339 UTC, ``2026-01-02T03:04:05.000006Z`` (the same
    text as ``strftime("%Y-%m-%dT%H:%M:%S.%fZ")`` of that instant)."""
    hour, rest = divmod(us, _HOUR_US)  # floor division: times before 1970 stay correct
    prefix = _HOURS.get(hour)
    if prefix is None:
        if len(_HOURS) >= 4096:
            _HOURS.clear()
        prefix = (_EPOCH + timedelta(microseconds=hour * _HOUR_US)).strftime("%Y-%m-%dT%H:")
        _HOURS[hour] = prefix
    second, micro = divmod(rest, 1_000_000)
    return f"{prefix}{_MINUTE_SECOND[second]}{micro:06d}Z"
