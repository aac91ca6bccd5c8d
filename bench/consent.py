"""Consent decisions per second, with compiled policies, on one core (the pure engine, no I/O).

    python -m bench.consent [--seconds 2] [--consents 1,5,20] [--output bench/results/consent.json]

For 1, 5 and 20 consents per patient (R5 Consents of the kinds patients write: a treatment
grant to a care organisation, a research opt-in bounded in time, a deny of sensitive labels, a
deny for one practitioner, a marketing refusal; cycled; R4, each speaking only where its
provision matches), compiled once with ``parse_consent``
as the registry keeps them, it measures:

* **single resource**: ``decide`` for one Observation whose :class:`ResourceSummary` is already
  built (the cost of the decision alone);
* **single resource + summary**: ``summarize`` of the resource, then ``decide``;
* **searchset of 100**: for each of the 100 entries of a searchset Bundle of the patient's
  Observations (varied codes, labels and dates), ``summarize`` then ``decide``; reported as
  decisions/s and Bundles/s.

Each point runs the loop for ``--seconds`` after a warm-up, in this process, on one core (the
loop is single-threaded; nothing else runs). Prints a Markdown table and writes
``bench/results/consent.json``. The goal (the consent issue): >= 100,000 single-resource
decisions/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from middleware.consent import (
    Defaults,
    Policy,
    Principal,
    ResourceSummary,
    decide,
    parse_consent,
    summarize,
)

RESULTS: Final = Path(__file__).parent / "results" / "consent.json"
GOAL: Final = 100_000
PATIENT: Final = "Patient/p1"
NOW: Final = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
V3_REASON: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
V3_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_CONF: Final = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACTION: Final = ("http://terminology.hl7.org/CodeSystem/consentaction", "access")
LOINC: Final = "http://loinc.org"
SCOPE: Final = "http://terminology.hl7.org/CodeSystem/consentscope"

PRINCIPAL: Final = Principal(
    reference="Practitioner/dr",
    roles=frozenset({("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "PHYS")}),
    memberships=frozenset({"Organization/hospital"}),
)
PURPOSES: Final = frozenset({(V3_REASON, "TREAT")})


def _coding(system: str, code: str) -> dict[str, str]:
    return {"system": system, "code": code}


def _actor(reference: str) -> dict[str, Any]:
    role = {
        "coding": [_coding("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "IRCP")]
    }
    return {"role": role, "reference": {"reference": reference}}


_TEMPLATES: Final[tuple[tuple[str, dict[str, Any]], ...]] = (
    # A treatment grant to the care organisation (restricted data included), except
    # psychiatry notes.
    (
        "permit",
        {
            "actor": [_actor("Organization/hospital")],
            "purpose": [_coding(V3_REASON, "TREAT")],
            "securityLabel": [_coding(V3_CONF, "R")],
            "provision": [{"type": "deny", "securityLabel": [_coding(V3_CODE, "PSY")]}],
        },
    ),
    # A research opt-in for the lab results of a period.
    (
        "permit",
        {
            "purpose": [_coding(V3_REASON, "HRESCH")],
            "class": [_coding("http://hl7.org/fhir/resource-types", "Observation")],
            "dataPeriod": {"start": "2020-01-01", "end": "2024-12-31"},
        },
    ),
    # No HIV, substance use or alcohol data, to anyone.
    ("deny", {"securityLabel": [_coding(V3_CODE, c) for c in ("HIV", "SUD", "ETH")]}),
    # Nothing to one practitioner.
    ("deny", {"actor": [_actor("Practitioner/ex")]}),
    # No marketing, ever.
    ("deny", {"purpose": [_coding(V3_REASON, "HMARKT")]}),
)


def policies(count: int) -> tuple[Policy, ...]:
    """``count`` compiled consents of :data:`PATIENT`, cycling through the templates: R4
    Consents whose ``policyRule`` states no opt-in/opt-out base, so each speaks only where its
    provision matches (as several consents of one patient usually do)."""
    made = []
    for i in range(count):
        effect, provision = _TEMPLATES[i % len(_TEMPLATES)]
        consent = {
            "resourceType": "Consent",
            "id": f"c{i}",
            "status": "active",
            "scope": {"coding": [_coding(SCOPE, "patient-privacy")]},
            "category": [{"coding": [_coding(LOINC, "59284-0")]}],
            "patient": {"reference": PATIENT},
            "policyRule": {"coding": [_coding(V3_CODE, "HIPAA-Auth")]},
            "provision": {"type": effect, **provision},
        }
        made.append(parse_consent(consent, ledger_index=i))
    return tuple(made)


def observation(n: int) -> dict[str, Any]:
    """The ``n``-th Observation of the patient's searchset: codes, labels and dates vary."""
    labels = [[], [_coding(V3_CONF, "N")], [_coding(V3_CONF, "R")], [_coding(V3_CODE, "PSY")]]
    return {
        "resourceType": "Observation",
        "id": f"o{n}",
        "meta": {"security": labels[n % len(labels)]},
        "status": "final",
        "category": [
            {
                "coding": [
                    _coding(
                        "http://terminology.hl7.org/CodeSystem/observation-category", "laboratory"
                    )
                ]
            }
        ],
        "code": {"coding": [_coding(LOINC, f"{1000 + n % 37}-{n % 10}")]},
        "subject": {"reference": PATIENT},
        "effectiveDateTime": f"{2018 + n % 8}-0{1 + n % 9}-15T08:30:00Z",
        "performer": [{"reference": "Practitioner/dr"}],
        "valueQuantity": {"value": 4.2, "unit": "mmol/L"},
    }


def rate(work: Callable[[], int], seconds: float) -> float:
    """Units of ``work`` per second over ``seconds`` (after a warm-up of a tenth of that)."""
    deadline = time.perf_counter() + seconds / 10
    while time.perf_counter() < deadline:
        work()
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while (now := time.perf_counter()) < deadline:
        done += work()
    return done / (now - started)


def measure(count: int, seconds: float) -> dict[str, Any]:
    compiled = policies(count)
    defaults = Defaults()
    single = observation(1)
    summary: ResourceSummary = summarize(single, patients=[PATIENT])
    entries = [observation(n) for n in range(100)]
    patients = [PATIENT]

    def one() -> int:
        decide(PRINCIPAL, ACTION, PURPOSES, summary, compiled, defaults=defaults, now=NOW)
        return 1

    def one_summarized() -> int:
        found = summarize(single, patients=patients)
        decide(PRINCIPAL, ACTION, PURPOSES, found, compiled, defaults=defaults, now=NOW)
        return 1

    def searchset() -> int:
        for resource in entries:
            found = summarize(resource, patients=patients)
            decide(PRINCIPAL, ACTION, PURPOSES, found, compiled, defaults=defaults, now=NOW)
        return len(entries)

    permitted = sum(
        decide(
            PRINCIPAL,
            ACTION,
            PURPOSES,
            summarize(e, patients=patients),
            compiled,
            defaults=defaults,
            now=NOW,
        ).permitted
        for e in entries
    )
    bundle_rate = rate(searchset, seconds)
    return {
        "consents_per_patient": count,
        "single_decisions_per_s": round(rate(one, seconds)),
        "single_with_summary_per_s": round(rate(one_summarized, seconds)),
        "searchset_decisions_per_s": round(bundle_rate),
        "searchset_bundles_per_s": round(bundle_rate / len(entries), 1),
        "searchset_permitted": permitted,
    }


_COLUMNS = (
    ("consents_per_patient", "consents / patient"),
    ("single_decisions_per_s", "single: decisions/s"),
    ("single_with_summary_per_s", "single + summarize: /s"),
    ("searchset_decisions_per_s", "searchset (100): decisions/s"),
    ("searchset_bundles_per_s", "searchset (100): Bundles/s"),
    ("searchset_permitted", "permitted of 100"),
)


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| " + " | ".join(title for _, title in _COLUMNS) + " |",
        "|" + "---:|" * len(_COLUMNS),
    ]
    lines += ["| " + " | ".join(f"{r[key]:,}" for key, _ in _COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.consent", description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per point")
    parser.add_argument(
        "--consents", default="1,5,20", help="consents per patient, comma-separated"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = [measure(int(n), args.seconds) for n in args.consents.split(",")]
    report = {
        "benchmark": "consent",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds_per_point": args.seconds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "goal_single_decisions_per_s": GOAL,
        "notes": [
            "pure engine in one thread: compiled policies (parse_consent), no I/O",
            "single: decide() on a prebuilt ResourceSummary; searchset: summarize() + decide() "
            "for each of 100 Observations",
        ],
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(rows))
    print(f"\ngoal: >= {GOAL:,} single-resource decisions/s; JSON: {args.output}")


if __name__ == "__main__":
    main()
