"""``consentry token issue``: mint a development access token and print it.

    consentry token issue --sub alice --scope "patient/*.rs launch/patient" --patient 123 \\
        --key-file dev-issuer.jwk --issuer http://127.0.0.1:8080/dev-issuer \\
        --audience http://127.0.0.1:8080/fhir [--fhir-user Practitioner/1] [--purpose TREAT] \\
        [--role doctor] [--organization Organization/acme [--organization-claim NAME]] \\
        [--ttl 3600] [--algorithm EdDSA|ES256] [--client-id ID]

Running the command is the explicit opt-in the :class:`UnsafeDevelopmentIssuer` requires. The
key file must exist (``consentry init`` writes one; a gateway with the development issuer on
creates its own) unless ``--new-key`` asks for one to be created (mode 0600): a mistyped path
would otherwise mint tokens from a fresh key that no gateway trusts, and every request would be
a puzzling 401. A gateway with the development issuer enabled on the same key file and issuer
URL accepts the tokens. ``--organization`` sets the caller's organization (what the audit index,
the accounting's exemptions and its recipients read) in the claim the gateway reads it from,
its ``auth.organization_claim`` (``organization`` by default; ``--organization-claim`` names
another, but not one the token already carries or the gateway reads for something else,
:data:`RESERVED_CLAIMS`, whose value it would overwrite); the value is checked as the gateway
checks it. Standard output carries the token only;
the issuer's warning and any error go to standard error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final, TextIO
from urllib.parse import urlsplit

from middleware.auth.devissuer import DEV_ALGORITHMS, UnsafeDevelopmentIssuer, load_or_create_key
from middleware.auth.identity import ClaimError, parse_fhir_user, parse_organization
from middleware.auth.scopes import parse_scopes
from middleware.auth.settings import STANDARD_CLAIMS
from middleware.logging import configure_logging

__all__ = ["RESERVED_CLAIMS", "issue_token_command", "register", "token_issue_parser"]

_DESCRIPTION = "Mint an access token from the local development issuer (never production)."
#: Claims ``--organization-claim`` may not name: the registered claims (RFC 7519 §4.1), the
#: ones the issuer writes (``jti``, ``client_id``, ``scope``) and the ones the gateway reads
#: (``azp``, ``patient``, ``fhirUser``, and the issuer's roles and purpose-of-use claims).
#: The organization would overwrite the value, so the token would say something else.
RESERVED_CLAIMS: Final = STANDARD_CLAIMS | {"roles", "purpose_of_use"}


class _Usage(Exception):
    """A value the command refuses (exit status 2)."""


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``token`` and its subcommand ``issue`` to ``commands`` (the subparsers of
    ``consentry``); ``issue`` sets ``run(args, out) -> status``."""
    about = "Development access tokens, for local testing only."
    token = commands.add_parser("token", help="development access tokens", description=about)
    actions = token.add_subparsers(title="commands", metavar="COMMAND", required=True)
    issue = actions.add_parser(
        "issue", help="mint a token from the development issuer", description=_DESCRIPTION
    )
    _issue_arguments(issue)
    issue.set_defaults(run=lambda args, out: _issue(args, out, sys.stderr))


def token_issue_parser() -> argparse.ArgumentParser:
    """The argument parser of ``consentry token issue``."""
    parser = argparse.ArgumentParser(prog="consentry token issue", description=_DESCRIPTION)
    _issue_arguments(parser)
    return parser


def _issue_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--sub", required=True, help="subject (the token's sub claim)")
    add(
        "--scope",
        action="append",
        required=True,
        help="SMART scopes, v1 or v2, space-separated (repeatable), e.g. 'patient/*.rs openid'",
    )
    add(
        "--allow-scope",
        dest="allow_scope",
        action="append",
        default=[],
        help="a further scope the gateway is configured to recognise, e.g. its "
        "break_glass_scope (repeatable)",
    )
    add("--patient", help="launch patient id (the patient claim)")
    add("--fhir-user", dest="fhir_user", help="user resource, e.g. Practitioner/1")
    add("--purpose", action="append", default=[], help="purpose of use: CODE or system|code")
    add("--role", action="append", default=[], help="role (repeatable)")
    add(
        "--organization",
        help="the caller's organization: Organization/<id> or a plain name",
    )
    add(
        "--organization-claim",
        dest="organization_claim",
        default="organization",
        help="the claim the gateway reads it from, its auth.organization_claim "
        "(default organization)",
    )
    add("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    add(
        "--key-file",
        dest="key_file",
        type=Path,
        required=True,
        help="the issuer's private JWK file (must exist unless --new-key)",
    )
    add(
        "--new-key",
        dest="new_key",
        action="store_true",
        help="create the key file when it does not exist",
    )
    add("--issuer", required=True, help="the iss URL the gateway trusts for this key")
    add(
        "--audience",
        action="append",
        required=True,
        help="aud: the gateway's FHIR base URL, or an audience name it is configured with "
        "(repeatable)",
    )
    add("--algorithm", choices=DEV_ALGORITHMS, default="EdDSA", help="for a new key file")
    add("--client-id", dest="client_id", default="consentry-dev", help="client_id claim")


def issue_token_command(
    argv: Sequence[str], *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run ``consentry token issue`` with ``argv`` (the arguments after ``token issue``);
    print the token on ``stdout`` and return the exit status (0, or 2 on a usage error)."""
    try:
        args = token_issue_parser().parse_args(list(argv))
    except SystemExit as exc:  # argparse has printed the usage message
        return exc.code if isinstance(exc.code, int) else 2
    return _issue(args, stdout or sys.stdout, stderr or sys.stderr)


def _issue(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    # Logs (the issuer's warning) go to stderr so that stdout is the token and nothing else.
    configure_logging("warning", err)
    try:
        _check_scopes(args.scope, args.allow_scope)
        _check_url("--issuer", args.issuer)
        for audience in args.audience:
            _check_audience(audience)
        if args.fhir_user is not None:
            # An absolute fhirUser must be under the gateway's base: the token's audience.
            parse_fhir_user(args.fhir_user, args.audience)
        if args.organization is not None:
            parse_organization(args.organization, "--organization")
        if not args.organization_claim.strip():
            raise _Usage("--organization-claim: a claim name is needed")
        if args.organization_claim.strip() in RESERVED_CLAIMS:
            raise _Usage(
                f"--organization-claim: {args.organization_claim.strip()} is a claim the "
                "token carries or the gateway reads for something else"
            )
        existed = args.key_file.exists()
        if not existed and not args.new_key:
            raise _Usage(
                f"--key-file: {args.key_file} does not exist (consentry init writes one; "
                "--new-key creates it, but no gateway trusts a new key until it is configured)"
            )
        issuer = UnsafeDevelopmentIssuer(
            args.issuer,
            enabled=True,
            key=load_or_create_key(args.key_file, args.algorithm),
            organization_claim=args.organization_claim,
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
            organization=args.organization,
        )
    except (_Usage, ClaimError, ValueError, OSError) as exc:
        print(f"consentry token issue: {exc}", file=err)
        return 2
    if not existed:
        print(f"consentry token issue: created key file {args.key_file}", file=err)
    print(token, file=out)
    return 0


def _check_scopes(scopes: Sequence[str], allowed: Sequence[str]) -> None:
    """Refuse a scope the gateway would drop (it grants nothing there: SMART 2.x grammar)."""
    parsed = parse_scopes(scopes, extra=allowed)
    if parsed.dropped:
        raise _Usage(
            f"--scope: not a SMART v1 or v2 scope: {' '.join(parsed.dropped)} (expected e.g. "
            "patient/Observation.rs, user/*.read, system/*.cruds, openid, fhirUser, "
            "launch/patient; --allow-scope admits another)"
        )


def _check_audience(value: str) -> None:
    """RFC 7519 §4.1.3: ``aud`` is a StringOrURI, so a name is allowed, but a value with a
    colon is a URI: then it must be the absolute http(s) URL of a FHIR base."""
    if not value or value != value.strip() or any(c.isspace() for c in value):
        raise _Usage(f"--audience: {value!r} is neither a URL nor an audience name")
    if ":" in value:
        _check_url("--audience", value)


def _check_url(option: str, value: str) -> None:
    """Refuse what is not an absolute http(s) URL without a fragment (RFC 7519 ``iss`` and
    ``aud`` are compared as strings, so a typo would only surface as a refused token)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        raise _Usage(f"{option}: {value!r} is not an absolute http(s) URL")
