"""PDF renderings of the accounting and the reports (reportlab), for people to read.

* :func:`accounting_pdf`: for the patient, in plain language: the gateway's name, the period
  covered, a table of disclosures (date, to whom, what, why, how often), and one paragraph on
  what was left out and why (:func:`~middleware.audit.report_bundle.left_out_text`; a
  164.528(a)(2) suspension is never mentioned).
* :func:`access_pdf`: "who looked at your record" (a patient access report) and
  :func:`user_pdf` (one user's activity): charts (accesses per day with after-hours and
  break-the-glass accesses in colour, accesses by user or by patient) and the table, with
  after-hours and break-the-glass rows highlighted.

Every page says "Page n of m". Pure: report values in, PDF bytes out (no clock: the time the
report was made is the report's own). Table cells are plain strings except where text must
wrap, which keeps a 1,000-row report well under the 2-second goal (docs/audit.md).
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, tzinfo
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.lib.utils import simpleSplit
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    Flowable,
    LongTable,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    TableStyle,
)

from middleware.audit.accounting import Accounting
from middleware.audit.charts import activity_chart, top_chart
from middleware.audit.report_bundle import left_out_text
from middleware.audit.reports import (
    AccessLine,
    AccessReport,
    AfterHours,
    UserReport,
    access_line,
    access_result,
    format_time,
    patients_touched,
)
from middleware.audit.row import AuditRow

__all__ = ["access_pdf", "accounting_pdf", "date_range_pdf", "user_pdf"]

_STYLES = getSampleStyleSheet()
_BODY = ParagraphStyle("body", parent=_STYLES["BodyText"], fontSize=9.5, leading=12)
_CELL = ParagraphStyle("cell", parent=_BODY, fontSize=8, leading=9.5)
_TITLE = _STYLES["Title"]
_H2 = _STYLES["Heading2"]
_AFTER_BG = colors.HexColor("#fbeccb")
_BTG_BG = colors.HexColor("#f5c6c0")


class _NumberedCanvas(Canvas):  # type: ignore[misc]  # reportlab ships no type hints
    """Draws "Page n of m" on every page: pages are kept until the total is known."""

    def __init__(self, *args: Any, footer: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pages: list[dict[str, Any]] = []
        self._footer = footer

    def showPage(self) -> None:  # noqa: N802  (reportlab's name)
        self._pages.append(dict(self.__dict__))
        self._startPage()

    def save(self) -> None:
        total = len(self._pages)
        for state in self._pages:
            self.__dict__.update(state)
            self.setFont("Helvetica", 8)
            self.setFillColor(colors.grey)
            self.drawString(18 * mm, 10 * mm, self._footer)
            self.drawRightString(A4[0] - 18 * mm, 10 * mm, f"Page {self._pageNumber} of {total}")
            super().showPage()
        super().save()


def _render(story: list[Flowable], *, title: str, footer: str) -> bytes:
    out = io.BytesIO()
    doc = SimpleDocTemplate(
        out,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=16 * mm,
        bottomMargin=18 * mm,
        title=title,
        author=footer,
        invariant=True,  # the same report renders the same bytes
    )

    def canvas(*args: Any, **kwargs: Any) -> _NumberedCanvas:
        return _NumberedCanvas(*args, footer=footer, **kwargs)

    doc.build(story, canvasmaker=canvas)
    return out.getvalue()


def _p(text: str, style: ParagraphStyle = _BODY) -> Paragraph:
    return Paragraph(escape(text), style)


def _fit(text: str, width_mm: float) -> str:
    """``text`` wrapped to the column as plain lines (the cell padding is 6 pt): a table cell
    of plain lines renders several times faster than a Paragraph."""
    width = width_mm * mm - 6
    if stringWidth(text, "Helvetica", 7.5) <= width:
        return text
    return "\n".join(simpleSplit(text, "Helvetica", 7.5, width))


def _date(us: int, zone: tzinfo) -> str:
    return format_time(us, zone)[:10]


def _table(header: Sequence[str], rows: list[list[Any]], widths: Sequence[float]) -> LongTable:
    table = LongTable([list(header), *rows], colWidths=[w * mm for w in widths], repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("FONT", (0, 0), (-1, 0), "Helvetica-Bold", 8),
                ("FONT", (0, 1), (-1, -1), "Helvetica", 7.5),
                ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#dde4ee")),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.HexColor("#c8ccd2")),
                ("TOPPADDING", (0, 0), (-1, -1), 2),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
            ]
        )
    )
    return table


def accounting_pdf(accounting: Accounting, *, gateway_name: str, zone: tzinfo = UTC) -> bytes:
    """The accounting of disclosures as a PDF a patient can read (see the module doc)."""
    since, until = _date(accounting.since_us, zone), _date(accounting.until_us, zone)
    story: list[Flowable] = [
        _p("Accounting of disclosures of your health information", _TITLE),
        _p(
            f"From {gateway_name}, made on {_date(accounting.as_of_us, zone)}. This is the list "
            f"of times we disclosed (gave out) your health information to others between "
            f"{since} and {until}, as the HIPAA Privacy Rule (45 CFR 164.528) gives you the "
            "right to know."
        ),
        Spacer(1, 4 * mm),
        _p("Disclosures", _H2),
    ]
    if accounting.entries:
        rows = []
        for entry in accounting.entries:
            first = entry.first
            who = first.recipient.name
            if first.recipient.address:
                who += f", {first.recipient.address}"
            often = (
                f"{entry.count} times, the last on {_date(entry.last_us, zone)}"
                if entry.summarised
                else "once"
            )
            rows.append(
                [
                    _date(first.recorded_us, zone),
                    _fit(who, 48),
                    _fit(", ".join(entry.resource_types) or "not recorded", 40),
                    _fit(first.purpose_text, 32),
                    _fit(often, 32),
                ]
            )
        header = ("Date", "To whom", "What was disclosed", "Why", "How often")
        story.append(_table(header, rows, (22, 48, 40, 32, 32)))
        story.append(
            _p(
                "When we disclosed information to the same recipient for the same reason more "
                "than once, the line shows the first time and then how many times and when "
                "the last one was (45 CFR 164.528(b)(3))."
            )
        )
    else:
        story.append(_p("No disclosure needs to be listed for this period."))
    story += [
        Spacer(1, 4 * mm),
        _p("What this list does not include", _H2),
        _p(left_out_text(accounting)),
    ]
    return _render(story, title="Accounting of disclosures", footer=gateway_name)


def _who(line: AccessLine) -> str:
    """Who made an access, as a patient's report shows it ("you" for the patient)."""
    if line.agent is not None and line.agent == line.patient:
        return "you"
    return line.agent or line.client or "unknown"


def _access_rows(
    lines: Sequence[AccessLine], after: AfterHours, *, by_patient: bool
) -> tuple[list[list[Any]], list[tuple[str, tuple[int, int], tuple[int, int], Any]]]:
    """Table rows and their highlights; in a patient's report their own accesses say "you"."""
    rows: list[list[Any]] = []
    marks: list[tuple[str, tuple[int, int], tuple[int, int], Any]] = []
    for n, line in enumerate(lines, 1):
        when = format_time(line.recorded_us, after.zone)
        who = (line.patient or "") if by_patient else _who(line)
        note = "break the glass" if line.break_glass else ""
        if after.contains(line.recorded_us):
            note = ", ".join(x for x in (note, "after hours") if x)
            if not line.break_glass:
                marks.append(("BACKGROUND", (0, n), (-1, n), _AFTER_BG))
        if line.break_glass:
            marks.append(("BACKGROUND", (0, n), (-1, n), _BTG_BG))
        rows.append(
            [
                when[:10],
                when[11:],
                _fit(who, 38),
                _fit(line.organization or "", 28),
                _fit(", ".join(line.resource_types), 28),
                line.action,
                line.result,
                note,
            ]
        )
    return rows, marks


def _report_pdf(
    lines: Sequence[AccessLine],
    *,
    title: str,
    intro: str,
    gateway_name: str,
    after: AfterHours,
    by_patient: bool,
) -> bytes:
    story: list[Flowable] = [_p(title, _TITLE), _p(intro), Spacer(1, 3 * mm)]
    story.append(activity_chart(lines, after))
    if by_patient:
        names = [(p, n) for p, n, _, _ in patients_touched(_as_user_report(lines))]
        story.append(top_chart(names, "Patients with the most accesses"))
    else:
        counts = Counter(_who(line) for line in lines)
        story.append(top_chart(list(counts.items()), "Accesses by user"))
    start, end = after.start.strftime("%H:%M"), after.end.strftime("%H:%M")
    story += [
        Spacer(1, 3 * mm),
        _p(
            f"Rows in orange were made after hours ({start} to {end}); rows in red used "
            "break-the-glass (emergency) access. Times are in "
            f"{getattr(after.zone, 'key', None) or after.zone.tzname(None) or 'UTC'}."
        ),
        Spacer(1, 2 * mm),
    ]
    if lines:
        rows, marks = _access_rows(lines, after, by_patient=by_patient)
        header = (
            "Date",
            "Time",
            "Patient" if by_patient else "Who",
            "Organization",
            "What",
            "Action",
            "Result",
            "Note",
        )
        table = _table(header, rows, (18, 14, 38, 28, 28, 20, 14, 14))
        table.setStyle(TableStyle(marks))
        story.append(table)
    else:
        story.append(_p("No access in this period."))
    return _render(story, title=title, footer=gateway_name)


def _as_user_report(lines: Sequence[AccessLine]) -> UserReport:
    return UserReport(agent="", since_us=0, until_us=0, lines=tuple(lines))


def access_pdf(
    report: AccessReport, *, gateway_name: str, after: AfterHours | None = None
) -> bytes:
    """The patient access report ("who looked at your record") as a PDF."""
    after = after or AfterHours()
    since = _date(report.since_us, after.zone)
    until = _date(report.until_us, after.zone)
    intro = (
        f"From {gateway_name}: every time someone read or changed your health record between "
        f"{since} and {until}, including attempts that were refused ({len(report.lines)} in all)."
    )
    if report.shredded_periods:
        spans = ", ".join(
            f"{_date(p.start_us, after.zone)} to {_date(p.end_us, after.zone)}"
            for p in report.shredded_periods
        )
        intro += f" Records from {spans} were permanently erased and cannot be shown."
    return _report_pdf(
        report.lines,
        title="Who looked at your record",
        intro=intro,
        gateway_name=gateway_name,
        after=after,
        by_patient=False,
    )


def user_pdf(report: UserReport, *, gateway_name: str, after: AfterHours | None = None) -> bytes:
    """A user activity report (every patient one user touched) as a PDF."""
    after = after or AfterHours()
    since = _date(report.since_us, after.zone)
    until = _date(report.until_us, after.zone)
    patients = len({line.patient for line in report.lines if line.patient})
    intro = (
        f"From {gateway_name}: every access by {report.agent} between {since} and {until}: "
        f"{len(report.lines)} accesses to the records of {patients} patients."
    )
    return _report_pdf(
        report.lines,
        title="User activity report",
        intro=intro,
        gateway_name=gateway_name,
        after=after,
        by_patient=True,
    )


def date_range_pdf(
    rows: Sequence[AuditRow],
    *,
    since_us: int,
    until_us: int,
    gateway_name: str,
    after: AfterHours | None = None,
) -> bytes:
    """The date-range report (every audit entry of a period, in the order given) as a PDF for
    a reviewer: the activity and busiest-user charts, then one line per entry (who acted) (a refused
    access says so; an entry that is no access, such as a consent change, says "recorded")."""
    after = after or AfterHours()
    lines = [access_line(row, access_result(row) or "recorded") for row in rows]
    intro = (
        f"From {gateway_name}: every entry of the audit trail between "
        f"{_date(since_us, after.zone)} and {_date(until_us, after.zone)} ({len(lines)} in all)."
    )
    return _report_pdf(
        lines,
        title="Audit trail by date",
        intro=intro,
        gateway_name=gateway_name,
        after=after,
        by_patient=False,
    )
