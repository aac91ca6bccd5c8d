"""Judging CPU of one enforced answer, in process: the part of the gateway that decides.

    python -m bench.judging [--runs 7] [--exchanges 300] [--output bench/results/judging.json]

The answer :mod:`bench.enforced` measures end to end, without the servers: a searchset of 20
Observations of one carebundle patient (shaped as the upstream sends them: ``meta`` with
version, ``lastUpdated``, author and compartment; literal references), its bytes as received,
and that patient's consent from :mod:`bench.enforced` (R5, active, base decision deny, one
provision permitting ``Practitioner/bench``) for a practitioner caller with ``user/*.rs``.
One exchange is what :meth:`~middleware.pipeline.judging.Judging.judge` and
:func:`~middleware.pipeline.filter.filter_answer` do with a decoded answer: the patient
compartments (:func:`~middleware.pipeline.judge.patients_in`), whether summaries walk
(:func:`~middleware.pipeline.judge.needs_walk`), a :class:`~middleware.pipeline.judge.Judge`
and the filter over every entry (scopes, compartment, consent decision, redaction). Decoding
the JSON, the audit record and the policy lookup (I/O) are not included.

Measured with ``time.process_time`` over ``--exchanges`` exchanges (each on a freshly decoded
copy, decoded beforehand), best of ``--runs``, for the search and for a read of one
Observation, each with the gateway's decision cache (:mod:`middleware.consent.decisions`,
shared by exchanges as the Flow shares it) and with a fresh cache per exchange (every
exchange decides its first resource). Prints a Markdown table and writes
``bench/results/judging.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from middleware.auth.identity import Identity
from middleware.auth.scopes import parse_scopes
from middleware.consent.decide import Defaults
from middleware.consent.decisions import DecisionCache
from middleware.consent.model import Policy
from middleware.consent.parse import parse_consent
from middleware.fhir import jsoncodec
from middleware.pipeline.caller import ACTION_ACCESS, Caller, caller_of
from middleware.pipeline.filter import filter_answer
from middleware.pipeline.judge import Judge, Trail, needs_walk, patients_in
from tests.support.peers import carebundle_dir

RESULTS: Final = Path(__file__).parent / "results" / "judging.json"
BASE: Final = "http://upstream.bench/fhir"
PATIENT_ID: Final = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
PRACTITIONER: Final = "Practitioner/bench"
SEARCH_COUNT: Final = 20
NOW: Final = datetime(2026, 12, 6, 12, tzinfo=UTC)
GOAL_US: Final = 600.0  # the whole search's gateway CPU goal; judging is a part of it


def searchset(count: int) -> bytes:
    """The bytes of a searchset of ``count`` carebundle Observations of one patient."""
    for path in sorted(carebundle_dir().glob("*.json")):
        bundle = json.loads(path.read_bytes())
        found = [
            e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
        ]
        if len(found) >= count:
            break
    else:
        raise SystemExit(f"no carebundle patient has {count} Observations")
    entries = []
    for n, source in enumerate(found[:count]):
        resource = copy.deepcopy(source)
        rid = f"{n:04x}a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
        resource["id"] = rid
        resource["meta"] = {
            **resource.get("meta", {}),
            "versionId": "1",
            "lastUpdated": "2026-12-06T10:00:00.000Z",
            "author": {"reference": "ClientApplication/bench"},
            "compartment": [{"reference": f"Patient/{PATIENT_ID}"}],
        }
        resource["subject"] = {"reference": f"Patient/{PATIENT_ID}"}
        for key, target in (("encounter", "Encounter/e1"), ("performer", "Practitioner/p1")):
            if key in resource:
                ref = {"reference": target}
                resource[key] = [ref] if isinstance(resource[key], list) else ref
        url = f"{BASE}/Observation/{rid}"
        entries.append({"fullUrl": url, "search": {"mode": "match"}, "resource": resource})
    answer = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    # As the upstream writes JSON: UTF-8, no \u escapes (which would make summaries walk).
    return json.dumps(answer, ensure_ascii=False).encode()


def consent() -> Policy:
    """bench.enforced's consent: deny by default, permit the practitioner."""
    return parse_consent(
        {
            "resourceType": "Consent",
            "id": "bench",
            "status": "active",
            "subject": {"reference": f"Patient/{PATIENT_ID}"},
            "decision": "deny",
            "provision": [{"actor": [{"reference": {"reference": PRACTITIONER}}]}],
        },
        ledger_index=1,
    )


def caller() -> Caller:
    scopes = parse_scopes("user/*.rs").scopes
    identity = Identity(
        subject="bench", issuer="bench", expires_at=2e9, scopes=scopes, fhir_user=PRACTITIONER
    )
    return caller_of(identity)


def exchange(
    document: Any,
    raw: bytes,
    policies: Mapping[str, tuple[Policy, ...]],
    who: Caller,
    cache: DecisionCache,
) -> int:
    """One exchange's judging of the decoded ``document`` (``raw``: its bytes); returns how
    many resources it released."""
    seen: dict[int, Any] = {}
    found = patients_in(document, base_urls=(BASE,), seen=seen)
    mine = {patient: policies.get(patient, ()) for patient in sorted(found)}
    judge = Judge(
        caller=who,
        action=ACTION_ACCESS,
        policies=mine,
        defaults=cache.defaults,
        now=NOW,
        base_urls=(BASE,),
        trail=Trail(),
        seen=seen,
        walk=needs_walk(raw, mine.values()),
        decisions=cache,
    )
    _, stats = filter_answer(document, judge.allowed)
    return stats.kept


def measure(raw: bytes, *, shared: bool, exchanges: int, runs: int) -> float:
    """Best per-exchange CPU (µs) over ``runs`` runs of ``exchanges`` exchanges."""
    policies = {f"Patient/{PATIENT_ID}": (consent(),)}
    who = caller()
    defaults = Defaults()
    cache = DecisionCache(defaults)
    expected = len(jsoncodec.decode(raw).get("entry", [raw]))
    best = float("inf")
    for _ in range(runs):
        documents = [jsoncodec.decode(raw) for _ in range(exchanges)]
        start = time.process_time()
        for document in documents:
            fresh = cache if shared else DecisionCache(defaults)
            if exchange(document, raw, policies, who, fresh) != expected:
                raise SystemExit("the bench consent should release every entry")
        best = min(best, (time.process_time() - start) / exchanges)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.judging", description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--exchanges", type=int, default=300)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    search = searchset(SEARCH_COUNT)
    read = json.dumps(jsoncodec.decode(search)["entry"][0]["resource"], ensure_ascii=False)
    rows = []
    for name, raw in (
        (f"search of {SEARCH_COUNT} Observations", search),
        ("read of one Observation", read.encode()),
    ):
        for shared in (True, False):
            cpu = measure(raw, shared=shared, exchanges=args.exchanges, runs=args.runs)
            cache = "shared (gateway)" if shared else "fresh per exchange"
            rows.append({"answer": name, "decision_cache": cache, "judging_cpu_us": round(cpu, 1)})
    print("| answer | decision cache | judging CPU µs/exchange |\n|---|---|---|")
    for row in rows:
        print(f"| {row['answer']} | {row['decision_cache']} | {row['judging_cpu_us']} |")
    report = {
        "benchmark": "judging",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "runs": args.runs,
        "exchanges": args.exchanges,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "notes": [
            "time.process_time per exchange, best of runs; decoding, audit and I/O excluded",
            f"context: bench.enforced's goal for the whole search is <= {GOAL_US:.0f} µs",
        ],
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"JSON: {args.output}")


if __name__ == "__main__":
    main()
