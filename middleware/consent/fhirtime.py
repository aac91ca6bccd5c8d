"""FHIR date / dateTime / instant strings as instant bounds.

A FHIR date-time value names an interval at its own precision: ``2022`` is the whole year,
``2022-03-04`` the whole day, ``2022-03-04T10:00:00Z`` the whole second
(http://hl7.org/fhir/R4/datatypes.html#dateTime). :func:`bounds` returns that interval as
``[lower, upper)``. A value without a time has no zone; we read it in UTC (FHIR leaves the zone
of a date to context; UTC keeps the answer the same on every replica).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = ["bounds"]

_DATE_TIME: Final = re.compile(
    r"(?P<y>[0-9]{4})(?:-(?P<m>[0-9]{2})(?:-(?P<d>[0-9]{2})"
    r"(?:T(?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2})(?P<frac>\.[0-9]{1,9})?"
    r"(?P<tz>Z|[+-][0-9]{2}:[0-9]{2}))?)?)?"
)


def bounds(value: str) -> tuple[datetime, datetime] | None:
    """Return ``(lower, upper)`` of the interval ``value`` names, or None if it is not FHIR.

    ``lower`` is inclusive, ``upper`` exclusive; both are aware (UTC for date-only values).
    """
    found = _DATE_TIME.fullmatch(value)
    if found is None:
        return None
    year, month, day, time = found["y"], found["m"], found["d"], found["time"]
    frac = found["frac"] or ""
    try:
        if time is None:
            lower = datetime(int(year), int(month or 1), int(day or 1), tzinfo=UTC)
        else:
            # Python keeps microseconds: cut longer fractions (FHIR allows any number of digits).
            zone = "+00:00" if found["tz"] == "Z" else found["tz"]
            lower = datetime.fromisoformat(f"{year}-{month}-{day}T{time}{frac[:7]}{zone}")
    except ValueError:  # e.g. 2021-02-30, 24:00:00, year 0000
        return None
    return lower, _upper(lower, month=month, day=day, time=time, frac=frac)


def _upper(
    lower: datetime, *, month: str | None, day: str | None, time: str | None, frac: str
) -> datetime:
    try:
        if month is None:
            return lower.replace(year=lower.year + 1)
        if day is None:
            if lower.month == 12:
                return lower.replace(year=lower.year + 1, month=1)
            return lower.replace(month=lower.month + 1)
        if time is None:
            return lower + timedelta(days=1)
        return lower + (timedelta(microseconds=1) if frac else timedelta(seconds=1))
    except (ValueError, OverflowError):  # the end of year 9999
        return datetime.max.replace(tzinfo=UTC)
