"""``consentry init``: a local development configuration that works as written.

The files are read back by the code that will use them (settings, the development issuer, the
ledger key file, the trust policy), and a gateway built from the settings accepts a token minted
from the written key; nothing existing is overwritten without ``--force``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import pytest
import respx

from middleware.app import create_app
from middleware.auth.devissuer import UnsafeDevelopmentIssuer
from middleware.cli import main
from middleware.ledger.keyfile import read_ledger_key
from middleware.ledger.trust import parse_policy
from middleware.settings import load_settings
from middleware.storage.ledger_memory import MemoryLogStore

FILES = ("consentry.toml", "dev-issuer.jwk", "consentry-ledger.key", "trust.toml")


def init(*argv: str) -> int:
    return main(["init", *argv])


def test_init_writes_a_configuration_the_gateway_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "dev"
    assert init(str(target), "--origin", "dev.example/ledger") == 0
    assert sorted(p.name for p in target.iterdir()) == sorted(FILES)
    settings = load_settings(config_file=target / "consentry.toml", env={})
    assert settings.upstream == "http://127.0.0.1:8103/fhir"
    assert settings.store == f"sqlite:{target.resolve() / 'consentry.db'}"
    assert settings.auth.dev_issuer_enabled
    assert settings.auth.dev_issuer_url == "http://127.0.0.1:8080/dev-issuer"
    assert settings.auth.audiences == ("http://127.0.0.1:8080/fhir",)
    assert settings.auth.dev_issuer_key_file == target.resolve() / "dev-issuer.jwk"
    assert Path(settings.ledger_key_file) == target.resolve() / "consentry-ledger.key"
    # the ledger key carries its origin, and the policy trusts exactly that key for it
    ledger_key = read_ledger_key(Path(settings.ledger_key_file))
    assert ledger_key.origin == "dev.example/ledger"
    policy = parse_policy((target / "trust.toml").read_text(encoding="utf-8"))
    assert policy.origin == ledger_key.origin
    assert [k.vkey for k in policy.keys] == [ledger_key.key.vkey()]
    # secrets are readable by their owner only
    for name in ("dev-issuer.jwk", "consentry-ledger.key"):
        assert stat.S_IMODE(os.stat(target / name).st_mode) == 0o600
    printed = capsys.readouterr().out
    assert f"consentry serve --config {target / 'consentry.toml'}" in printed
    assert f"--key-file {target / 'dev-issuer.jwk'}" in printed
    assert (
        f"consentry ledger verify --store sqlite:{target / 'consentry.db'} "
        f"--trust {target / 'trust.toml'}"
    ) in printed


async def test_a_gateway_on_the_written_settings_accepts_a_minted_token(tmp_path: Path) -> None:
    """The point of init: no hand-written TOML between it and an authenticated request
    (without the development issuer on, the same request is 401)."""
    assert init(str(tmp_path), "--port", "8181", "--upstream", "http://upstream.test/fhir") == 0
    settings = load_settings(config_file=tmp_path / "consentry.toml", env={})
    router = respx.Router(assert_all_called=False, base_url="http://upstream.test/fhir")
    router.get("/Patient").respond(200, json={"resourceType": "Bundle", "type": "searchset"})
    gateway = create_app(
        settings,
        upstream=httpx.MockTransport(router.async_handler),
        store=MemoryLogStore(),
    )
    issuer = UnsafeDevelopmentIssuer.from_key_file(
        tmp_path / "dev-issuer.jwk", "http://127.0.0.1:8181/dev-issuer", enabled=True
    )
    token = issuer.issue("ehr", scopes="system/*.rs", audience="http://127.0.0.1:8181/fhir")
    transport = httpx.ASGITransport(app=gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8181") as client:
        anonymous = await client.get("/fhir/Patient")
        answer = await client.get("/fhir/Patient", headers={"authorization": f"Bearer {token}"})
    assert anonymous.status_code == 401
    assert answer.status_code == 200
    assert answer.json()["type"] == "searchset"


def test_init_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert init(str(tmp_path)) == 0
    before = {name: (tmp_path / name).read_bytes() for name in FILES}
    capsys.readouterr()
    assert init(str(tmp_path)) == 2
    assert "already holds" in capsys.readouterr().err
    assert {name: (tmp_path / name).read_bytes() for name in FILES} == before


def test_init_refuses_a_directory_holding_only_a_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ledger signed by some earlier key: a new key could not continue it."""
    (tmp_path / "consentry.db").write_bytes(b"ledger")
    assert init(str(tmp_path)) == 2
    assert "consentry.db" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["consentry.db"]


def test_init_force_replaces_the_keys(tmp_path: Path) -> None:
    assert init(str(tmp_path)) == 0
    old_key = (tmp_path / "consentry-ledger.key").read_text(encoding="ascii")
    old_dev = (tmp_path / "dev-issuer.jwk").read_text(encoding="utf-8")
    assert init(str(tmp_path), "--force") == 0
    assert (tmp_path / "consentry-ledger.key").read_text(encoding="ascii") != old_key
    assert (tmp_path / "dev-issuer.jwk").read_text(encoding="utf-8") != old_dev
    policy = parse_policy((tmp_path / "trust.toml").read_text(encoding="utf-8"))
    assert [k.vkey for k in policy.keys] == [
        read_ledger_key(tmp_path / "consentry-ledger.key").key.vkey()
    ]


def test_init_force_never_removes_a_store_nor_the_key_that_signed_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Attack (by accident): ``consentry init --force`` run in a deployment's directory, whose
    ``consentry.db`` and ``consentry-ledger.key`` carry the default names, deleted the audit
    trail and its signing key for good. The store and every file beside it stay untouched."""
    assert init(str(tmp_path)) == 0
    (tmp_path / "consentry.db").write_bytes(b"ledger")
    (tmp_path / "consentry.db-wal").write_bytes(b"wal")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    capsys.readouterr()
    assert init(str(tmp_path), "--force") == 2
    assert "never removes" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_init_names_its_directory(capsys: pytest.CaptureFixture[str]) -> None:
    """The default file names are the gateway's own, so ``init`` never writes into the
    current directory unless it is named."""
    assert main(["init"]) == 2
    assert "required: dir" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--upstream", "ftp://x/fhir"), "--upstream"),
        (("--upstream", "http://x/fhir?q=1"), "--upstream"),
        (("--port", "0"), "--port"),
        (("--origin", "two\nlines"), "--origin"),
    ],
    ids=["upstream-scheme", "upstream-query", "port", "origin"],
)
def test_init_refuses_bad_values_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    target = tmp_path / "dev"
    assert init(str(target), *argv) == 2
    assert message in capsys.readouterr().err
    assert not target.exists() or list(target.iterdir()) == []
