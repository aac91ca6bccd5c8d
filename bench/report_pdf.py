"""PDF report rendering time: a 1,000-line accounting and a 1,000-row access report.

    python -m bench.report_pdf [--rows 1000] [--repeat 5]

Synthetic, PHI-free audit rows of one patient (13 recipients with long directory names and
addresses that wrap, one to three resource types, three accountable purposes, one in 50
break-the-glass, times spread over 60 days and all hours). The accounting is rendered with
summaries off, so it has one table line per disclosure (the largest PDF ``--rows``
disclosures can make); the access report has its charts and one table row per access.
Reported: the fastest and slowest of ``--repeat`` renderings and the page count. The goal is
at most 2 s for 1,000 rows.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable

from pypdf import PdfReader

from middleware.audit.accounting import AccountingRules, RecipientInfo, account
from middleware.audit.report_pdf import access_pdf, accounting_pdf
from middleware.audit.reports import access_report
from middleware.audit.row import AuditRow
from middleware.ledger.leaf import EntryFlag, EntryKind

AR = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PATIENT = "Patient/bench"
DAY = 86_400_000_000
NOW = 1_740_787_200_000_000
TYPES = ("Observation", "Condition", "MedicationRequest")
PURPOSES = ("HRESCH", "PUBHLTH", "HLEGAL")


def rows(count: int) -> list[AuditRow]:
    """``count`` disclosures of one patient (see the module docstring)."""
    return [
        AuditRow(
            index=i,
            recorded_us=NOW - (i * 37 % 60) * DAY - (i * 7919 % 86_400) * 1_000_000,
            kind=int(EntryKind.DISCLOSURE),
            flags=int(EntryFlag.PERMIT),
            patient=PATIENT,
            pseudonym=b"\x01" * 16,
            agent=f"Practitioner/dr{i % 13}",
            roles=(),
            organization=f"Organization/o{i % 5}",
            client="app",
            purposes=(f"{AR}|{PURPOSES[i % 3]}",),
            action="R",
            event_type="http://terminology.hl7.org/CodeSystem/audit-event-type|rest",
            subtype="search-type",
            outcome="0",
            resource_types=TYPES[: 1 + i % 3],
            entities=(PATIENT,),
            break_glass=i % 50 == 0,
            request_id=f"r{i}",
        )
        for i in range(count)
    ]


def timed(render: Callable[[], bytes], repeat: int) -> tuple[float, float, int]:
    """Fastest and slowest seconds of ``repeat`` renderings, and the page count."""
    times = []
    pdf = b""
    for _ in range(repeat):
        start = time.perf_counter()
        pdf = render()
        times.append(time.perf_counter() - start)
    return min(times), max(times), len(PdfReader(io.BytesIO(pdf)).pages)


def main() -> None:
    """Run the benchmark and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    sample = rows(args.rows)
    directory = {
        f"Practitioner/dr{i}": RecipientInfo(
            f"Dr Example Number {i} of the County Hospital",
            f"{i} Long Street Name, Springfield, IL 62701",
        )
        for i in range(13)
    }
    accounting = account(
        sample,
        patient=PATIENT,
        as_of_us=NOW,
        rules=AccountingRules(summarise=False),
        directory=directory,
    )
    report = access_report(sample, patient=PATIENT, as_of_us=NOW)
    print("| PDF | rows | fastest | slowest | pages |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, render in (
        ("accounting of disclosures", lambda: accounting_pdf(accounting, gateway_name="bench")),
        ("access report with charts", lambda: access_pdf(report, gateway_name="bench")),
    ):
        fastest, slowest, pages = timed(render, args.repeat)
        print(f"| {name} | {args.rows} | {fastest:.2f} s | {slowest:.2f} s | {pages} |")


if __name__ == "__main__":
    main()
