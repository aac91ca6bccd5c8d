"""Bar charts as plain geometry, for the dashboard's inline SVG (pure: no I/O, no markup).

The pages draw charts server-side as inline ``<svg>`` (no JavaScript, no image files, nothing
the Content-Security-Policy has to allow: SVG presentation attributes such as ``fill`` are not
styles). This module computes where each bar goes; the template
``compliance/_charts.html`` writes the elements, escaped by Jinja2's autoescape like any text.
Every chart on a page is followed by a table of the same numbers (WCAG 2.2 SC 1.1.1: the
table is the chart's text alternative), so a bar carries its numbers in a ``<title>`` too
but nothing is only in the picture.

The colours are the PDF reports' meaning (``middleware.audit.charts``: business hours, after
hours, break-the-glass), darkened so each has at least 3:1 contrast on white (WCAG 2.2 SC
1.4.11, non-text contrast), and each series also has its name in the legend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "AFTER_HOURS",
    "BREAK_GLASS",
    "BUSINESS",
    "Bar",
    "Chart",
    "Label",
    "columns",
    "nice_top",
    "rows",
]

#: Series colours (hex), each >= 3:1 on white.
BUSINESS: Final = "#0b4f8a"
AFTER_HOURS: Final = "#8a5300"
BREAK_GLASS: Final = "#8f1d1d"
_PAD_LEFT: Final = 44.0
_PAD_BOTTOM: Final = 48.0
_PAD_TOP: Final = 12.0


@dataclass(frozen=True, slots=True)
class Bar:
    """One rectangle: position and size in the chart's coordinates, its colour, and what it
    stands for (the bar's ``<title>``)."""

    x: float
    y: float
    width: float
    height: float
    fill: str
    title: str


@dataclass(frozen=True, slots=True)
class Label:
    """A text at ``(x, y)``; ``anchor`` is the SVG ``text-anchor``; ``rotate`` degrees."""

    x: float
    y: float
    text: str
    anchor: str = "middle"
    rotate: float = 0.0


@dataclass(frozen=True, slots=True)
class Chart:
    """A chart ``width`` x ``height`` (the ``viewBox``): its bars, axis labels and grid lines
    (``(x1, y1, x2, y2)``); ``empty`` when there is nothing to draw."""

    width: float
    height: float
    bars: tuple[Bar, ...]
    labels: tuple[Label, ...]
    lines: tuple[tuple[float, float, float, float], ...]
    empty: bool


def nice_top(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is >= ``value`` (at least 1): the
    top of a value axis a reader can count on."""
    top = 1
    while True:
        for step in (1, 2, 5):
            if step * top >= value:
                return step * top
        top *= 10


def columns(
    categories: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[int]]],
    *,
    width: float = 640.0,
    height: float = 240.0,
) -> Chart:
    """Stacked columns: one per category, ``series`` as ``(name, colour, values)`` stacked
    bottom up in their order. The value axis has ticks at 0, half and the top
    (:func:`nice_top` of the tallest column); every category is labelled when there are at
    most 16, else every ``n``-th so labels never overlap."""
    totals = [sum(values[i] for _, _, values in series) for i in range(len(categories))]
    if not categories or not any(totals):
        return Chart(width, height, (), (), (), True)
    top = nice_top(max(totals))
    plot_w = width - _PAD_LEFT - 8
    plot_h = height - _PAD_BOTTOM - _PAD_TOP
    slot = plot_w / len(categories)
    bar_w = max(slot * 0.7, 1.0)
    bars: list[Bar] = []
    for i, category in enumerate(categories):
        x = _PAD_LEFT + i * slot + (slot - bar_w) / 2
        base = _PAD_TOP + plot_h
        for name, colour, values in series:
            value = values[i]
            if value <= 0:
                continue
            h = plot_h * value / top
            base -= h
            bars.append(Bar(x, base, bar_w, h, colour, f"{category}: {value} {name}"))
    every = max(1, -(-len(categories) // 16))
    labels = [
        Label(_PAD_LEFT + i * slot + slot / 2, height - _PAD_BOTTOM + 14, c, "end", -45.0)
        for i, c in enumerate(categories)
        if i % every == 0
    ]
    lines = []
    for value in (0, top // 2, top) if top > 1 else (0, top):
        y = _PAD_TOP + plot_h - plot_h * value / top
        labels.append(Label(_PAD_LEFT - 6, y + 4, str(value), "end"))
        lines.append((_PAD_LEFT, y, width - 8, y))
    return Chart(width, height, tuple(bars), tuple(labels), tuple(lines), False)


def rows(
    items: Sequence[tuple[str, int]],
    *,
    colour: str = BUSINESS,
    width: float = 640.0,
    row_height: float = 28.0,
    label_width: float = 220.0,
) -> Chart:
    """Horizontal bars, one row per ``(label, value)`` in the given order, the label left of
    its bar and the value right of it."""
    if not items or not any(value for _, value in items):
        return Chart(width, row_height, (), (), (), True)
    top = max(value for _, value in items)
    room = width - label_width - 56
    bars: list[Bar] = []
    labels: list[Label] = []
    for i, (label, value) in enumerate(items):
        y = i * row_height + 4
        w = room * value / top
        bars.append(Bar(label_width, y, max(w, 1.0), row_height - 8, colour, f"{label}: {value}"))
        labels.append(Label(label_width - 6, y + row_height / 2, _short(label, 30), "end"))
        labels.append(Label(label_width + w + 6, y + row_height / 2, str(value), "start"))
    height = len(items) * row_height + 4
    return Chart(width, height, tuple(bars), tuple(labels), (), False)


def _short(text: str, most: int) -> str:
    """``text`` cut to ``most`` characters with an ellipsis (the table holds it whole)."""
    return text if len(text) <= most else text[: most - 1] + "\u2026"
