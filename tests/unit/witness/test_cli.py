"""``consentry witness keygen|serve``: the key file, the printed vkey, and what serve refuses
before it listens."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from middleware.cli import main
from middleware.ledger.cosignature import parse_witness_vkey
from middleware.ledger.signing import Cosigner, SigningKey
from middleware.witness.cli import parse_logs

LOG = SigningKey.from_seed("consentry.example/ledger", bytes(range(32)))


def test_keygen_writes_an_owner_only_key_and_prints_its_vkey(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "w.key"
    assert main(["witness", "keygen", "witness.example/w1", "--key", str(key)]) == 0
    vkey = parse_witness_vkey(capsys.readouterr().out.strip())
    assert Cosigner.from_skey(key.read_text()).witness_key == vkey
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert main(["witness", "keygen", "witness.example/w1", "--key", str(key)]) == 2  # no overwrite


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "does not exist"),
        (["--log", "nonsense"], "ORIGIN=VKEY"),
        (["--log", f"{LOG.name}=not-a-vkey"], "verifier key"),
    ],
    ids=["missing-state", "bad-pair", "bad-vkey"],
)
def test_serve_refuses_to_start_without_what_it_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    key = tmp_path / "w.key"
    key.write_text(Cosigner.generate("witness.example/w1").skey())
    logs = extra if extra else ["--log", f"{LOG.name}={LOG.vkey()}"]
    argv = ["witness", "serve", "--key", str(key), "--state", str(tmp_path / "s.db"), *logs]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s.db").exists()


def test_parse_logs_groups_keys_by_origin() -> None:
    other = SigningKey.from_seed(LOG.name, bytes([3]) * 32)
    logs = parse_logs([f"{LOG.name}={LOG.vkey()}", f"{LOG.name}={other.vkey()}"])
    assert [v.key_id for v in logs[LOG.name].verifiers] == [LOG.key_id, other.key_id]
