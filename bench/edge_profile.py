"""The enforced read through real HTTP: the gateway's CPU per request by thread, and a profile.

    python -m bench.edge_profile [--duration 6] [--connections 16] [--request read|search]
                                 [--rounds 1] [--profile] [--raw FILE] [--top 25]

:mod:`bench.enforced`'s set-up (the test upstream with carebundle-10, ``consentry serve
--workers 1`` on a fresh SQLite store, the patient's consent, the practitioner's token; the
upstream client is the settings' default, ``CONSENTRY_UPSTREAM_CLIENT`` chooses another),
then for one request at one concurrency, ``--rounds`` times: a warm-up second and a measured
wrk run, reporting requests/s and the gateway's CPU per request split by thread
(``/proc/<pid>/task/<tid>/stat``: ``loop`` is the main thread, the event loop's; ``others``
the SQLite ledger writer and the store's worker threads).

With ``--profile``, one more run sampled by :mod:`bench.cpu_sampler` (the loop thread's CPU,
charged to its Python stacks; started in the gateway through ``bench/sampler_boot``), then
aggregated by :mod:`bench.stacks` into microseconds of CPU per request: by layer (server
edge, upstream client, pipeline, audit...), by function (self) and inclusive. ``--raw`` keeps
the stacks (``python -m bench.stacks FILE --thread all --us-per-sample 1/requests``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Final

import httpx

from bench.enforced import pick_patient, set_up, write_config
from bench.proxy import find_wrk, wrk_loader
from bench.stacks import Profile, load, stage_table, stages, table
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from tests.support import GatewayServer, UpstreamServer, load_carebundle
from tests.support.peers import repo_root

DEV_ISSUER: Final = "http://consentry.bench/dev-issuer"
_TICK: Final = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of ``pid``'s threads: ``loop`` (the main thread) and ``others`` (summed)."""
    seconds = {"loop": 0.0, "others": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
        role = "loop" if int(task.name) == pid else "others"
        seconds[role] += (int(fields[11]) + int(fields[12])) / _TICK
    return seconds


def cpu_line(before: dict[str, float], after: dict[str, float], requests: int) -> tuple[str, float]:
    """'thread us/request' pairs, largest first, and the loop thread's us per request."""
    spent = {k: after[k] - before.get(k, 0.0) for k in after}
    total = sum(spent.values())
    parts = [f"total {total / requests * 1e6:.0f}"]
    parts += [
        f"{name} {value / requests * 1e6:.0f}"
        for name, value in sorted(spent.items(), key=lambda kv: -kv[1])
        if value > 0
    ]
    return ", ".join(parts), spent.get("loop", 0.0) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.edge_profile", description=__doc__)
    parser.add_argument("--duration", type=int, default=6)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--request", choices=("read", "search"), default="read")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="one more run, sampled")
    parser.add_argument("--raw", type=Path, default=None, help="keep the raw stacks here")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    wrk = find_wrk()
    if wrk is None:
        parser.error("wrk is not installed")
    load_run = wrk_loader(wrk)
    with (
        tempfile.TemporaryDirectory(prefix="consentry-edge-") as tmp,
        httpx.Client(timeout=30.0) as client,
        UpstreamServer() as upstream,
    ):
        workdir = Path(tmp)
        issuer = UnsafeDevelopmentIssuer.from_key_file(
            workdir / "dev-issuer.jwk", DEV_ISSUER, enabled=True
        )
        config = write_config(workdir)
        patient, _ = pick_patient(load_carebundle(upstream.base_url, client))
        store = f"sqlite:{workdir / 'consentry.db'}"
        gateway_args = ["--config", str(config), "--store", store, "--workers", "1"]
        prefix = workdir / "sampler"
        env = {"PYTHONPATH": f"{repo_root()}{os.pathsep}{repo_root() / 'bench' / 'sampler_boot'}"}
        env["EDGE_SAMPLER"] = str(prefix)
        with GatewayServer(upstream.base_url, args=gateway_args, env=env) as gateway:
            scene = set_up(client, gateway.base_url, issuer, patient)
            url = f"{gateway.base_url}/{scene.paths[args.request]}"
            pid = gateway.pid
            for _ in range(args.rounds):
                load_run(url, args.connections, 1.0, scene.headers)
                before = thread_cpu(pid)
                result = load_run(url, args.connections, args.duration, scene.headers)
                line, _ = cpu_line(before, thread_cpu(pid), result.requests)
                print(f"{result.rps:,.0f} req/s, p50 {result.p50_ms:.1f} ms; CPU us/req: {line}")
            if args.profile:
                load_run(url, args.connections, 1.0, scene.headers)
                on = Path(f"{prefix}.on")
                on.touch()
                time.sleep(0.2)  # the sampler looks at the switch 20 times a second
                before = thread_cpu(pid)
                result = load_run(url, args.connections, args.duration, scene.headers)
                line, _ = cpu_line(before, thread_cpu(pid), result.requests)
                on.unlink()
                done = Path(f"{prefix}.done")
                while not done.exists():
                    time.sleep(0.05)
                print(f"\nsampled run: {result.rps:,.0f} req/s; CPU us/req: {line}")
                raw = Path(f"{prefix}.raw")
                if args.raw:
                    shutil.copyfile(raw, args.raw)
                report(load(raw, "all"), result.requests, args.top)


def report(stacks: Profile, requests: int, top: int) -> None:
    """The loop thread's sampled CPU (weights in microseconds) per request."""
    scale = 1.0 / requests
    print(f"loop thread sampled: {stacks.samples * scale:.0f} us/request")
    print(stage_table(stages(stacks), stacks.samples, scale))
    print(table("Loop thread by layer (innermost frame)", stacks.layers, stacks.samples, scale, 40))
    print(table("Loop thread, self", stacks.self_time, stacks.samples, scale, top))
    print(table("Loop thread, inclusive", stacks.inclusive, stacks.samples, scale, top))


if __name__ == "__main__":
    main()
