"""The recipient directory (audit/recipients.py, the ``recipient_directory_file`` setting) and
the agent organization on the command line: the directory file is validated at start (a bad one
refuses to start), and ``consentry audit accounting --config`` names each recipient with the
directory's name and address (45 CFR 164.528(b)(2)(ii)); ``audit search`` and ``audit access``
show the caller's organization. Expected values come from the directory and the organizations
the test writes, not from the reports."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from middleware.audit.accounting import RecipientInfo
from middleware.audit.recipients import TEXT_MAX, load_directory, parse_directory
from middleware.cli import main
from middleware.errors import SettingsError
from middleware.ledger.keyfile import LedgerKey, write_ledger_key
from middleware.ledger.signing import SigningKey
from middleware.settings import load_settings
from middleware.storage.ledger_sqlite import SqliteLogStore
from tests.support.audit_fill import fill_audit_log

ORIGIN = "gw.example/fhir/ledger"
T0 = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000_000
COUNT = 24  # entry n: agent Practitioner/pr-(n % 4), purpose TREAT/HRESCH/PUBHLTH by n % 3
ORGANIZATIONS = ("Organization/acme", None)  # entry n: ORGANIZATIONS[n % 2]
DIRECTORY = """
[recipients."Practitioner/pr-0"]
name = "Dr Zero"
address = "0 Main Street, Springfield"

[recipients."Organization/acme"]
name = "Acme Laboratory"
address = "5 Lab Way, Shelbyville"
"""
# agent -> (recipient, address, organization) as the directory above and ORGANIZATIONS say
EXPECTED = {
    "Practitioner/pr-0": ("Dr Zero", "0 Main Street, Springfield", "Organization/acme"),
    "Practitioner/pr-1": ("Practitioner/pr-1", "", ""),
    "Practitioner/pr-2": ("Acme Laboratory", "5 Lab Way, Shelbyville", "Organization/acme"),
    "Practitioner/pr-3": ("Practitioner/pr-3", "", ""),
}
UPSTREAM = 'upstream = "http://127.0.0.1:1/fhir"\n'


# --- the directory file -----------------------------------------------------------------------

VALID: list[tuple[str, dict[str, Any], dict[str, RecipientInfo]]] = [
    ("empty", {}, {}),
    ("no-recipients", {"recipients": {}}, {}),
    (
        "name-and-address",
        {"recipients": {"Practitioner/p": {"name": "Dr P", "address": "1 Road\nTown"}}},
        {"Practitioner/p": RecipientInfo("Dr P", "1 Road\nTown")},
    ),
    (
        "name-only-plain-organization",
        {"recipients": {"County Lab": {"name": "County Laboratory"}}},
        {"County Lab": RecipientInfo("County Laboratory", None)},
    ),
    (
        "login-key",
        {"recipients": {"https://idp.example#u1": {"name": "U One"}}},
        {"https://idp.example#u1": RecipientInfo("U One", None)},
    ),
]


@pytest.mark.parametrize(("data", "expected"), [v[1:] for v in VALID], ids=[v[0] for v in VALID])
def test_a_valid_directory(data: dict[str, Any], expected: dict[str, RecipientInfo]) -> None:
    assert dict(parse_directory(data)) == expected


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-top-key", {"people": {}}, "unknown key 'people'"),
    ("recipients-not-table", {"recipients": ["x"]}, "recipients: expected a table"),
    ("entry-not-table", {"recipients": {"a": "Dr A"}}, "expected a table with name"),
    ("no-name", {"recipients": {"a": {"address": "x"}}}, ".name: required"),
    ("empty-name", {"recipients": {"a": {"name": " "}}}, ".name: required"),
    ("name-not-text", {"recipients": {"a": {"name": 7}}}, ".name: required"),
    ("name-with-newline", {"recipients": {"a": {"name": "A\nB"}}}, ".name: required"),
    ("name-too-long", {"recipients": {"a": {"name": "n" * (TEXT_MAX + 1)}}}, ".name: required"),
    ("address-not-text", {"recipients": {"a": {"name": "A", "address": 1}}}, ".address: expected"),
    ("address-control", {"recipients": {"a": {"name": "A", "address": "x\x07"}}}, ".address: expected"),
    ("unknown-field", {"recipients": {"a": {"name": "A", "phone": "1"}}}, ".phone: unknown field"),
    ("key-control", {"recipients": {"a\tb": {"name": "A"}}}, "the key must be printable"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "problem"), [i[1:] for i in INVALID], ids=[i[0] for i in INVALID])
def test_an_invalid_directory_is_refused_naming_the_problem(
    data: dict[str, Any], problem: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        parse_directory(data)
    assert problem in str(refused.value)


def test_every_problem_is_named_at_once() -> None:
    data = {"x": 1, "recipients": {"a": {}, "b": {"name": "B", "address": 2}}}
    with pytest.raises(SettingsError) as refused:
        parse_directory(data)
    assert str(refused.value).count("\n  ") == 3


BAD_FILES = [
    ("missing", None, "cannot read"),
    ("not-toml", "recipients = [", "is not TOML"),
    ("invalid", '[recipients."a"]\naddress = "x"\n', ".name: required"),
]


@pytest.mark.parametrize(
    ("text", "problem"), [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES]
)
def test_the_gateway_refuses_to_start_on_a_bad_directory_file(
    tmp_path: Path, text: str | None, problem: str
) -> None:
    path = tmp_path / "recipients.toml"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(SettingsError) as refused:
        load_directory(path)
    assert problem in str(refused.value)
    with pytest.raises(SettingsError) as at_start:
        load_settings(
            overrides={"upstream": "http://127.0.0.1:1/fhir", "recipient_directory_file": str(path)}
        )
    message = str(at_start.value)
    assert "recipient_directory_file" in message
    assert problem in message


def test_without_a_directory_file_the_directory_is_empty() -> None:
    settings = load_settings(overrides={"upstream": "http://127.0.0.1:1/fhir"})
    assert settings.recipient_directory_file == ""
    assert dict(settings.recipient_directory()) == {}


# --- the command line -------------------------------------------------------------------------


@pytest.fixture
def filled(tmp_path: Path) -> tuple[str, Path]:
    """A SQLite audit log of Patient/a (COUNT entries) and a --config naming the directory."""
    key = SigningKey.from_seed(ORIGIN, bytes(range(32)))
    write_ledger_key(tmp_path / "ledger.key", LedgerKey(key, ORIGIN))

    async def fill() -> None:
        store = await SqliteLogStore.open(tmp_path / "audit.db")
        try:
            await fill_audit_log(
                store,
                key,
                ORIGIN,
                count=COUNT,
                patients=["Patient/a"],
                start_us=T0,
                step_us=HOUR,
                organizations=ORGANIZATIONS,
            )
        finally:
            await store.close()

    asyncio.run(fill())
    (tmp_path / "recipients.toml").write_text(DIRECTORY, encoding="utf-8")
    config = tmp_path / "consentry.toml"
    config.write_text(f'{UPSTREAM}recipient_directory_file = "{tmp_path / "recipients.toml"}"\n')
    return f"sqlite:{tmp_path / 'audit.db'}", config


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(list(argv))
    return status, out.getvalue()


def _accounting(filled: tuple[str, Path], fmt: str, *extra: str) -> tuple[int, str]:
    store, config = filled
    return _run(
        "audit", "accounting", "--store", store, "--patient", "Patient/a",
        "--config", str(config), "--format", fmt, *extra,
    )  # fmt: skip


def test_the_cli_accounting_csv_names_the_directory_s_recipients(
    filled: tuple[str, Path],
) -> None:
    status, text = _accounting(filled, "csv", "--detail")
    assert status == 0
    lines = list(csv.DictReader(io.StringIO(text)))
    # the accountable entries: purposes HRESCH and PUBHLTH (n % 3 != 0), TREAT is exempt
    assert sorted(int(line["ledger_index"]) for line in lines) == [n for n in range(COUNT) if n % 3]
    for line in lines:
        expected = EXPECTED[line["agent"]]
        assert (line["recipient"], line["recipient_address"], line["organization"]) == expected


@pytest.mark.parametrize("fmt", ["bundle", "pdf"], ids=["bundle", "pdf"])
def test_the_cli_accounting_bundle_and_pdf_name_them_too(
    filled: tuple[str, Path], fmt: str
) -> None:
    _, config = filled
    out = config.parent / f"accounting.{fmt}"
    status, _ = _accounting(filled, fmt, "--out", str(out))
    assert status == 0
    if fmt == "pdf":
        pages = PdfReader(io.BytesIO(out.read_bytes())).pages
        text = " ".join("".join(page.extract_text() for page in pages).split())
    else:
        text = json.dumps(json.loads(out.read_text()))
    for name, address, _ in EXPECTED.values():
        assert (f"{name}, {address}" if address else name) in text


def test_the_cli_refuses_a_config_whose_directory_is_bad(
    filled: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, config = filled
    (config.parent / "recipients.toml").write_text('[recipients."a"]\n', encoding="utf-8")
    status, text = _accounting(filled, "csv")
    assert status == 2
    assert text == ""
    assert "recipient_directory_file" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["search", "access-report"], ids=["search", "access-report"])
def test_search_and_access_report_show_the_agent_s_organization(
    filled: tuple[str, Path], command: str
) -> None:
    store, _ = filled
    status, text = _run("audit", command, "--store", store, "--patient", "Patient/a")
    assert status == 0
    lines = list(csv.DictReader(io.StringIO(text)))
    assert len(lines) == COUNT
    for line in lines:
        n = int(line["index"] if command == "search" else line["ledger_index"])
        assert line["organization"] == (ORGANIZATIONS[n % 2] or "")
