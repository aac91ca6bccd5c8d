"""Witness benchmark: how soon a checkpoint is cosigned by an outside witness.

    python -m bench.witness [--checkpoints 500] [--leaves-per-checkpoint 1,32]

Starts ``consentry witness serve`` as a real process (its own key and a fresh SQLite state
file, ``synchronous=FULL``: every accepted checkpoint is on disk before the answer), then plays
a log: ``--checkpoints`` times it grows a tree by a random number of leaves in the given range,
signs the checkpoint with an Ed25519 log key, and submits it (``old <size>``, the RFC 9162
consistency proof, the note) over one keep-alive HTTP connection. Measured per checkpoint:
from sending the request to holding the cosignature line, i.e. parse, log-signature check,
proof check, durable compare-and-swap and cosigning plus the HTTP round trip on 127.0.0.1.
Building the proof is not timed; each cosignature is verified afterwards (untimed). The goal is
a cosignature within 100 ms (p99) of a checkpoint. Prints a Markdown table, writes
``bench/results/witness.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from middleware.ledger.checkpoint import Checkpoint
from middleware.ledger.cosignature import verify_cosignatures
from middleware.ledger.merkle import leaf_hash
from middleware.ledger.signing import CosignatureVerifier, SigningKey
from middleware.ledger.tree import MerkleLevels
from middleware.witness.protocol import format_submission
from tests.support.witness_peer import WitnessServer

_RESULTS = Path(__file__).parent / "results" / "witness.json"
_ORIGIN = "bench.consentry.example/ledger"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(checkpoints: int, low: int, high: int) -> dict[str, object]:
    log = SigningKey.generate(_ORIGIN)
    rng = random.Random(16)
    tree = MerkleLevels()
    witness = WitnessServer({_ORIGIN: [log.vkey()]})
    latencies: list[float] = []
    try:
        witness.start()
        assert witness.key is not None
        verifier = CosignatureVerifier(witness.key)
        url = f"{witness.root_url}/add-checkpoint"
        with httpx.Client(timeout=10.0) as client:
            for _ in range(checkpoints):
                old = tree.size
                tree.extend(leaf_hash(os.urandom(16)) for _ in range(rng.randint(low, high)))
                note = log.sign_checkpoint(Checkpoint(_ORIGIN, tree.size, tree.root()))
                proof = tree.consistency_proof(old) if old else []
                body = format_submission(old, proof, note)
                started = time.perf_counter()
                answer = client.post(url, content=body)
                latencies.append(time.perf_counter() - started)
                if answer.status_code != 200:
                    raise RuntimeError(f"witness answered {answer.status_code}: {answer.text}")
                verify_cosignatures(note + answer.text, [verifier], 1)
    finally:
        witness.close()
    ms = [s * 1000 for s in latencies]
    return {
        "checkpoints": checkpoints,
        "final_size": tree.size,
        "leaves_per_checkpoint": [low, high],
        "p50_ms": round(_percentile(ms, 0.50), 2),
        "p99_ms": round(_percentile(ms, 0.99), 2),
        "max_ms": round(max(ms), 2),
        "mean_ms": round(sum(ms) / len(ms), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=int, default=500)
    parser.add_argument("--leaves-per-checkpoint", default="1,32", help="LOW,HIGH")
    args = parser.parse_args()
    low, high = (int(n) for n in args.leaves_per_checkpoint.split(","))
    result = run(args.checkpoints, low, high)
    print("| checkpoints | final size | p50 ms | p99 ms | max ms |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    print(
        f"| {result['checkpoints']} | {result['final_size']} | {result['p50_ms']} "
        f"| {result['p99_ms']} | {result['max_ms']} |"
    )
    record = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "command": "python -m bench.witness",
        "result": result,
    }
    _RESULTS.parent.mkdir(exist_ok=True)
    _RESULTS.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
