"""The ``consentry`` command's surface: real nested subcommands (no phantom arguments), a
one-line help for every command and subcommand, help for every option, plain-text help, ``-``
for standard input where a file is read, and refusals that name the problem and exit 2."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from middleware.cli import _parser, main
from middleware.ledger.entry import NewEntry
from middleware.ledger.keyfile import generate_ledger_key
from middleware.ledger.leaf import EntryKind
from middleware.ledger.service import LedgerService
from middleware.ledger.trust import TrustedKey, TrustPolicy, format_policy
from middleware.storage.ledger_sqlite import SqliteLogStore

MAPPINGS = Path(__file__).parents[2] / "mappings"
ORIGIN = "gw.test/fhir/ledger"
DEV = "http://127.0.0.1:8080/dev-issuer"
AUDIENCE = "http://127.0.0.1:8080/fhir"


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    """Every (sub)command under ``parser``: its words, its parser and its one-line help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield (*path, name), sub, helps.get(name)
                yield from _commands(sub, (*path, name))


COMMANDS = [words for words, _, _ in _commands(_parser())]


def test_every_command_of_the_issue_is_a_real_subcommand() -> None:
    expected = {
        ("serve",),
        ("token", "issue"),
        ("ledger", "verify"),
        ("ledger", "export"),
        ("keys", "generate"),
        ("keys", "policy"),
        ("keys", "rotate"),
        ("mappings", "check"),
        ("mappings", "explain"),
    }
    assert expected <= set(COMMANDS)


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(w) for w in COMMANDS])
def test_every_command_has_a_one_line_help_and_every_option_has_help(
    words: tuple[str, ...],
) -> None:
    parser, summary = next((p, h) for w, p, h in _commands(_parser()) if w == words)
    assert summary, f"`consentry {' '.join(words)}` has no one-line help"
    assert "\n" not in summary
    assert parser.description, f"`consentry {' '.join(words)}` has no description"
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        assert action.help, f"`consentry {' '.join(words)}` {action.option_strings} has no help"
        assert action.nargs != argparse.REMAINDER


@pytest.mark.parametrize(
    "words", [(), *COMMANDS], ids=["consentry", *(" ".join(w) for w in COMMANDS)]
)
def test_help_is_plain_text_without_phantom_arguments(
    words: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*words, "--help"]) == 0
    out = capsys.readouterr().out
    assert "rest" not in out.split()
    assert "REST" not in out
    for markup in ("``", ":mod:", ":class:", ":func:"):
        assert markup not in out


@pytest.mark.parametrize("group", ["token", "ledger", "keys", "mappings"])
def test_a_group_without_its_subcommand_is_a_usage_error(
    group: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([group]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_unknown_subcommand_names_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "delete"]) == 2
    assert "invalid choice: 'delete'" in capsys.readouterr().err


# -- "-" reads standard input -----------------------------------------------------------------


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_mappings_explain_reads_the_resource_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    resource = {"resourceType": "Patient", "id": "p1"}
    _stdin(monkeypatch, json.dumps(resource).encode())
    argv = ["mappings", "explain", "--mappings", str(MAPPINGS), "--profile", "hospital-a"]
    assert main([*argv, "--resource", "-"]) == 0
    assert '"resourceType": "Patient"' in capsys.readouterr().out


def test_mappings_explain_resource_help_says_it_wants_a_path(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["mappings", "explain", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--resource FILE path of a file holding a JSON resource or Bundle (- reads stdin)" in (
        help_text
    )


def test_keys_policy_reads_the_key_file_from_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = generate_ledger_key(tmp_path / "ledger.key", ORIGIN)
    _stdin(monkeypatch, key.text().encode())
    assert main(["keys", "policy", "--key-file", "-"]) == 0
    out = capsys.readouterr().out
    assert f'origin = "{ORIGIN}"' in out
    assert key.key.vkey() in out


def test_ledger_verify_reads_the_trust_policy_from_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db, trust = tmp_path / "ledger.db", tmp_path / "trust.toml"
    key = generate_ledger_key(tmp_path / "ledger.key", ORIGIN)
    trust.write_text(format_policy(TrustPolicy(ORIGIN, (TrustedKey(key.key.vkey(), 0),))))

    async def record() -> None:
        service = LedgerService(lambda: SqliteLogStore.open(db), key.key, origin=ORIGIN)
        await service.append(NewEntry.create(EntryKind.ADMIN, b"{}", recorded_us=1))
        await service.aclose()

    asyncio.run(record())
    _stdin(monkeypatch, trust.read_bytes())
    assert main(["ledger", "verify", "--store", f"sqlite:{db}", "--trust", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["ok"], report["size"]) == (True, 1)


# -- token issue validates scopes and URLs ----------------------------------------------------


def _issue(tmp_path: Path, *argv: str) -> list[str]:
    return [
        "token",
        "issue",
        "--sub",
        "alice",
        "--key-file",
        str(tmp_path / "dev.jwk"),
        "--new-key",
        *argv,
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # SMART 2.x scope grammar: context/type.permissions
        (["--scope", "bogus/scope"], "not a SMART v1 or v2 scope: bogus/scope"),
        (["--scope", "patient/*.rs patient/Nothing.read"], "patient/Nothing.read"),
        (["--scope", "patient/Observation.rx"], "patient/Observation.rx"),
        (["--scope", "patient/Observation.sr"], "patient/Observation.sr"),  # cruds order
        (["--scope", "patient/Observation.read?category=x"], "read?category"),  # v1: no query
        # URLs
        (["--scope", "openid", "--issuer", "notaurl"], "--issuer: 'notaurl'"),
        (["--scope", "openid", "--issuer", "ftp://x.example/i"], "--issuer"),
        (["--scope", "openid", "--audience", "http//broken:url"], "--audience"),
        (["--scope", "openid", "--audience", "two words"], "--audience"),
    ],
    ids=[
        "bogus-scope",
        "unknown-type",
        "unknown-permission",
        "v2-letters-out-of-order",
        "v1-with-query",
        "issuer-not-a-url",
        "issuer-not-http",
        "audience-broken-url",
        "audience-with-space",
    ],
)
def test_token_issue_refuses_bad_scopes_and_urls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    defaults = {"--issuer": DEV, "--audience": AUDIENCE}
    extra = [x for k, v in defaults.items() if k not in argv for x in (k, v)]
    assert main([*_issue(tmp_path, *argv), *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "dev.jwk").exists()  # refused before anything was written


@pytest.mark.parametrize(
    "scopes",
    [
        "patient/*.rs launch/patient openid fhirUser",
        "user/Observation.read offline_access",
        "system/*.cruds",
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
    ],
    ids=["v2-patient", "v1-user", "v2-system", "v2-granular"],
)
def test_token_issue_accepts_smart_scopes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], scopes: str
) -> None:
    argv = _issue(tmp_path, "--scope", scopes, "--issuer", DEV, "--audience", AUDIENCE)
    assert main(argv) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.count(".") == 2  # a JWS compact token


def test_token_issue_admits_a_configured_extra_scope(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = _issue(tmp_path, "--issuer", DEV, "--audience", AUDIENCE)
    scope = ["--scope", "consentry/break-glass"]
    assert main([*base, *scope]) == 2
    assert main([*base, *scope, "--allow-scope", "consentry/break-glass"]) == 0
    capsys.readouterr()


# -- keys policy refuses a mismatch -----------------------------------------------------------


def test_keys_policy_refuses_an_origin_other_than_the_key_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file = tmp_path / "ledger.key"
    generate_ledger_key(key_file, ORIGIN)
    argv = ["keys", "policy", "--key-file", str(key_file), "--origin", "other.example/ledger"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "'other.example/ledger'" in captured.err
    assert f"'{ORIGIN}'" in captured.err
    assert main(["keys", "policy", "--key-file", str(key_file), "--origin", ORIGIN]) == 0
    assert main(["keys", "policy", "--key-file", str(key_file)]) == 0


def test_keys_rotate_refuses_a_policy_of_another_origin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_file, trust = tmp_path / "ledger.key", tmp_path / "trust.toml"
    ledger_key = generate_ledger_key(key_file, ORIGIN)
    trust.write_text(
        f'origin = "other.example/ledger"\n\n[[keys]]\nvkey = "{ledger_key.key.vkey()}"\n'
        "not_before = 0\n"
    )
    store = f"sqlite:{tmp_path / 'ledger.db'}"
    argv = ["keys", "rotate", "--key-file", str(key_file), "--store", store]
    assert main([*argv, "--trust", str(trust)]) == 2
    assert "rotate with the policy of the log this key signs" in capsys.readouterr().err
    assert not key_file.with_name("ledger.key.next").exists()


def test_serve_reads_its_settings_file_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A misspelt setting piped in stops serve before it listens, naming the setting."""
    _stdin(monkeypatch, b'upstream = "http://127.0.0.1:8103/fhir"\nbogus = 1\n')
    assert main(["serve", "--config", "-"]) == 2
    assert "-: unknown setting 'bogus'" in capsys.readouterr().err
