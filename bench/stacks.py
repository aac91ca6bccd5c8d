"""Aggregating py-spy's raw stacks: where one thread's CPU goes, by layer and by function.

    python -m bench.stacks FILE [--thread main|all|<substring>] [--us-per-sample X] [--top 30]

``FILE`` is ``py-spy record --format raw --threads --function`` output: one line per distinct
stack, ``frame;frame;...;frame COUNT``, outermost first, the first frame naming the thread
(``thread (0x...)``, and with ``--threads`` py-spy's label for the OS thread). Idle samples
are not recorded by py-spy unless ``--idle``, so a sample is CPU the thread spent.

Three tables: **layers** (each sample charged to the layer of its innermost frame: what code
was running, generated code such as a dataclass's ``__init__`` counted with its caller; a
sample whose innermost Python frame is the event loop's ``run`` is the loop's own C code),
**self** (innermost function) and **inclusive** (every function on the stack, once per
sample). ``--us-per-sample`` turns sample counts into microseconds per
request (CPU us per request of the thread / its samples); otherwise shares are printed.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = ["STAGES", "Profile", "layer_of", "parse_raw", "stages"]

_FRAME: Final = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")

#: (layer, substrings of a frame's file): the first match wins; order matters.
LAYERS: Final = (
    ("uvicorn server edge (httptools protocol, ASGI cycle)", ("uvicorn/", "httptools")),
    ("connection guard (GuardedProtocol)", ("middleware/proxy/connections.py",)),
    ("aiohttp upstream client (aiohttp, yarl, multidict)", ("aiohttp/", "yarl/", "multidict/")),
    (
        "upstream seam (middleware.proxy upstream modules, framing checks)",
        ("_upstream.py", "proxy/deadline.py", "proxy/framing.py"),
    ),
    ("edge (handler, admission, respond, headers, body)", ("middleware/proxy/",)),
    ("pipeline (judge, release, dispatch)", ("middleware/pipeline/",)),
    ("audit record and ledger writer", ("middleware/audit/", "middleware/ledger/")),
    ("consent lookup and decision", ("middleware/consent/",)),
    ("token verification (auth)", ("middleware/auth/", "jwt/", "cryptography/")),
    ("FHIR classify, JSON codec, limits", ("middleware/fhir/", "msgspec")),
    ("storage (SQLite calls on this thread)", ("middleware/storage/", "sqlite3/")),
    ("metrics, logging, rate limits", ("middleware/ops/", "middleware/logging", "structlog/")),
    ("other middleware", ("middleware/",)),
    ("asyncio (tasks, futures, timeouts, locks)", ("asyncio/",)),
    ("threads (concurrent.futures, threading, queue)", ("concurrent/", "threading", "queue.py")),
)
_GENERATED: Final = re.compile(r"\((<string>|<frozen [^>]*>)(:\d+)?\)$")
#: (stage, substrings of the functions whose inclusive time make it): one read's path through
#: the gateway, outermost first; indentation shows nesting (stages nest, so they do not add up).
STAGES: Final = (
    ("whole loop thread", ("Runner.run (asyncio/runners.py",)),
    (
        "request parse (uvicorn HttpToolsProtocol.data_received)",
        ("HttpToolsProtocol.data_received (",),
    ),
    ("request task (uvicorn RequestResponseCycle.run_asgi)", ("RequestResponseCycle.run_asgi (",)),
    ("  edge (ProxyHandler.__call__)", ("ProxyHandler.__call__ (",)),
    ("    classify", ("classify (middleware/fhir/classify.py",)),
    ("    identify (Admission.identify)", ("Admission.identify (",)),
    ("    enforcement (Enforcement.run)", ("Enforcement.run (",)),
    ("      upstream round trip (UpstreamForwarder.forward)", ("UpstreamForwarder.forward (",)),
    ("        client send and read (the Upstream's send)", ("Upstream.send (",)),
    ("        decode the answer (decode_upstream)", ("decode_upstream (",)),
    ("      judge (Judging.judge)", ("Judging.judge (",)),
    ("        consent lookup (ConsentRegistry.policies)", ("ConsentRegistry.policies (",)),
    ("      filter (filter_answer)", ("filter_answer (",)),
    ("      audit record (ExchangeAudit.record)", ("ExchangeAudit.record (",)),
    ("    send the answer (send_answer)", ("send_answer (",)),
    ("      uvicorn's writes (RequestResponseCycle.send)", ("RequestResponseCycle.send (",)),
    (
        "upstream answer parse (client protocol data_received)",
        ("ResponseHandler.data_received (", "_Connection.data_received ("),
    ),
    ("ledger writer, loop side (LedgerWriter._run)", ("LedgerWriter._run (",)),
)
#: Innermost frames that stand for the loop's own C code (uvloop's run_forever).
_LOOP_FRAMES: Final = ("run_forever (", "run_until_complete (", "Runner.run (asyncio/runners.py")


@dataclass
class Profile:
    """Sample counts of one selection of threads."""

    samples: int = 0
    layers: Counter[str] = field(default_factory=Counter)
    self_time: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    threads: Counter[str] = field(default_factory=Counter)

    def add(self, thread: str, frames: list[str], count: int) -> None:
        self.samples += count
        self.threads[thread] += count
        leaf = frames[-1] if frames else "(no Python frame)"
        # Generated code (a dataclass's __init__) belongs to the layer of the code calling it.
        real = next((f for f in reversed(frames) if not _GENERATED.search(f)), leaf)
        self.layers[layer_of(real)] += count
        self.self_time[leaf] += count
        for frame in set(frames):
            self.inclusive[frame] += count


def parse_raw(lines: Iterable[str]) -> Iterator[tuple[str, list[str], int]]:
    """(thread label, frames outermost first without the thread's, count) per raw line."""
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        parts = stack.split(";")
        threads = [p for p in parts if p.startswith(("thread (", "process "))]
        frames = [p for p in parts if not p.startswith(("thread (", "process "))]
        yield (threads[-1] if threads else "?"), frames, int(count)


def layer_of(frame: str) -> str:
    """The layer (:data:`LAYERS`) of a frame ``function (file:line)``."""
    if any(marker in frame for marker in _LOOP_FRAMES):
        return "event loop itself (uvloop, C)"
    match = _FRAME.match(frame)
    path = match["file"] if match else frame
    for name, markers in LAYERS:
        if any(marker in path for marker in markers):
            return name
    return "other (stdlib, C calls)"


def load(path: Path, thread: str) -> Profile:
    """The samples of ``path`` whose thread label contains ``thread`` (``main``: the thread
    with the most samples; ``all``: every thread)."""
    stacks = list(parse_raw(path.read_text(encoding="utf-8").splitlines()))
    if thread == "main":
        totals: Counter[str] = Counter()
        for label, _, count in stacks:
            totals[label] += count
        thread = totals.most_common(1)[0][0] if totals else ""
    profile = Profile()
    for label, frames, count in stacks:
        if thread == "all" or thread in label:
            profile.add(label, frames, count)
    return profile


def stages(profile: Profile) -> Counter[str]:
    """Samples of each :data:`STAGES` row (the samples whose stack holds one of its functions)."""
    counts: Counter[str] = Counter()
    for name, markers in STAGES:
        counts[name] = sum(
            count for frame, count in profile.inclusive.items() if any(m in frame for m in markers)
        )
    return counts


def table(title: str, counts: Counter[str], total: int, scale: float | None, top: int) -> str:
    unit = "us/request" if scale else "share"
    lines = [f"\n{title}\n", f"| {unit} | samples | what |", "|---:|---:|---|"]
    for name, count in counts.most_common(top):
        value = f"{count * scale:.1f}" if scale else f"{count / total:.1%}"
        lines.append(f"| {value} | {count} | {name.replace('|', '/')} |")
    return "\n".join(lines)


def stage_table(counts: Counter[str], total: int, scale: float | None) -> str:
    """:func:`stages` in :data:`STAGES` order."""
    unit = "us/request" if scale else "share"
    lines = ["\nStages (inclusive; nested)\n", f"| stage | {unit} |", "|---|---:|"]
    for name, _ in STAGES:
        count = counts[name]
        value = f"{count * scale:.0f}" if scale else f"{count / total:.1%}"
        depth = (len(name) - len(name.lstrip())) // 2
        lines.append(f"| {'. ' * depth}{name.strip()} | {value} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stacks", description=__doc__)
    parser.add_argument("raw", type=Path)
    parser.add_argument("--thread", default="main")
    parser.add_argument("--us-per-sample", type=float, default=None)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    profile = load(args.raw, args.thread)
    scale = args.us_per_sample
    print(f"{profile.samples} samples; threads: {dict(profile.threads.most_common(4))}")
    print(stage_table(stages(profile), profile.samples, scale))
    print(table("Layers (innermost frame)", profile.layers, profile.samples, scale, args.top))
    print(table("Self (innermost function)", profile.self_time, profile.samples, scale, args.top))
    print(table("Inclusive", profile.inclusive, profile.samples, scale, args.top))


if __name__ == "__main__":
    main()
