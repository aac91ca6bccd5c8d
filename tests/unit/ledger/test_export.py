"""The export directory: what it holds (and does not: PHI), reading it back, and damage to its
files reported as findings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from middleware.ledger.export import EXPORT_FORMAT, ExportError, read_export, write_export
from middleware.ledger.verify import verify_snapshot
from tests.unit.ledger.logs import POLICY, base, snapshot

LOG = base()


def _export(tmp_path: Path, **options: bool) -> Path:
    out = tmp_path / "export"
    write_export(snapshot(LOG), out, **options)
    return out


def test_export_round_trips_and_verifies_with_its_proofs(tmp_path: Path) -> None:
    out = _export(tmp_path)
    exported = read_export(out)
    assert exported.problems == ()
    assert exported.snapshot.leaves == LOG.leaves
    assert len(exported.proofs) == 4  # between the five checkpoints, sizes 0, 4, 8, 12, 16
    report = verify_snapshot(
        exported.snapshot, POLICY, proofs=exported.proofs, problems=exported.problems
    )
    assert report.ok, report.findings
    assert report.proofs_checked == 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == EXPORT_FORMAT
    assert (manifest["size"], manifest["latest_checkpoint"]) == (16, 16)
    assert (out / "latest.note").read_text().startswith("consentry.example/ledger\n16\n")


def test_default_export_holds_no_evidence(tmp_path: Path) -> None:
    """Evidence may be PHI: only ``--with-evidence`` writes it."""
    out = _export(tmp_path)
    assert not (out / "evidence.jsonl").exists()
    for path in out.iterdir():
        assert b"evidence " not in path.read_bytes(), path.name
    assert (out / "key-events.jsonl").read_text() == ""  # no key events in this log
    full = _export(tmp_path / "full", with_evidence=True)
    assert len(read_export(full).snapshot.evidence) == 16


def test_export_without_proofs(tmp_path: Path) -> None:
    exported = read_export(_export(tmp_path, proofs=False))
    assert exported.proofs == ()
    assert exported.problems == ()


def test_export_refuses_a_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        write_export(snapshot(base()), tmp_path / "x")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "checkpoints.jsonl").write_text("{not json\n"), "not a JSON object"),
        (lambda d: (d / "proofs.jsonl").unlink(), "missing"),
        (lambda d: (d / "leaves.bin").write_bytes((d / "leaves.bin").read_bytes()[:-1]), "whole"),
        (lambda d: (d / "key-events.jsonl").write_text('{"index": "x"}\n'), "malformed"),
    ],
    ids=["bad-json-line", "listed-file-missing", "leaves-cut", "bad-evidence-row"],
)
def test_damaged_files_are_findings(tmp_path: Path, damage: object, message: str) -> None:
    out = _export(tmp_path)
    damage(out)  # type: ignore[operator]
    exported = read_export(out)
    assert any(message in p.message for p in exported.problems), exported.problems
    report = verify_snapshot(exported.snapshot, POLICY, problems=exported.problems)
    assert not report.ok


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / "manifest.json").unlink(),
        lambda d: (d / "manifest.json").write_text('{"format": "other"}'),
        lambda d: (d / "leaves.bin").unlink(),
    ],
    ids=["no-manifest", "other-format", "no-leaves"],
)
def test_not_an_export(tmp_path: Path, damage: object) -> None:
    out = _export(tmp_path)
    damage(out)  # type: ignore[operator]
    with pytest.raises(ExportError):
        read_export(out)
