"""Mapping cost for a 1,000-entry searchset: added codings, references rewritten, R4 -> R5.

    python -m bench.mapping [--entries 1000] [--rounds 20] [--output bench/results/mapping.json]

Builds a searchset of ``--entries`` hospital-a Observations (local lab codes that map to LOINC,
an OID MRN identifier on the subject, decimals as the upstream writes them), then times, on
one core, each stage the gateway runs on such an answer and all of them in a row:

* **codings**: :func:`middleware.mapping.map_response` with the shipped ``hospital-a`` profile
  (a marked LOINC coding added beside each local one, identifier systems renamed);
* **references**: opaque client ids for every resource id and reference
  (:class:`~middleware.mapping.references.ReferenceRewriter`);
* **R4 -> R5**: the version conversion of every resource (when the converter is present);
* **decode + encode**: the JSON codec around them, for scale.

The whole path runs them as the gateway does, on the answer it has just decoded and owns:
ids at the upstream edge first, in place
(:meth:`~middleware.mapping.references.ReferenceRewriter.to_client_in_place`, before the
filter), then identifier systems, codings and the version conversion in one pass, in place
(:func:`~middleware.mapping.answer.map_answer_in_place`, after it). The row "stages copying"
runs the same work as the stages did before that, each copying what it changes, for
comparison in the same minute.

Reports the median and the best of ``--rounds`` runs in milliseconds of CPU time per Bundle
(``time.process_time``: other work on a shared machine does not count). The goal: the whole
mapping path <= 20 ms for 1,000 entries on the 2-core machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from middleware.fhir import jsoncodec
from middleware.ledger.signing import SigningKey, derive_box_key
from middleware.mapping import map_response
from middleware.mapping.answer import map_answer_in_place
from middleware.mapping.ids import OpaqueResolver
from middleware.mapping.loader import load_profile
from middleware.mapping.references import ReferenceRewriter
from middleware.mapping.versions import Release, convert_document

ROOT: Final = Path(__file__).resolve().parents[1]
RESULTS: Final = Path(__file__).parent / "results" / "mapping.json"
UPSTREAM: Final = "http://upstream.bench/fhir"
CODES: Final = ("GLU", "K", "NA", "CREA")
GOAL_MS: Final = 20


def searchset(entries: int) -> bytes:
    """A searchset of ``entries`` Observations as the hospital-a upstream would answer."""
    items = []
    for i in range(entries):
        code = CODES[i % len(CODES)]
        unit = "umol/L" if code == "CREA" else "mmol/L"
        patient = i % 50
        items.append(
            f'{{"fullUrl":"{UPSTREAM}/Observation/obs-{i}","resource":{{'
            f'"resourceType":"Observation","id":"obs-{i}","meta":{{"versionId":"1"}},'
            f'"status":"final","code":{{"coding":[{{'
            f'"system":"http://hospital-a.example/CodeSystem/lab","code":"{code}"}}]}},'
            f'"subject":{{"reference":"Patient/p-{patient}","identifier":{{'
            f'"system":"urn:oid:1.2.3.4.5","value":"{100000 + patient}"}}}},'
            f'"effectiveDateTime":"2024-05-02T08:30:00+02:00",'
            f'"valueQuantity":{{"value":{3 + i % 5}.40,"unit":"{unit}",'
            f'"system":"http://unitsofmeasure.org","code":"{unit}"}}}},'
            f'"search":{{"mode":"match"}}}}'
        )
    body = ",".join(items)
    return f'{{"resourceType":"Bundle","type":"searchset","entry":[{body}]}}'.encode()


def timed(fn: Callable[[], Any], rounds: int) -> tuple[float, float]:
    """Median and best CPU milliseconds of ``rounds`` calls (after one warm-up call)."""
    fn()
    samples = []
    for _ in range(rounds):
        started = time.process_time()
        fn()
        samples.append((time.process_time() - started) * 1000)
    return statistics.median(samples), min(samples)


def conversion_of_r5_client() -> Any:
    """The conversion settings the r5-client-r4-server profile loads (None without rules)."""
    return load_profile(ROOT / "mappings" / "profiles" / "r5-client-r4-server.json").conversion


def converter() -> Callable[[Any], Any] | None:
    """R4 -> R5 conversion of a document with the rules the r5-client-r4-server profile
    loads."""
    profile = load_profile(ROOT / "mappings" / "profiles" / "r5-client-r4-server.json")
    conversion = profile.conversion
    if conversion is None:
        return None
    rules = conversion.rules

    def run(document: Any) -> Any:
        return convert_document(document, source="R4", target="R5", rules=rules).resource

    return run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.mapping", description=__doc__)
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    raw = searchset(args.entries)
    profile = load_profile(ROOT / "mappings" / "profiles" / "hospital-a.json")
    key = derive_box_key(SigningKey.generate("bench/ledger"), "ids")

    def rewriter() -> ReferenceRewriter:
        # A fresh resolver each call: its cache of issued ids starts empty, as it does for an
        # answer whose resources the gateway has not named before.
        return ReferenceRewriter(
            OpaqueResolver(key, ["hospital-a"]), "hospital-a", bases=[UPSTREAM]
        )

    convert = converter()

    def codings() -> Any:
        return map_response(jsoncodec.decode(raw), profile).resource

    def references() -> Any:
        return rewriter().to_client(jsoncodec.decode(raw))

    def stages_copying() -> bytes:
        document = map_response(rewriter().to_client(jsoncodec.decode(raw)), profile).resource
        if convert is not None:
            document = convert(document)
        return jsoncodec.encode(document)

    conversion = conversion_of_r5_client()
    both = dataclasses.replace(profile, conversion=conversion)
    versions: tuple[Release, Release] | None = ("R4", "R5") if conversion is not None else None

    def whole() -> bytes:
        document = jsoncodec.decode(raw)
        rewriter().to_client_in_place(document)
        map_answer_in_place(document, both, conversion=versions)
        return jsoncodec.encode(document)

    rows: list[dict[str, Any]] = []
    decode_ms = timed(lambda: jsoncodec.decode(raw), args.rounds)
    stages: list[tuple[str, Callable[[], Any]]] = [
        ("decode + encode", lambda: jsoncodec.encode(jsoncodec.decode(raw))),
        ("codings (+ decode)", codings),
        ("references (+ decode)", references),
    ]
    if convert is not None:
        stages.append(("R4 -> R5 (+ decode)", lambda: convert(jsoncodec.decode(raw))))
    stages.append(("whole path, stages copying (before the one pass)", stages_copying))
    stages.append(("whole mapping path (decode ... encode)", whole))
    for name, fn in stages:
        median, best = timed(fn, args.rounds)
        rows.append({"stage": name, "median_ms": round(median, 2), "best_ms": round(best, 2)})

    report = {
        "benchmark": "mapping",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "entries": args.entries,
        "bundle_bytes": len(raw),
        "decode_ms": round(decode_ms[0], 2),
        "version_conversion": convert is not None,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{args.entries}-entry searchset, {len(raw):,} bytes, {args.rounds} rounds, one core\n")
    print("| stage | median CPU ms | best CPU ms |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['median_ms']} | {r['best_ms']} |")
    whole_ms = rows[-1]["median_ms"]
    verdict = "met" if whole_ms <= GOAL_MS else "MISSED"
    missing = "" if convert is not None else " (without R4 -> R5: the converter is not present)"
    print(f"\ngoal: whole mapping path <= {GOAL_MS} ms: {verdict} ({whole_ms} ms){missing}")
    print(f"JSON: {args.output}")


if __name__ == "__main__":
    main()
