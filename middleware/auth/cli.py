"""``consentry token issue``: mint a development access token and print it.

    consentry token issue --sub alice --scope "patient/*.rs launch/patient" --patient 123 \\
        --key-file dev-issuer.jwk --issuer http://127.0.0.1:8080/dev-issuer \\
        --audience http://127.0.0.1:8080/fhir [--fhir-user Practitioner/1] [--purpose TREAT] \\
        [--role doctor] [--ttl 3600] [--algorithm EdDSA|ES256] [--client-id ID]

Running the command is the explicit opt-in the :class:`UnsafeDevelopmentIssuer` requires. The
key file is created (mode 0600) when missing; a gateway with the development issuer enabled on
the same key file and issuer URL accepts the tokens. Standard output carries the token only;
the issuer's warning and any error go to standard error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from middleware.auth.devissuer import DEV_ALGORITHMS, UnsafeDevelopmentIssuer
from middleware.auth.identity import ClaimError, parse_fhir_user
from middleware.logging import configure_logging

__all__ = ["issue_token_command", "token_issue_parser"]


def token_issue_parser() -> argparse.ArgumentParser:
    """The argument parser of ``consentry token issue``."""
    parser = argparse.ArgumentParser(
        prog="consentry token issue",
        description="Mint an access token from the local development issuer (never production).",
    )
    add = parser.add_argument
    add("--sub", required=True, help="subject (the token's sub claim)")
    add("--scope", action="append", required=True, help="SMART scopes (repeatable)")
    add("--patient", help="launch patient id (the patient claim)")
    add("--fhir-user", dest="fhir_user", help="user resource, e.g. Practitioner/1")
    add("--purpose", action="append", default=[], help="purpose of use: CODE or system|code")
    add("--role", action="append", default=[], help="role (repeatable)")
    add("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    add("--key-file", dest="key_file", type=Path, required=True, help="private JWK file")
    add("--issuer", required=True, help="the iss URL the gateway trusts for this key")
    add("--audience", action="append", required=True, help="aud: the gateway's FHIR base URL")
    add("--algorithm", choices=DEV_ALGORITHMS, default="EdDSA", help="for a new key file")
    add("--client-id", dest="client_id", default="consentry-dev", help="client_id claim")
    return parser


def issue_token_command(
    argv: Sequence[str], *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run ``consentry token issue`` with ``argv`` (the arguments after ``token issue``);
    print the token on ``stdout`` and return the exit status (0, or 2 on a usage error)."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        args = token_issue_parser().parse_args(list(argv))
    except SystemExit as exc:  # argparse has printed the usage message
        return exc.code if isinstance(exc.code, int) else 2
    # Logs (the issuer's warning) go to stderr so that stdout is the token and nothing else.
    configure_logging("warning", err)
    try:
        if args.fhir_user is not None:
            parse_fhir_user(args.fhir_user)
        existed = args.key_file.exists()
        issuer = UnsafeDevelopmentIssuer.from_key_file(
            args.key_file, args.issuer, enabled=True, algorithm=args.algorithm
        )
        token = issuer.issue(
            args.sub,
            scopes=args.scope,
            audience=args.audience[0] if len(args.audience) == 1 else args.audience,
            patient=args.patient,
            fhir_user=args.fhir_user,
            purpose_of_use=args.purpose,
            roles=args.role,
            ttl=args.ttl,
            client_id=args.client_id,
        )
    except (ClaimError, ValueError, OSError) as exc:
        print(f"consentry token issue: {exc}", file=err)
        return 2
    if not existed:
        print(f"consentry token issue: created key file {args.key_file}", file=err)
    print(token, file=out)
    return 0
