"""``consentry ledger verify|export`` and ``consentry keys generate|policy|rotate``.

    consentry ledger verify --store sqlite:consentry.db --trust trust.toml [--remember latest.note]
    consentry ledger verify --export DIR --trust trust.toml [--remember latest.note]
    consentry ledger export --store sqlite:consentry.db --out DIR [--with-evidence] [--no-proofs]
    consentry keys generate --key-file consentry-ledger.key --origin gw.example/fhir/ledger \\
        [--trust trust.toml]
    consentry keys policy --key-file consentry-ledger.key [--origin gw.example/fhir/ledger]
    consentry keys rotate --key-file consentry-ledger.key --store sqlite:consentry.db \\
        --trust trust.toml

``verify`` reads the database read-only (``storage.ledger_dump``) or an export, prints the JSON
report (``ledger.verify``) and exits 0 when it is ok, 1 when it is not, 2 when it could not
run. ``generate`` writes the key file with the log's origin in it (``ledger.keyfile``); the
origin is the log's identity, so ``policy`` and ``rotate`` refuse an origin other than the key
file's. ``rotate`` records the key event (``ledger.rotation``), updates the trust policy, then
replaces the key file (keeping its data secret, so stored secrets still open); the new key
waits in ``<key-file>.next`` until then, so an interrupted rotation resumes where it stopped.
Restart the gateway after a rotation: it signs with the key it loaded at start. ``-`` for a
file read (``--trust``, ``--remember``, ``keys policy --key-file``) reads standard input.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from middleware.errors import GatewayError, SettingsError
from middleware.ledger.errors import LedgerError
from middleware.ledger.export import read_export, write_export
from middleware.ledger.keyevent import KeyEvent
from middleware.ledger.keyfile import (
    LedgerKey,
    generate_ledger_key,
    parse_ledger_key,
    write_ledger_key,
)
from middleware.ledger.leaf import micros
from middleware.ledger.rotation import RotationResult, record_rotation
from middleware.ledger.signing import SigningKey
from middleware.ledger.trust import TrustedKey, TrustPolicy, format_policy, parse_policy
from middleware.ledger.verify import VerificationReport, verify_snapshot
from middleware.storage.ledger_dump import dump_log
from middleware.storage.ledger_open import open_log_store

__all__ = ["register"]

_DEFAULT_STORE = "sqlite:consentry.db"
_DEFAULT_KEY = "consentry-ledger.key"
_STDIN = Path("-")
_KEY_FILE_HELP = f"the ledger's key file (default {_DEFAULT_KEY})"
_STORE_HELP = f"sqlite:PATH or postgresql://... (default {_DEFAULT_STORE})"
_SCHEMA_HELP = "PostgreSQL schema (default public)"


class _Usage(Exception):
    """A problem that stops a command before it could judge anything (exit status 2)."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``ledger`` and ``keys`` commands, each with its subcommands, to ``commands``
    (the subparsers of ``consentry``). Each subcommand sets ``run(args, out) -> status``."""
    for group, (group_help, about) in _GROUPS.items():
        parser = commands.add_parser(group, help=group_help, description=about)
        actions = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
        for (owner, action), (summary, description, add_arguments, handler) in _COMMANDS.items():
            if owner != group:
                continue
            sub = actions.add_parser(action, help=summary, description=description)
            add_arguments(sub)
            sub.set_defaults(run=functools.partial(_run, f"{group} {action}", handler))


def _run(
    command: str,
    handler: Callable[[argparse.Namespace, TextIO], int],
    args: argparse.Namespace,
    out: TextIO,
) -> int:
    try:
        return handler(args, out)
    except (_Usage, LedgerError, GatewayError, SettingsError, OSError, ValueError) as exc:
        print(f"consentry {command}: {exc}", file=sys.stderr)
        return 2


# -- ledger verify ----------------------------------------------------------------------------


def _verify_args(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", help="sqlite:PATH or postgresql://... (opened read-only)")
    source.add_argument("--export", type=Path, help="an export directory (`ledger export`)")
    parser.add_argument("--schema", default="public", help=_SCHEMA_HELP)
    parser.add_argument(
        "--trust", type=Path, required=True, help="trust policy file (TOML; - reads stdin)"
    )
    parser.add_argument(
        "--remember", type=Path, help="a checkpoint note seen before (- reads stdin)"
    )


def _verify(args: argparse.Namespace, out: TextIO) -> int:
    if args.trust == _STDIN and args.remember == _STDIN:
        raise _Usage("--trust and --remember cannot both read standard input")
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
    parser.add_argument("--store", default=_DEFAULT_STORE, help=_STORE_HELP)
    parser.add_argument("--schema", default="public", help=_SCHEMA_HELP)
    parser.add_argument("--out", type=Path, required=True, help="a new or empty directory")
    parser.add_argument(
        "--with-evidence", action="store_true", help="include the evidence (it holds PHI)"
    )
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
    parser.add_argument("--key-file", type=Path, default=Path(_DEFAULT_KEY), help=_KEY_FILE_HELP)
    parser.add_argument(
        "--origin", required=True, help="the log's checkpoint origin, e.g. gw.example/fhir/ledger"
    )
    parser.add_argument("--name", help="key name (default: the origin)")
    parser.add_argument("--trust", type=Path, help="also write a new trust policy here")


def _generate(args: argparse.Namespace, out: TextIO) -> int:
    if args.trust is not None and args.trust.exists():
        raise _Usage(f"{args.trust} exists; `keys rotate` updates a policy")
    try:
        ledger_key = generate_ledger_key(args.key_file, args.origin, name=args.name)
    except FileExistsError:
        raise _Usage(
            f"{args.key_file} exists; a key is never replaced (`keys rotate` retires one)"
        ) from None
    if args.trust is not None:
        _write_atomically(args.trust, format_policy(_policy_for(ledger_key)))
    _print(
        out,
        {
            "key_file": str(args.key_file),
            "origin": ledger_key.origin,
            "vkey": ledger_key.key.vkey(),
            "trust": _opt(args.trust),
        },
    )
    return 0


def _policy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key-file",
        type=Path,
        default=Path(_DEFAULT_KEY),
        help=f"the ledger's key file (default {_DEFAULT_KEY}; - reads stdin)",
    )
    parser.add_argument(
        "--origin", help="the log's checkpoint origin; must be the key file's (default: it)"
    )


def _policy(args: argparse.Namespace, out: TextIO) -> int:
    ledger_key = _read_key(args.key_file)
    if args.origin is not None and args.origin != ledger_key.origin:
        if ledger_key.stated:
            raise _Usage(
                f"--origin {args.origin!r} is not the origin of the log this key signs "
                f"({ledger_key.origin!r}, in {args.key_file}): a policy for another origin "
                f"would never verify its checkpoints; leave --origin out or pass that origin"
            )
        # An earlier version's one-line key file names no origin: the caller says which.
        print(
            f"consentry keys policy: {args.key_file} names no origin; the policy trusts it for "
            f"{args.origin!r}, which must be the gateway's ledger_origin",
            file=sys.stderr,
        )
        ledger_key = LedgerKey(ledger_key.key, args.origin, stated=False)
    out.write(format_policy(_policy_for(ledger_key)))
    return 0


def _policy_for(ledger_key: LedgerKey) -> TrustPolicy:
    return TrustPolicy(ledger_key.origin, (TrustedKey(ledger_key.key.vkey(), 0),))


def _rotate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--key-file", type=Path, default=Path(_DEFAULT_KEY), help=_KEY_FILE_HELP)
    parser.add_argument("--store", default=_DEFAULT_STORE, help=_STORE_HELP)
    parser.add_argument("--schema", default="public", help=_SCHEMA_HELP)
    parser.add_argument("--trust", type=Path, required=True, help="the trust policy to update")


def _rotate(args: argparse.Namespace, out: TextIO) -> int:
    current = _read_key(args.key_file)
    retired = current.key
    policy = parse_policy(_read(args.trust))
    if policy.find(retired.vkey()) is None:
        raise _Usage(f"{args.trust} does not trust the key in {args.key_file}")
    if current.stated and policy.origin != current.origin:
        raise _Usage(
            f"{args.trust} is for the origin {policy.origin!r}, {args.key_file} for "
            f"{current.origin!r}: rotate with the policy of the log this key signs"
        )
    pending = args.key_file.with_name(args.key_file.name + ".next")
    # An interrupted rotation is finished with the same successor.
    resumed = _read_key(pending).key if pending.exists() else None
    successor = resumed or SigningKey.generate(retired.name)
    # The successor's file keeps the data secret every stored secret is derived from
    # (ledger.keyfile): a pending file of an earlier version, naming none, is written again.
    following = current.succeeded_by(successor, policy.origin)
    if not pending.exists() or _read_key(pending) != following:
        pending.unlink(missing_ok=True)
        write_ledger_key(pending, following)

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

#: Per subcommand: one-line help, description, argument definitions, handler.
_Command = tuple[
    str,
    str,
    Callable[[argparse.ArgumentParser], None],
    Callable[[argparse.Namespace, TextIO], int],
]
_GROUPS = {
    "ledger": ("verify the ledger offline, or export it", "Verify or export the ledger."),
    "keys": (
        "manage the ledger's signing key and trust policy",
        "Manage the ledger's key file (its signing key and origin) and trust policy.",
    ),
}
_COMMANDS: dict[tuple[str, str], _Command] = {
    ("ledger", "verify"): (
        "verify the ledger offline and print a JSON report",
        "Verify the ledger offline (a store or an export) against a trust policy; print a "
        "JSON report. Exit 0 when it verifies, 1 when it does not, 2 when it cannot run.",
        _verify_args,
        _verify,
    ),
    ("ledger", "export"): (
        "write a self-contained export",
        "Write a self-contained export that verifies offline; PHI-free unless --with-evidence.",
        _export_args,
        _export,
    ),
    ("keys", "generate"): (
        "create the key file for a log's origin",
        "Create the ledger's key file (signing key and the log's origin) and, with --trust, "
        "its trust policy. An existing file is never replaced.",
        _generate_args,
        _generate,
    ),
    ("keys", "policy"): (
        "print the trust policy of a key file",
        "Print the trust policy of an existing key file; --origin must be the key file's.",
        _policy_args,
        _policy,
    ),
    ("keys", "rotate"): (
        "rotate the signing key, recorded in the log",
        "Rotate the signing key: record the key event in the log, update the trust policy, "
        "then replace the key file. Restart the gateway afterwards.",
        _rotate_args,
        _rotate,
    ),
}


def _read(path: Path) -> str:
    """The text of ``path``, or of standard input for ``-``."""
    if path == _STDIN:
        return sys.stdin.read()
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _Usage(f"cannot read {path}: {exc}") from exc


def _read_key(path: Path) -> LedgerKey:
    try:
        return parse_ledger_key(_read(path))
    except LedgerError as exc:
        raise _Usage(f"{path} does not hold a ledger key: {exc}") from exc


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def _print(out: TextIO, body: dict[str, Any]) -> None:
    out.write(json.dumps(body, indent=2) + "\n")


def _opt(path: Path | None) -> str | None:
    return None if path is None else str(path)
