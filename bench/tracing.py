"""What traces cost: one stage helper, and the enforced read and search, tracing off and on.

    python -m bench.tracing [--requests 200] [--runs 10] [--calls 200000]

**Helper.** ``with stage("decide"): pass`` per call, outside a traced request (off: the shared
no-op) and inside one (on: a recording span), against an empty ``with`` of a
``contextlib.nullcontext`` as the floor.

**Requests.** :mod:`bench.read_profile`'s scene (the gateway in process, its embedded SQLite
store, the practitioner's token, the fixed upstream) built three times: tracing off (the
default), on with every trace sampled, and on with none sampled (``trace_sample_ratio = 0``:
spans made but not recorded). On, spans go through the batch processor to an exporter that
encodes each batch as OTLP protobuf and drops it (what the OTLP exporter does before its HTTP
POST), so the background thread's work is counted: CPU per request is
``time.process_time`` (every thread). Rounds of the three alternate; best of ``--runs``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from bench.read_profile import PATHS, scene, timed
from middleware.logging import configure_logging
from middleware.ops.tracing import Tracing, stage


class EncodeOnly(SpanExporter):
    """Encodes every batch as an OTLP export request and drops it; counts spans and bytes."""

    def __init__(self) -> None:
        self.spans = 0
        self.bytes = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        self.bytes += len(encode_spans(spans).SerializeToString())
        return SpanExportResult.SUCCESS


def per_call_ns(body: Callable[[], None], calls: int) -> float:
    start = time.perf_counter_ns()
    body()
    return (time.perf_counter_ns() - start) / calls


def helper(calls: int) -> dict[str, float]:
    """ns per ``with`` of: nullcontext, stage() off, stage() inside a traced request."""

    def floor() -> None:
        null = contextlib.nullcontext()
        for _ in range(calls):
            with null:
                pass

    def stages() -> None:
        for _ in range(calls):
            with stage("decide"):
                pass

    exporter = EncodeOnly()
    traced = Tracing.exporting(exporter)
    results = {"nullcontext": min(per_call_ns(floor, calls) for _ in range(5))}
    results["stage, off"] = min(per_call_ns(stages, calls) for _ in range(5))
    with traced.request({}):
        results["stage, on (recorded)"] = min(per_call_ns(stages, calls) for _ in range(3))
    traced.shutdown()
    return results


async def requests(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    modes = {"off": None, "on, sampled": 1.0, "on, not sampled": 0.0}
    exporters: dict[str, EncodeOnly] = {}
    scenes: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        for mode, ratio in modes.items():
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-tracing-")))
            tracing = None
            if ratio is not None:
                exporters[mode] = EncodeOnly()
                tracing = Tracing.exporting(exporters[mode], sample_ratio=ratio)
            scenes[mode] = await scene(tmp, access_log=True, tracing=tracing)
        best: dict[str, dict[str, float]] = {m: {n: float("inf") for n in PATHS} for m in modes}
        for mode in modes:  # warm
            driver, headers = scenes[mode]
            for name in PATHS:
                await timed(driver, headers, name, min(100, args.requests))
        for _ in range(args.runs):
            for mode in modes:
                driver, headers = scenes[mode]
                for name in PATHS:
                    us = await timed(driver, headers, name, args.requests)
                    best[mode][name] = min(best[mode][name], us)
        for mode in modes:
            await scenes[mode][0].stop()  # shuts the tracing down: its queue exported
    for mode, exporter in exporters.items():
        print(f"{mode}: {exporter.spans} spans exported, {exporter.bytes} OTLP bytes")
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing", description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args(argv)
    configure_logging("info", open(os.devnull, "w"))  # noqa: SIM115 - for the process's life
    print("| with ... | ns per call |\n|---|---|")
    for name, ns in helper(args.calls).items():
        print(f"| {name} | {ns:.0f} |")
    best = asyncio.run(requests(args))
    print("\n| tracing | read CPU µs/request | search CPU µs/request |\n|---|---|---|")
    for mode, row in best.items():
        print(f"| {mode} | {row['read']:.0f} | {row['search']:.0f} |")


if __name__ == "__main__":
    main()
