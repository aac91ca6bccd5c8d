"""Charts for the PDF reports, drawn with ``reportlab.graphics`` (vector, no image files).

* :func:`activity_chart`: accesses per day (per week or month over longer periods), stacked as
  business hours, after hours and break-the-glass, so the unusual stands out in colour.
* :func:`top_chart`: the agents (or patients) with the most accesses, horizontal bars.

Pure functions of report lines; :func:`buckets` is the counting behind the activity chart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta

from reportlab.graphics.charts.barcharts import HorizontalBarChart, VerticalBarChart
from reportlab.graphics.charts.legends import Legend
from reportlab.graphics.shapes import Drawing, String
from reportlab.lib import colors

from middleware.audit.reports import AccessLine, AfterHours

__all__ = ["AFTER_HOURS", "BREAK_GLASS", "BUSINESS", "activity_chart", "buckets", "top_chart"]

BUSINESS = colors.HexColor("#4a78a8")
AFTER_HOURS = colors.HexColor("#e0a030")
BREAK_GLASS = colors.HexColor("#c0392b")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_BARS = 62


def _day(us: int, after: AfterHours) -> date:
    return (_EPOCH + timedelta(microseconds=us)).astimezone(after.zone).date()


def buckets(
    lines: Sequence[AccessLine], after: AfterHours
) -> tuple[str, list[str], list[int], list[int], list[int]]:
    """``(unit, labels, business, after_hours, break_glass)``: the accesses per day (or per
    week or month when there would be more than 62 days), each counted once: break-the-glass
    first, then after hours, else business hours. Days without accesses count zero."""
    if not lines:
        return "day", [], [], [], []
    days = [_day(line.recorded_us, after) for line in lines]
    first, last = min(days), max(days)
    span = (last - first).days + 1
    key: Callable[[date], date]
    if span <= _MAX_BARS:
        unit, key, step = "day", (lambda d: d), timedelta(days=1)
    elif span <= _MAX_BARS * 7:
        unit, key, step = "week", (lambda d: d - timedelta(days=d.weekday())), timedelta(days=7)
    else:
        unit, key, step = "month", (lambda d: d.replace(day=1)), timedelta(days=31)
    kinds: Counter[tuple[date, str]] = Counter()
    for line, d in zip(lines, days, strict=True):
        kind = (
            "btg"
            if line.break_glass
            else "after"
            if after.contains(line.recorded_us)
            else "business"
        )
        kinds[(key(d), kind)] += 1
    labels: list[date] = []
    cursor = key(first)
    while cursor <= key(last):
        labels.append(cursor)
        cursor = key(cursor + step)
    fmt = "%Y-%m" if unit == "month" else "%m-%d"
    return (
        unit,
        [d.strftime(fmt) for d in labels],
        [kinds[(d, "business")] for d in labels],
        [kinds[(d, "after")] for d in labels],
        [kinds[(d, "btg")] for d in labels],
    )


def activity_chart(
    lines: Sequence[AccessLine], after: AfterHours, *, width: float = 480, height: float = 200
) -> Drawing:
    """Stacked bars of accesses per day/week/month (business, after hours, break the glass)."""
    unit, labels, business, late, btg = buckets(lines, after)
    drawing = Drawing(width, height)
    title = f"Accesses per {unit}"
    drawing.add(String(0, height - 12, title, fontName="Helvetica-Bold", fontSize=10))
    if not labels:
        drawing.add(String(0, height / 2, "No accesses in this period.", fontSize=9))
        return drawing
    chart = VerticalBarChart()
    chart.x, chart.y, chart.width, chart.height = 30, 45, width - 40, height - 75
    chart.data = [business, late, btg]
    chart.categoryAxis.style = "stacked"
    chart.categoryAxis.categoryNames = labels
    chart.categoryAxis.labels.angle = 90
    chart.categoryAxis.labels.boxAnchor = "e"
    chart.categoryAxis.labels.fontSize = 6
    if len(labels) > 31:  # keep the axis readable: every other label
        chart.categoryAxis.categoryNames = [n if i % 2 == 0 else "" for i, n in enumerate(labels)]
    chart.valueAxis.valueMin = 0
    chart.valueAxis.labels.fontSize = 7
    top = max(b + a + g for b, a, g in zip(business, late, btg, strict=True))
    chart.valueAxis.valueStep = max(1, (top + 4) // 5)
    for n, colour in enumerate((BUSINESS, AFTER_HOURS, BREAK_GLASS)):
        chart.bars[n].fillColor = colour
        chart.bars[n].strokeColor = None
    drawing.add(chart)
    legend = Legend()
    legend.x, legend.y = width - 250, height - 8
    legend.alignment = "right"
    legend.columnMaximum = 1
    legend.fontSize = 7
    legend.colorNamePairs = [
        (BUSINESS, "business hours"),
        (AFTER_HOURS, "after hours"),
        (BREAK_GLASS, "break the glass"),
    ]
    drawing.add(legend)
    return drawing


def top_chart(
    names: Sequence[tuple[str, int]], title: str, *, width: float = 480, limit: int = 10
) -> Drawing:
    """Horizontal bars of the first ``limit`` ``(name, count)`` pairs, largest on top."""
    shown = sorted(names, key=lambda p: (-p[1], p[0]))[:limit]
    height = 40 + 16 * max(1, len(shown))
    drawing = Drawing(width, height)
    drawing.add(String(0, height - 12, title, fontName="Helvetica-Bold", fontSize=10))
    if not shown:
        return drawing
    chart = HorizontalBarChart()
    chart.x, chart.y = 170, 10
    chart.width, chart.height = width - 180, height - 30
    chart.data = [[count for _, count in reversed(shown)]]
    chart.categoryAxis.categoryNames = [_short(name) for name, _ in reversed(shown)]
    chart.categoryAxis.labels.fontSize = 7
    chart.valueAxis.valueMin = 0
    chart.valueAxis.labels.fontSize = 7
    chart.valueAxis.valueStep = max(1, (max(c for _, c in shown) + 4) // 5)
    chart.bars[0].fillColor = BUSINESS
    chart.bars[0].strokeColor = None
    drawing.add(chart)
    return drawing


def _short(name: str, most: int = 38) -> str:
    return name if len(name) <= most else name[: most - 1] + "\u2026"
