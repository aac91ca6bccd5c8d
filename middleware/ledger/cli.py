"""``consentry ledger verify|export`` and ``consentry keys generate|policy|rotate``.

    consentry ledger verify --store sqlite:consentry.db --trust trust.toml [--remember latest.note]
    consentry ledger verify --export DIR --trust trust.toml [--remember latest.note]
    consentry ledger export --store sqlite:consentry.db --out DIR [--with-evidence] [--no-proofs]
    consentry keys generate --key-file consentry-ledger.key --origin gw.example/fhir/ledger \\
        [--trust trust.toml]
    consentry keys policy --key-file consentry-ledger.key --origin gw.example/fhir/ledger
    consentry keys rotate --key-file consentry-ledger.key --store sqlite:consentry.db \\
        --trust trust.toml

``verify`` reads the database read-only (``storage.ledger_dump``) or an export, prints the JSON
report (``ledger.verify``) and exits 0 when it is ok, 1 when it is not, 2 when it could not
run. ``rotate`` records the key event (``ledger.rotation``), updates the trust policy, then
replaces the key file; the new key waits in ``<key-file>.next`` until then, so an interrupted
rotation resumes where it stopped. Restart the gateway after a rotation: it signs with the
key it loaded at start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from middleware.errors import GatewayError, SettingsError
from middleware.ledger.errors import LedgerError
from middleware.ledger.export import read_export, write_export
from middleware.ledger.keyevent import KeyEvent
from middleware.ledger.keyfile import write_signing_key
from middleware.ledger.leaf import micros
from middleware.ledger.rotation import RotationResult, record_rotation
from middleware.ledger.signing import SigningKey
from middleware.ledger.trust import TrustedKey, TrustPolicy, format_policy, parse_policy
from middleware.ledger.verify import VerificationReport, verify_snapshot
from middleware.storage.ledger_dump import dump_log
from middleware.storage.ledger_open import open_log_store

__all__ = ["run_command"]

_DEFAULT_STORE = "sqlite:consentry.db"
_DEFAULT_KEY = "consentry-ledger.key"


class _Usage(Exception):
    """A problem that stops a command before it could judge anything (exit status 2)."""


def run_command(
    group: str, action: str, argv: Sequence[str], *, stdout: TextIO | None = None
) -> int:
    """Run ``consentry <group> <action> <argv>``; return the exit status."""
    out = stdout or sys.stdout
    command = _COMMANDS[(group, action)]
    parser = argparse.ArgumentParser(prog=f"consentry {group} {action}", description=command[0])
    command[1](parser)
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:  # argparse has printed the usage message
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return command[2](args, out)
    except (_Usage, LedgerError, GatewayError, SettingsError, OSError, ValueError) as exc:
        print(f"consentry {group} {action}: {exc}", file=sys.stderr)
        return 2


# -- ledger verify ----------------------------------------------------------------------------


def _verify_args(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", help="sqlite:PATH or postgresql://... (read-only)")
    source.add_argument("--export", type=Path, help="an export directory")
    parser.add_argument("--schema", default="public", help="PostgreSQL schema (default public)")
    parser.add_argument("--trust", type=Path, required=True, help="trust policy (TOML)")
    parser.add_argument("--remember", type=Path, help="a checkpoint note seen before")


def _verify(args: argparse.Namespace, out: TextIO) -> int:
    policy = parse_policy(_read(args.trust))
    remembered = _read(args.remember) if args.remember else None
    started = time.perf_counter()
    if args.export is not None:
        exported = read_export(args.export)
        report = verify_snapshot(
            exported.snapshot,
            policy,
            proofs=exported.proofs,
            remembered=remembered,
            problems=exported.problems,
        )
        source = str(args.export)
    else:
        snapshot = asyncio.run(dump_log(args.store, schema=args.schema))
        report = verify_snapshot(snapshot, policy, remembered=remembered)
        source = args.store
    _print(out, _report_json(report, source, time.perf_counter() - started))
    return 0 if report.ok else 1


def _report_json(report: VerificationReport, source: str, seconds: float) -> dict[str, Any]:
    body = report.to_json()
    body["source"] = source
    body["seconds"] = round(seconds, 3)
    return body


# -- ledger export ----------------------------------------------------------------------------


def _export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", default=_DEFAULT_STORE, help="sqlite:PATH or postgresql://")
    parser.add_argument("--schema", default="public", help="PostgreSQL schema (default public)")
    parser.add_argument("--out", type=Path, required=True, help="new or empty directory")
    parser.add_argument("--with-evidence", action="store_true", help="include evidence (PHI!)")
    parser.add_argument("--no-proofs", action="store_true", help="omit consistency proofs")


def _export(args: argparse.Namespace, out: TextIO) -> int:
    snapshot = asyncio.run(dump_log(args.store, schema=args.schema))
    manifest = write_export(
        snapshot, args.out, with_evidence=args.with_evidence, proofs=not args.no_proofs
    )
    _print(out, {"out": str(args.out), **manifest})
    return 0


# -- keys generate / policy / rotate ----------------------------------------------------------


def _generate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key-file", type=Path, default=Path(_DEFAULT_KEY))
    parser.add_argument("--origin", required=True, help="the log's checkpoint origin")
    parser.add_argument("--name", help="key name (default: the origin)")
    parser.add_argument("--trust", type=Path, help="also write a new trust policy here")


def _generate(args: argparse.Namespace, out: TextIO) -> int:
    key = SigningKey.generate(args.name or args.origin)
    policy = TrustPolicy(args.origin, (TrustedKey(key.vkey(), 0),))  # validates the origin
    if args.trust is not None and args.trust.exists():
        raise _Usage(f"{args.trust} exists; `keys rotate` updates a policy")
    write_signing_key(args.key_file, key)
    if args.trust is not None:
        _write_atomically(args.trust, format_policy(policy))
    _print(out, {"key_file": str(args.key_file), "vkey": key.vkey(), "trust": _opt(args.trust)})
    return 0


def _policy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key-file", type=Path, default=Path(_DEFAULT_KEY))
    parser.add_argument("--origin", required=True, help="the log's checkpoint origin")


def _policy(args: argparse.Namespace, out: TextIO) -> int:
    key = SigningKey.from_skey(_read(args.key_file).strip())
    out.write(format_policy(TrustPolicy(args.origin, (TrustedKey(key.vkey(), 0),))))
    return 0


def _rotate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key-file", type=Path, default=Path(_DEFAULT_KEY))
    parser.add_argument("--store", default=_DEFAULT_STORE, help="sqlite:PATH or postgresql://")
    parser.add_argument("--schema", default="public", help="PostgreSQL schema (default public)")
    parser.add_argument("--trust", type=Path, required=True, help="trust policy to update")


def _rotate(args: argparse.Namespace, out: TextIO) -> int:
    retired = SigningKey.from_skey(_read(args.key_file).strip())
    policy = parse_policy(_read(args.trust))
    if policy.find(retired.vkey()) is None:
        raise _Usage(f"{args.trust} does not trust the key in {args.key_file}")
    pending = args.key_file.with_name(args.key_file.name + ".next")
    if pending.exists():  # an interrupted rotation: finish it with the same successor
        successor = SigningKey.from_skey(_read(pending).strip())
    else:
        successor = SigningKey.generate(retired.name)
        write_signing_key(pending, successor)

    async def record() -> RotationResult:
        store = await open_log_store(args.store, schema=args.schema)
        try:
            now = micros(datetime.now(UTC))
            return await record_rotation(
                store, retired, successor, origin=policy.origin, recorded_us=now
            )
        finally:
            await store.close()

    result = asyncio.run(record())
    event = result.event
    rotated = policy.rotated(
        event.retired, event.retired_not_after, event.successor, event.successor_not_before
    )
    _write_atomically(args.trust, format_policy(rotated))
    os.replace(pending, args.key_file)
    print("consentry keys rotate: restart the gateway to sign with the new key", file=sys.stderr)
    _print(out, {"index": result.index, "resumed": result.resumed, **_event_json(event)})
    return 0


def _event_json(event: KeyEvent) -> dict[str, Any]:
    return {
        "retired": event.retired,
        "retired_not_after": event.retired_not_after,
        "successor": event.successor,
        "successor_not_before": event.successor_not_before,
    }


# -- plumbing -----------------------------------------------------------------------------------

_Command = tuple[
    str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace, TextIO], int]
]
_COMMANDS: dict[tuple[str, str], _Command] = {
    ("ledger", "verify"): (
        "Verify the ledger offline; print a JSON report.",
        _verify_args,
        _verify,
    ),
    ("ledger", "export"): ("Write a self-contained, PHI-free export.", _export_args, _export),
    ("keys", "generate"): ("Create a signing key (and trust policy).", _generate_args, _generate),
    ("keys", "policy"): ("Print a trust policy for an existing key.", _policy_args, _policy),
    ("keys", "rotate"): ("Rotate the signing key, recorded in the log.", _rotate_args, _rotate),
}


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _Usage(f"cannot read {path}: {exc}") from exc


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _print(out: TextIO, body: dict[str, Any]) -> None:
    out.write(json.dumps(body, indent=2) + "\n")


def _opt(path: Path | None) -> str | None:
    return None if path is None else str(path)
