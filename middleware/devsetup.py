"""``consentry init``: a working local-development configuration in one command.

    consentry init DIR [--upstream URL] [--host H] [--port P] [--origin ORIGIN] [--force]

writes into ``DIR`` (named on purpose, never implied: the file names are the gateway's
defaults, so the current directory may be a deployment's):

- ``consentry.toml``: the upstream, the listen address, a SQLite store in ``DIR``, the ledger
  key file, and the ``[auth]`` table that turns the
  :class:`~middleware.auth.devissuer.UnsafeDevelopmentIssuer` on for tokens addressed to the
  gateway's own FHIR base;
- ``dev-issuer.jwk``: the development issuer's private key (mode 0600), the file
  ``consentry token issue --key-file`` mints tokens from;
- ``consentry-ledger.key``: the ledger's signing key with its origin
  (:func:`middleware.ledger.keyfile.generate_ledger_key`, mode 0600);
- ``trust.toml``: the trust policy ``consentry ledger verify --trust`` checks that key against.

Paths inside ``consentry.toml`` are absolute (settings resolve relative paths against the
directory the gateway runs in, which need not be ``DIR``). Existing files are never
overwritten without ``--force``. A SQLite store in ``DIR`` is never touched, even with
``--force``: its ledger is an audit trail the current key signed (a new key cannot continue
it), so ``init`` refuses until whoever means to discard that trail moves it away. Then the
next commands (serve, mint a token, verify the ledger) are printed.

Everything written is for development only: anyone who can read ``dev-issuer.jwk`` can mint a
token naming anyone, so the configuration says so in its first lines.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Final, TextIO
from urllib.parse import urlsplit

__all__ = ["FILES", "add_init_parser", "run_init"]

SETTINGS: Final = "consentry.toml"
DEV_KEY: Final = "dev-issuer.jwk"
LEDGER_KEY: Final = "consentry-ledger.key"
TRUST: Final = "trust.toml"
STORE: Final = "consentry.db"
#: What ``init`` writes, in the order it writes them.
FILES: Final = (SETTINGS, DEV_KEY, LEDGER_KEY, TRUST)
#: SQLite's files for the store (WAL mode keeps two beside the database).
_STORE_FILES: Final = (STORE, f"{STORE}-wal", f"{STORE}-shm")
_DEFAULT_UPSTREAM: Final = "http://127.0.0.1:8103/fhir"
_DEFAULT_ORIGIN: Final = "localhost/consentry/ledger"
_BASE_PATH: Final = "/fhir"


class InitError(Exception):
    """``init`` cannot write the configuration (exit status 2)."""


def add_init_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``init`` on the ``consentry`` command's subparsers."""
    init = commands.add_parser(
        "init",
        help="write a local development configuration (dev token issuer, keys, trust policy)",
        description=(
            "Write a working local-development configuration into DIR: consentry.toml with "
            "the development token issuer on, its key, the ledger signing key with its "
            "origin, and the trust policy for `consentry ledger verify`. Never for production."
        ),
    )
    add = init.add_argument
    add("dir", type=Path, help="target directory (created if missing), e.g. dev")
    add(
        "--upstream",
        default=_DEFAULT_UPSTREAM,
        help=f"upstream FHIR base URL ({_DEFAULT_UPSTREAM})",
    )
    add("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    add("--port", type=int, default=8080, help="listen port (default 8080)")
    add("--origin", default=_DEFAULT_ORIGIN, help=f"the ledger's origin ({_DEFAULT_ORIGIN})")
    add(
        "--force",
        action="store_true",
        help="replace existing configuration and keys (never a store: move it away first)",
    )
    init.set_defaults(run=run_init)


def run_init(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Write the configuration ``args`` describe (see the module docstring) and print the
    next commands on ``out`` (standard output); return the exit status (0, or 2 with the
    reason on standard error)."""
    out = out or sys.stdout
    try:
        written = _init(args)
    except InitError as exc:
        print(f"consentry init: {exc}", file=sys.stderr)
        return 2
    out.write(_next_steps(args, written))
    return 0


def _init(args: argparse.Namespace) -> list[Path]:
    # Imported here: `consentry --help` and `serve` build this parser, and need none of it.
    from middleware.auth.devissuer import load_or_create_key  # noqa: PLC0415
    from middleware.errors import SettingsError  # noqa: PLC0415
    from middleware.ledger.errors import MalformedError  # noqa: PLC0415
    from middleware.ledger.keyfile import generate_ledger_key  # noqa: PLC0415
    from middleware.ledger.trust import TrustedKey, TrustPolicy, format_policy  # noqa: PLC0415

    if not 0 < args.port < 65536:
        raise InitError(f"--port: expected 1..65535, got {args.port}")
    _check_url("--upstream", args.upstream)
    _check_url("--host", f"http://{args.host}:{args.port}")
    directory: Path = args.dir
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InitError(f"cannot create {directory}: {exc.strerror}") from exc
    stores = [name for name in _STORE_FILES if (directory / name).exists()]
    if stores:
        raise InitError(
            f"{directory} holds a store ({', '.join(stores)}): its ledger is an audit trail "
            "signed by the key there, which a new key cannot continue; init never removes "
            "it, not even with --force. Move it away yourself if you mean to discard it"
        )
    present = [name for name in FILES if (directory / name).exists()]
    if present and not args.force:
        raise InitError(
            f"{directory} already holds {', '.join(present)}; use --force to replace them"
        )
    for name in present:
        (directory / name).unlink()
    absolute = directory.resolve()
    try:
        ledger_key = generate_ledger_key(absolute / LEDGER_KEY, args.origin)
    except MalformedError as exc:
        raise InitError(f"--origin: {exc}") from exc
    except OSError as exc:
        raise InitError(f"cannot write {directory / LEDGER_KEY}: {exc.strerror}") from exc
    try:
        load_or_create_key(absolute / DEV_KEY)
        policy = TrustPolicy(ledger_key.origin, (TrustedKey(ledger_key.key.vkey(), 0),))
        _write_new(absolute / TRUST, format_policy(policy))
        _write_new(absolute / SETTINGS, _settings(args, absolute))
    except (OSError, ValueError, SettingsError) as exc:
        raise InitError(f"cannot write the configuration in {directory}: {exc}") from exc
    return [directory / name for name in FILES]


def _check_url(option: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise InitError(f"{option}: expected an absolute http(s) URL, got {url!r}")


def _write_new(path: Path, text: str) -> None:
    with path.open("x", encoding="utf-8") as fh:
        fh.write(text)


def _settings(args: argparse.Namespace, directory: Path) -> str:
    """The TOML: JSON string escapes are TOML basic-string escapes."""
    root = f"http://{args.host}:{args.port}"

    def q(text: str | Path) -> str:
        return json.dumps(str(text))

    return "\n".join(
        [
            "# Local development settings written by `consentry init`. NOT FOR PRODUCTION:",
            f"# anyone who can read {DEV_KEY} can mint a token naming anyone.",
            f"upstream = {q(args.upstream)}",
            f"host = {q(args.host)}",
            f"port = {args.port}",
            f"base_path = {q(_BASE_PATH)}",
            f"store = {q('sqlite:' + str(directory / STORE))}",
            f"ledger_key_file = {q(directory / LEDGER_KEY)}",
            "",
            "[auth]",
            "dev_issuer_enabled = true",
            f"dev_issuer_url = {q(root + '/dev-issuer')}",
            f"dev_issuer_key_file = {q(directory / DEV_KEY)}",
            f"audiences = [{q(root + _BASE_PATH)}]",
            "",
        ]
    )


def _next_steps(args: argparse.Namespace, written: list[Path]) -> str:
    directory: Path = args.dir
    root = f"http://{args.host}:{args.port}"

    def path(name: str) -> str:
        return shlex.quote(str(directory / name))

    lines = [
        f"Wrote {', '.join(str(p) for p in written)} (development only).",
        "Next:",
        f"  consentry serve --config {path(SETTINGS)}",
        f"  consentry token issue --key-file {path(DEV_KEY)} --issuer {root}/dev-issuer \\",
        f"      --audience {root}{_BASE_PATH} --sub ehr --scope 'system/*.cruds'",
        f"  consentry ledger verify --store sqlite:{path(STORE)} --trust {path(TRUST)}",
        "",
    ]
    return "\n".join(lines)
